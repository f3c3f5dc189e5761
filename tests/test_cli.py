import argparse

import pytest

from plumbing.cli import check_fraction, fraction_type, parse_with_config, run_command
from plumbing.errors import ImageReadError, UsageError


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fraction", type=fraction_type(), default=1.0)
    parser.add_argument("--folds", type=int, nargs="+", default=[1])
    parser.add_argument("--resume", action="store_true")
    return parser


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("optimizer: rmsprop\n", "--optimizer: must be one of sgd, adam. Received: 'rmsprop'"),
        ("batch_size: 1.5\n", "--batch-size"),
        ("fraction: 1.5\n", "must be in (0, 1]"),
        ("folds: [1, x]\n", "--folds"),
        ("resume: yes please\n", "--resume: must be true or false"),
        ("colour: red\n", "unknown options colour"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_yaml_values_pass_the_flags_checks(tmp_path, yaml_text, message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(UsageError) as error:
        parse_with_config(_parser(), ["--config", str(config)])
    assert str(error.value).startswith(f"{config}: ") and message in str(error.value)


def test_yaml_sets_defaults_that_flags_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optimizer: adam\nbatch-size: 16\nfolds: [2, 3]\nfraction: 0.25\nresume: true\n")
    args = parse_with_config(_parser(), ["--config", str(config), "--batch-size", "8"])
    assert (args.optimizer, args.batch_size, args.folds, args.fraction, args.resume) == ("adam", 8, [2, 3], 0.25, True)


def test_fraction_checks():
    assert check_fraction("--x", "0.5") == 0.5 and check_fraction("--x", 0, allow_zero=True) == 0
    for bad in (0, 1.2, -0.1, "abc"):
        with pytest.raises(UsageError, match="--x"):
            check_fraction("--x", bad)


def test_run_command_ends_input_errors_with_one_line_and_their_exit_code(capsys):
    def fail(error):
        def run(_):
            raise error

        return run

    for error, code in ((ImageReadError("scan.mhd", "is truncated"), 1), (UsageError("--folds", "takes 1 to 5"), 2)):
        with pytest.raises(SystemExit) as exit_info:
            run_command(lambda argv: None, fail(error), [])
        assert exit_info.value.code == code
        assert capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda argv: "args", fail(KeyboardInterrupt()), [], interrupted=lambda args: f"resume {args}")
    assert exit_info.value.code == 130 and "interrupted: resume args" in capsys.readouterr().err
    assert run_command(lambda argv: 3, lambda n: n * 2, []) == 6


def test_the_study_and_task_commands_parse_without_importing_tensorflow():
    """`--help` and a bad flag answer before TensorFlow starts (seconds saved each time): their modules, and the
    parsers they build, import neither TensorFlow nor Keras."""
    import subprocess
    import sys

    code = (
        "import sys; import study.command, luna16.experiment, mura.experiment, genesis2d.command, genesis2d.options; "
        "study.command.build_parser(); luna16.experiment.parser(); mura.experiment.parser(); "
        "genesis2d.options.build_parser(); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
