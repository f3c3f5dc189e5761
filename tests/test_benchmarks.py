"""The benchmarks run (tiny sizes, on CPU), so they cannot rot; their figures belong to bigger machines."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.mark.slow
def test_worker_processes_give_the_batches_of_their_seeds(tmp_path):
    from benchmarks.feed import BatchRecipe, SliceStore, make_batch, pair_batches

    rng = np.random.default_rng(0)
    slices = [rng.random((40, 48), dtype=np.float32), rng.random((64, 64), dtype=np.float32)]
    store = SliceStore(SliceStore.write(tmp_path / "store", slices))
    assert len(store) == 2 and all(np.array_equal(store[i], s) for i, s in enumerate(slices))
    recipe = BatchRecipe(str(tmp_path / "store"), batch_size=3, crop_size=32, image_size=32, seed=5)
    stream = pair_batches(recipe, workers=2)
    made = [next(stream) for _ in range(5)]
    stream.close()
    for i, (inputs, targets) in enumerate(made):  # Whichever worker made batch i, it is batch i.
        expected_inputs, expected_targets = make_batch(recipe, i)
        assert inputs.shape == (3, 32, 32, 1) and inputs.dtype == np.float32
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(targets, expected_targets)
    assert not np.array_equal(made[0][0], made[1][0])


@pytest.mark.slow
def test_training_benchmark_prints_its_three_tables(tmp_path):
    from benchmarks.feed import SliceStore

    demo = SliceStore.write(tmp_path / "demo", np.random.default_rng(1).random((6, 80, 80), dtype=np.float32))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "training.py"),
            "--size",
            "tiny",
            "--demo-slices",
            str(demo),
            "--cores",
            "1",
            "2",
            "16",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,  # About 90 s on 2 cores: a hung worker pool fails the test instead of the suite.
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Part 1."))
    assert "at 32x32, Keras backend tensorflow, CPU" in lines[start]
    rows = [line.split() for line in lines[start + 2 : start + 4]]
    assert [row[:4] for row in rows] == [["resnet18", "float32", "False", "4"], ["resnet18", "float32", "True", "4"]]
    for *_, memory, workers, ratio, peak in rows:
        assert float(memory) > 0 and float(workers) > 0 and peak == "-"
        memory, workers = float(memory), float(workers)
        rounding = 0.005 + 0.05 * (1 / memory + workers / memory**2)  # img/s are printed to 0.1, the ratio to 0.01.
        assert abs(float(ratio) - workers / memory) <= rounding

    feed = lines[next(i for i, line in enumerate(lines) if line.startswith("Part 2.")) + 2 :][:3]
    one, two, sixteen = (line.split() for line in feed)
    assert one[0] == "1" and float(one[1]) > 0 and float(one[2]) == 1.0
    assert abs(float(two[2]) - 2 * float(two[1]) / (2 * float(one[1]))) < 0.01  # Speed-up: pairs/s over one core's.
    assert sixteen[:3] == ["16", "-", "-"]  # This machine has fewer cores.

    part3 = next(i for i, line in enumerate(lines) if line.startswith("Part 3."))
    assert "4 pretraining steps" in lines[part3] and "(6 training slices)" in lines[part3]
    losses = [float(line.split()[1]) for line in lines[part3 + 2 : part3 + 4]]
    assert [line.split()[0] for line in lines[part3 + 2 : part3 + 4]] == ["1-2", "3-4"]
    assert np.isfinite(losses).all() and all(0 < loss < 1 for loss in losses)  # An MSE of [0, 1] images.


@pytest.mark.slow
def test_scale_rehearsal_runs_tiny():
    """A smoke run of benchmarks/scale.py at 0.3% of the real counts (the real run takes minutes)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--scale", "0.003", "--extract-scans", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    steps = {line.split()[0]: line for line in lines if line[:2] in ("1.", "2.", "3.", "4.", "5.", "6.", "  ")}
    # Every LUNA16 subset keeps at least one scan; counts are rounded shares of 754,975 and of the corpus's 457,004.
    assert "10 scans" in steps["1."] and f"{round(754_975 * 0.003):,} candidates" in steps["1."]
    assert f"{sum(round(n * 0.003) for n in (155_105, 167_179, 134_720)):,} rows" in steps["6."]
    streamed = next(line for line in lines if line.startswith("5.")).split("views")[0].split()[-1]
    whole = next(line for line in lines if "as one array" in line).split("test ")[-1].split()[0]
    assert streamed == whole  # The streamed prediction covers every view of the test fold.
    assert all(" ok " in line for line in lines if line[:2] in ("1.", "2.", "3.", "4.", "5.", "6."))


@pytest.mark.slow
def test_pretraining_defaults_benchmark_prints_its_table(tmp_path):
    """The real pretraining command at tiny sizes: one row per interval, ratios that follow from the printed losses."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "pretrain_defaults.py"),
            "--size",
            "tiny",
            "--json",
            str(tmp_path / "found.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    title = next(line for line in lines if line.startswith("resnet18 U-Net, 32x32, batch 4"))
    identity, constant = (float(title.split(f"{name} ")[1].split(",")[0]) for name in ("identity", "constant"))
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [int(row[0]) for row in rows] == [2, 4]
    for row in rows:
        val, by_identity, by_constant = float(row[3]), float(row[4]), float(row[5])
        assert abs(by_identity - val / identity) < 2e-3 and abs(by_constant - val / constant) < 2e-3
    import json

    found = json.loads((tmp_path / "found.json").read_text())["resnet18"]
    assert found["config"]["lr"] == 1.0 and found["config"]["warmup_steps"] == 32 and len(found["intervals"]) == 2


@pytest.mark.slow
def test_the_rehearsal_measures_each_model_at_its_size_and_batch_in_its_own_process(tmp_path):
    """Part 1 of benchmarks/thesis_rehearsal.py at 32 px: the sizes and batches it prints are the thesis's
    schedule tables' (part 2, the experiment itself, is what tests/test_experiment.py runs)."""
    import json

    from transfer.schedules import schedule_row

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "thesis_rehearsal.py"), "--size", "tiny", "--steps", "1"]
        + ["--skip-run", "--json", str(tmp_path / "found.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "found.json").read_text())["measured"]
    assert [row["stage"] for row in found] == ["pretraining", "luna16", "mura"]
    from luna16.experiment import THESIS_SCHEDULES as LUNA16
    from mura.experiment import THESIS_SCHEDULES as MURA

    expected = [4, schedule_row(LUNA16, "resnet50", "scratch")[0].batch_size]
    expected += [schedule_row(MURA, "resnet50", "scratch")[0].batch_size]
    assert [row["batch_size"] for row in found] == expected == [4, 32, 16]  # Thesis 4.2.3 and Fig. 4.33.
    for row in found:
        assert row["train_seconds"] > 0 and row["predict_seconds"] > 0 and row["peak_rss_gb"] > 0.1
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"| {row['stage']}: "))
        images = float(line.split("|")[6])
        assert abs(images - row["batch_size"] / row["train_seconds"]) < 0.051 + 1e-3 * images


@pytest.mark.slow
def test_a_dead_worker_stops_the_stream_with_an_error_not_a_hang(tmp_path):
    import multiprocessing
    import os
    import signal
    from concurrent.futures.process import BrokenProcessPool

    from benchmarks.feed import BatchRecipe, SliceStore, pair_batches

    SliceStore.write(tmp_path / "store", [np.random.default_rng(0).random((40, 48), dtype=np.float32)])
    stream = pair_batches(BatchRecipe(str(tmp_path / "store"), batch_size=2, crop_size=32, image_size=32), workers=2)
    next(stream)
    for worker in multiprocessing.active_children():  # Killed as the kernel's OOM killer would.
        if worker.name.startswith("SpawnProcess"):
            os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        for _ in range(50):
            next(stream)
    stream.close()
