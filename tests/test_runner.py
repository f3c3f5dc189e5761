"""The one downstream runner: a third task in a few dozen lines, reuse decided by the options' fields, one writer."""

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from conftest import LEARNING_SEED
from sklearn.metrics import roc_auc_score
from squares_task import SCHEDULE, SIZE, Squares, SquaresOptions

from plumbing.errors import UsageError
from transfer.options import build_parser, option, reuse_settings
from transfer.runner import Task, run_task


def _options(tmp_path, **values):
    from transfer.options import resolve

    options = SquaresOptions(
        init="scratch",
        backbone="resnet18",
        out=str(tmp_path / "squares"),
        verbose=0,
        gallery=1,
        steps_per_epoch=8,
        lr=0.01,
        bn_momentum=0.5,
        image_size=SIZE,
        **values,
    )
    return resolve(options, {("resnet18", "scratch"): SCHEDULE})


@pytest.mark.slow
@pytest.mark.learning
def test_a_third_task_runs_through_the_runner_and_appears_in_the_report(tmp_path, record_learning):
    from study.report import build_report
    from transfer.results import read_results

    options = _options(tmp_path, seed=LEARNING_SEED)
    metrics = run_task(Squares(options), options)
    contract = read_results(options.out)
    scores = contract.scores
    assert metrics["task"] == "squares" and metrics["selection"].startswith("best validation AUC")
    table = pd.read_csv(tmp_path / "squares" / "predictions.csv")
    np.testing.assert_allclose(scores["probability"], table["probability"])
    record_learning("test AUC", roc_auc_score(table["label"], table["probability"]), 0.9, "min")
    # A bright square is easy: it learned. Measured 1.000 for seeds 0 and 1 (tools/learning_margins.py).
    assert roc_auc_score(table["label"], table["probability"]) > 0.9
    assert (tmp_path / "squares" / "saliency.png").is_file() and (tmp_path / "squares" / "roc.png").is_file()
    record = json.loads((tmp_path / "squares" / "unit.json").read_text())
    assert record["settings"]["slides"] == 12 and record["epochs_trained"] == 2
    methods = [name for name, value in vars(Squares).items() if callable(value)]
    assert len(methods) <= 4, methods  # A new task is its data, its split and its result.
    build_report([tmp_path / "squares"], tmp_path / "report", iterations=50, seed=0)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "squares" in report and f"{roc_auc_score(table['label'], table['probability']):.3f}" in report


@pytest.mark.slow
def test_reuse_follows_every_option_and_the_data_content(tmp_path):
    """A kept result is reused under the same options and data; an option added to the dataclass counts at once."""

    @dataclass(frozen=True)
    class WithNewKnob(SquaresOptions):
        new_knob: float = option(1.0, "an option added later.", type=float)

    assert "new_knob" in reuse_settings(WithNewKnob()) and "out" not in reuse_settings(WithNewKnob())
    options = dataclasses.replace(_options(tmp_path, probe=True), gallery=0)
    first = WithNewKnob(**dataclasses.asdict(options))
    run_task(Squares(first), first)
    stamp = (tmp_path / "squares" / "predictions.csv").stat().st_mtime_ns
    recorded = (tmp_path / "squares" / "unit.json").stat().st_mtime_ns
    moved = dataclasses.replace(first, out=str(tmp_path / "squares"), verbose=2)  # Not learning settings: kept.
    run_task(Squares(moved), moved)
    assert (tmp_path / "squares" / "predictions.csv").stat().st_mtime_ns == stamp
    changed = dataclasses.replace(first, new_knob=2.0)
    with pytest.raises(UsageError, match=r"new_knob 1\.0 -> 2\.0.*--overwrite"):
        run_task(Squares(changed), changed)
    with pytest.raises(UsageError, match=r"data squares 0 -> 1"):
        other_data = dataclasses.replace(first, content=1)
        run_task(Squares(other_data), other_data)
    run_task(Squares(changed), dataclasses.replace(changed, overwrite=True))
    # Trained again: the unit's record names the new setting. The knob changes nothing the model does, so the
    # predictions come out the same bytes, and a file that already holds them is left untouched.
    assert (tmp_path / "squares" / "unit.json").stat().st_mtime_ns != recorded
    assert (tmp_path / "squares" / "predictions.csv").stat().st_mtime_ns == stamp
    record = json.loads((tmp_path / "squares" / "unit.json").read_text())
    assert record["settings"]["new_knob"] == 2.0


def test_the_parser_is_built_from_the_fields_with_their_defaults_and_sources():
    from luna16.experiment import Luna16Options, parser
    from mura.experiment import MuraOptions
    from mura.experiment import parser as mura_parser

    for options_class, built in ((Luna16Options, parser()), (MuraOptions, mura_parser())):
        parsed = vars(built.parse_args([]))
        for item in dataclasses.fields(options_class):
            if item.metadata.get("derived"):
                continue
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            assert parsed[item.name] == default, item.name
        text = " ".join(built.format_help().split())
        assert "Default: 0.5 (thesis 4.2.1.6)" in text and "Default: 256 (this project's choice" in text
    luna16_help = " ".join(parser().format_help().split())
    assert "Default: 0.1 (thesis 4.2.1.3)" in luna16_help and "momentum 0.9; 4.2.3" in luna16_help


def test_no_library_function_takes_an_argparse_namespace():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("plumbing", "preprocessing", "genesis2d", "transfer", "luna16", "mura", "study"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and any(a.arg == "args" for a in node.args.args):
                    offenders.append(f"{path.relative_to(root)}:{node.name}")
    # Only a command's own entry points (`run`, `main`) and the one converter from a namespace to a typed
    # configuration (`from_args`) see the namespace.
    assert [name for name in offenders if not name.endswith((":run", ":main", ":from_args"))] == []


def test_one_writer_per_output_folder(tmp_path, capsys):
    from plumbing.lock import output_lock

    with output_lock(tmp_path):
        with pytest.raises(UsageError, match=f"is in use by process {os.getpid()}"):
            with output_lock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with output_lock(tmp_path):  # The process that left it is gone: taken over, with a line.
        pass
    assert "no longer runs; taking it over" in capsys.readouterr().out


def test_a_tie_of_the_validation_auc_keeps_the_later_epoch_with_the_lower_loss():
    import keras

    from transfer.finetune import KeepBest

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    keep = KeepBest()
    keep.set_model(model)
    for epoch, (auc, loss) in enumerate([(1.0, 0.7), (1.0, 0.3), (1.0, 0.5), (0.9, 0.1)]):
        model.layers[0].bias.assign([float(epoch)])
        keep.on_epoch_end(epoch, {"val_auc": auc, "val_loss": loss})
    keep.restore(model)
    assert keep.epoch == 1 and float(model.layers[0].bias.numpy()[0]) == 1.0


def test_help_lists_every_option():
    from luna16.experiment import Luna16Options, parser

    text = parser().format_help()
    flags = [
        f"--{item.name.replace('_', '-')}"
        for item in dataclasses.fields(Luna16Options)
        if not item.metadata.get("derived")
    ]
    assert [flag for flag in flags if flag not in text] == []
    assert build_parser is not None


def test_a_kept_units_text_columns_read_back_as_text(tmp_path):
    """Identifiers such as "001" stay text when a finished unit is read back (pandas 2 and 3 name text differently)."""
    from plumbing.atomic import write_csv
    from transfer.results import score_rows
    from transfer.runner import UNIT_SCORES, Unit, _is_text, _load_result

    table = pd.DataFrame({"seriesuid": ["001", "002"], "label": [0, 1], "probability": [0.25, 0.75]})
    record = {"text_columns": [column for column, dtype in table.dtypes.items() if _is_text(dtype)]}
    assert record["text_columns"] == ["seriesuid"]
    write_csv(tmp_path / "predictions.csv", table)
    write_csv(
        tmp_path / UNIT_SCORES,
        score_rows("image", table["seriesuid"], table["label"], table["probability"], table["seriesuid"]),
    )
    result = _load_result(Task.__new__(Task), Unit(1, tmp_path), record)
    assert result.table["seriesuid"].tolist() == ["001", "002"] and result.scores["group"].tolist() == ["001", "002"]
    pd.testing.assert_series_equal(result.table["probability"], table["probability"])


def test_yaml_booleans_of_the_runtime_options_are_booleans(tmp_path):
    from genesis2d.options import PretrainConfig, build_parser
    from plumbing.options import parse_options

    config = tmp_path / "config.yaml"
    for text, expected in (("false", False), ("true", True)):
        config.write_text(f"deterministic: {text}\n")
        options = parse_options(PretrainConfig, build_parser(), ["--config", str(config), "--manifest", "m.csv"])
        assert options.deterministic is expected  # Not [False], which reads as true.
