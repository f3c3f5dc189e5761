"""Inputs that used to be accepted, each now one line: probabilities outside [0, 1], negative counts, empty patches."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from test_faults import _exit_line, _froc_files

from transfer.results import ResultsError, read_results


@pytest.mark.parametrize("probability", [5, -3, 1e9])
def test_froc_predictions_must_be_probabilities(tmp_path, capsys, probability):
    from luna16.froc import main

    argv = _froc_files(tmp_path, "a,1,0,0,10\n")
    predictions = pd.read_csv(argv[0])
    predictions.loc[1, "probability"] = probability
    predictions.to_csv(argv[0], index=False)
    code, line = _exit_line(main, argv, capsys)
    assert code == 1 and line == (
        f"error: {argv[0]}: has 1 rows whose probability lies outside [0, 1] (first: line 3, {probability:g}); "
        "give probabilities, not scores or logits."
    )


@pytest.mark.parametrize("probability", [5, -3, 1e9])
def test_report_inputs_must_hold_probabilities(tmp_path, probability):
    from transfer.results import SCORE_COLUMNS, write_results

    levels = [{"name": "case", "description": "cases", "group": "patient", "metrics": ["auc"]}]
    scores = pd.DataFrame(
        [("case", f"c{i}", i % 2, 0.2 + 0.1 * i, f"p{i}", 1, 1) for i in range(6)], columns=SCORE_COLUMNS
    )
    metrics = {"task": "t", "backbone": "vgg16", "init": "scratch", "train_fraction": 1.0, "levels": levels}
    write_results(tmp_path, scores, metrics)
    assert len(read_results(tmp_path).scores) == 6
    scores.loc[4, "probability"] = probability
    scores.to_csv(tmp_path / "test_scores.csv", index=False)
    with pytest.raises(
        ResultsError, match=re.escape(f"test_scores.csv: line 6: probability {probability:g} lies outside [0, 1]")
    ):
        read_results(tmp_path)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--bootstrap", "-5", "argument --bootstrap: must be at least 1. Received: -5"),
        ("--bootstrap", "0", "argument --bootstrap: must be at least 1. Received: 0"),
        ("--max-candidates", "-1", "argument --max-candidates: must be at least 0. Received: -1"),
        ("--max-candidates", "many", "argument --max-candidates: must be a whole number. Received: 'many'"),
    ],
)
def test_negative_counts_are_one_usage_line(tmp_path, capsys, flag, value, message):
    from luna16.froc import main

    argv = _froc_files(tmp_path, "a,1,0,0,10\n")
    code, line = _exit_line(main, [*argv, flag, value], capsys)
    assert code == 2 and line == f"error: {message} (see python -m luna16.froc --help)"


def test_the_studys_bootstrap_must_be_positive(capsys):
    from study.command import main

    code, line = _exit_line(main, ["--bootstrap", "-5"], capsys)
    assert (
        code == 2
        and line == "error: argument --bootstrap: must be at least 1. Received: -5 (see python -m study --help)"
    )


def test_a_scan_that_gives_no_patches_is_named(demo_dir, tmp_path, capsys):
    import SimpleITK as sitk

    from luna16.data import extract_subsets

    data = tmp_path / "LUNA16"
    shutil.copytree(demo_dir / "LUNA16", data)
    scan = sorted((data / "subset0").glob("*.mhd"))[0]
    spacing, origin = sitk.ReadImage(str(scan)).GetSpacing(), sitk.ReadImage(str(scan)).GetOrigin()
    for part in scan.parent.glob(f"{scan.stem}.*"):
        part.unlink()
    tiny = sitk.GetImageFromArray(np.zeros((1, 1, 1), np.int16))  # 1x1x1: every candidate lies outside.
    tiny.SetSpacing(spacing)
    tiny.SetOrigin(origin)
    sitk.WriteImage(tiny, str(scan))
    extract_subsets(data, tmp_path / "patches", size=16, positive_copies=2, progress=False)
    err = capsys.readouterr().err
    assert (
        f"warning: {scan}: none of its" in err
        and "candidates lies inside the scan or has coordinates; it gives no patches." in err
    )


BODY_PARTS_LINE = "must be one of XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, XR_SHOULDER, XR_WRIST or all"


@pytest.mark.parametrize(
    "command, options, field, value, problem",
    [
        ("genesis2d.pretrain", "genesis2d.options.PretrainConfig", "samples", 0, "must be at least 1. Received: 0"),
        (
            "genesis2d.pretrain",
            "genesis2d.options.PretrainConfig",
            "backbone",
            "resnet101",
            "must be one of resnet18, resnet34, resnet50, resnet50_keras, vgg16, vgg19. Received: 'resnet101'",
        ),
        (
            "mura.experiment",
            "mura.experiment.MuraOptions",
            "body_part",
            "XR_KNEE",
            f"{BODY_PARTS_LINE}. Received: 'XR_KNEE'",
        ),
        ("luna16.experiment", "luna16.experiment.Luna16Options", "dropout", 1.5, "must be in [0, 1]. Received: 1.5"),
    ],
)
def test_a_bad_value_is_the_same_line_at_every_door(tmp_path, capsys, command, options, field, value, problem):
    """The flag, a --config file, the study's --settings section, a library call and `dataclasses.replace` of good
    options: one line, the option and its problem, before any work (a bad --samples used to crash after the first
    epoch; a bad body part in --settings ended the study in a traceback)."""
    import dataclasses
    import importlib

    import yaml

    from plumbing.errors import UsageError

    module, name = options.rsplit(".", 1)
    options_class = getattr(importlib.import_module(module), name)
    main = importlib.import_module(command).main
    flag = f"--{field.replace('_', '-')}"
    with pytest.raises(UsageError) as error:  # A library call ...
        options_class(**{field: value})
    assert str(error.value) == f"{flag}: {problem}."
    with pytest.raises(UsageError) as error:  # ... and good options changed.
        dataclasses.replace(options_class(), **{field: value})
    assert str(error.value) == f"{flag}: {problem}."
    code, line = _exit_line(main, [flag, str(value)], capsys)  # The flag.
    assert code == 2 and line.startswith(f"error: argument {flag}: {problem} (see "), line
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({field: value}))
    code, line = _exit_line(main, ["--config", str(config)], capsys)  # A --config file.
    assert code == 2 and line == f"error: {config}: {flag}: {problem}.", line


def test_the_studys_settings_meet_the_same_line(tmp_path, capsys):
    from study.command import main

    settings = tmp_path / "settings.yaml"
    settings.write_text("roots: {mura: nowhere}\nmura: {body_part: [XR_KNEE]}\n")
    code, line = _exit_line(main, ["--settings", str(settings), "--out", str(tmp_path / "out")], capsys)
    assert (
        code == 2 and line == f"error: {settings}: section mura: --body-part: {BODY_PARTS_LINE}. Received: 'XR_KNEE'."
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "environment, line",
    [
        ({"SLURM_ARRAY_TASK_ID": "abc"}, "SLURM_ARRAY_TASK_ID: must be a whole number. Received: 'abc'."),
        ({"SLURM_ARRAY_TASK_ID": ""}, "SLURM_ARRAY_TASK_ID: must be a whole number. Received: ''."),
        (
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "0"},
            "SLURM_ARRAY_TASK_STEP: must be at least 1. Received: 0.",
        ),
        (
            {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "x"},
            "SLURM_ARRAY_TASK_COUNT: must be a whole number. Received: 'x'.",
        ),
    ],
)
def test_a_bad_slurm_array_variable_is_one_line(monkeypatch, environment, line):
    from plumbing.errors import UsageError
    from study.experiment import slurm_array

    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as error:
        slurm_array()
    assert str(error.value) == line


@pytest.mark.parametrize(
    "init, backbone, flag",
    [("imagenet", "resnet50", "--imagenet-weights"), ("radimagenet", "resnet50_keras", "--radimagenet-weights")],
)
def test_missing_start_weights_stop_before_the_patches_are_extracted(demo_dir, tmp_path, capsys, init, backbone, flag):
    """The design card's `python luna16/cross_validate.py --init imagenet` without the weights used to extract every
    subset's patches (about 0.3 CPU-hours on the real LUNA16) before it looked for them."""
    from luna16.experiment import main

    missing = tmp_path / "weights.h5"
    patches = tmp_path / "patches"
    argv = ["--data", str(demo_dir / "LUNA16"), "--init", init, "--backbone", backbone, flag, str(missing)]
    code, line = _exit_line(main, [*argv, "--patches", str(patches), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and line.startswith(f"error: {missing}: "), line
    assert not patches.exists()


def test_the_froc_figure_check_lives_in_its_options(tmp_path, capsys):
    """`--out` must name a figure: the flag and a library call meet the same line, from `FrocOptions`."""
    from luna16.froc import FrocOptions, main
    from plumbing.errors import UsageError

    argv = _froc_files(tmp_path, "a,1,0,0,10\n")
    code, line = _exit_line(main, [*argv, "--out", str(tmp_path / "froc.txt")], capsys)
    with pytest.raises(UsageError) as error:
        FrocOptions(predictions=argv[0], annotations=argv[2], out=str(tmp_path / "froc.txt"))
    assert code == 2 and line == f"error: {error.value}", line
    assert "--out: names the figure, which must end in .png, .pdf, .svg" in line


def test_every_command_parser_is_made_from_its_options_type():
    """No command hand-builds its parser: each is `plumbing.options.build_parser` over its options dataclass, so its
    flags, a settings or config file and a library call share one check (the study's pre-parser of its folders, which
    only decides which settings file to read, aside)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for package in ("preprocessing", "genesis2d", "transfer", "luna16", "mura", "study"):
        for path in sorted((root / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "ArgumentParser(" in line and "add_help=False" not in line:
                    found.append(f"{path.relative_to(root)}:{number}")
    assert not found, found
