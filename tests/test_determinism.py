"""The same seed gives the same numbers: runs repeated bit for bit on a CPU, other seeds differ."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PRETRAIN

ROOT = Path(__file__).resolve().parents[1]


def _weights(path):
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


@pytest.mark.slow
def test_pretraining_twice_with_one_seed_gives_identical_weights(demo_manifest, tmp_path):
    """Each run is a fresh process, as a user reruns the command (hash seeds differ between them)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "genesis2d" / "train.py"),
                "--manifest",
                str(demo_manifest),
                "--out",
                str(tmp_path / name),
                *TINY_PRETRAIN,
                "--epochs",
                "1",
                "--steps-per-epoch",
                "3",
                "--seed",
                seed,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        for name, seed in (("a", "0"), ("b", "0"), ("c", "1"))
    }  # Side by side: independent processes.
    for process in runs.values():
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    first, again, other = (_weights(tmp_path / name / "encoder.weights.h5") for name in runs)
    assert first.keys() == again.keys() and len(first) > 10
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert any(not np.array_equal(first[key], other[key]) for key in first)


@pytest.mark.slow
def test_a_luna16_fold_twice_with_one_seed_gives_identical_predictions(demo_dir, tmp_path_factory):
    from test_transfer import CV_TINY

    from luna16.experiment import parse_args, run

    patches = tmp_path_factory.getbasetemp() / "cv_patches"
    predictions = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path_factory.mktemp(f"repeat_{name}")
        run(
            parse_args(
                [
                    "--data",
                    str(demo_dir / "LUNA16"),
                    "--patches",
                    str(patches),
                    "--out",
                    str(out),
                    "--init",
                    "scratch",
                    "--folds",
                    "1",
                    "--seed",
                    seed,
                    *CV_TINY,
                ]
            )
        )
        predictions.append(pd.read_csv(out / "test_scores.csv"))
    pd.testing.assert_frame_equal(predictions[0], predictions[1])
    assert not np.array_equal(predictions[0]["probability"], predictions[2]["probability"])


@pytest.mark.parametrize("task", ["luna16", "mura"])
def test_help_shows_the_thesis_schedules_per_backbone(task):
    result = subprocess.run(
        [sys.executable, str(ROOT / task / ("cross_validate.py" if task == "luna16" else "train.py")), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())
    rows = {
        "luna16": [
            "vgg16 scratch epochs 18 warm-up 0 batch 32 factor 0.01",
            "resnet50 genesis epochs 10 warm-up 0 batch 32 factor 0.1 patience 3",
        ],
        "mura": [
            "resnet50 genesis epochs 9 warm-up 2 batch 16 factor 0.1",
            "vgg16 scratch epochs 15 warm-up 0 batch 16 factor 0.01",
            "vgg16 imagenet epochs 5 warm-up 0 batch 16 factor 0.01",
        ],
    }[task]
    for row in rows:
        assert row in text, row
