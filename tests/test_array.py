"""The thesis's experiment as a Slurm job array (#41): 8 tasks of `python -m study` started at the same moment on a
fresh --out, every shared step (manifest, shards, pretraining, patches) done by one task while the others wait, and
the merged report equal to a single process's; then the same with tasks killed at random moments and the array run
once more."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_experiment import TINY

ROOT = Path(__file__).resolve().parents[1]
TASKS = 8
# Four cells (LUNA16 and MURA, scratch and genesis, on resnet50) and the report: half the tasks hold a cell, and the
# genesis cells of two tasks need the same pretraining, the LUNA16 cells of two the same patches.
CELLS = ["--cells", "luna16/resnet50/*", "mura/resnet50/*", "report"]
ARGS = ["--measure-steps", "0", "--folds", "1", "--repeats", "1", "--inits", "scratch", "genesis", *CELLS]
SHARED = {  # What each shared step prints when it does the work (kept, it prints none of these).
    "manifest": "manifest.csv, manifest_beside_thesis.csv",
    "shards": "train shards:",
    "pretrain/resnet50": "(best validation loss",
    "luna16/patches": "subset0: ",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    from study.demo_data import write_all

    base = tmp_path_factory.mktemp("array")
    write_all(base / "data")
    roots = {
        "corpus": str(base / "data" / "pretrain"),
        "datasets": str(base / "data" / "pretrain" / "datasets.yaml"),
        "luna16": str(base / "data" / "LUNA16"),
        "mura": str(base / "data" / "MURA-v1.1"),
    }
    path = base / "tiny.yaml"
    path.write_text(yaml.safe_dump({"roots": roots, **TINY}))
    return path


def _env(task=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY_")}
    env["PYTHONUNBUFFERED"] = "1"  # A killed task's log keeps what it said.
    # One thread per TensorFlow pool in every process, the single one included: on a crowded CPU, TensorFlow's
    # concurrently scheduled ops gave weights that differ in the 6th digit from run to run even with op determinism
    # on, which is no fault of the array; with one thread each, runs were bit-identical loaded and unloaded.
    env.update(TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
    if task is not None:  # As Slurm sets them for `sbatch --array=0-7`.
        env.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT=str(TASKS))
    return env


def _start(settings, out, task, log):
    command = [sys.executable, "-m", "study", "--settings", str(settings), "--out", str(out), *ARGS]
    return subprocess.Popen(command, cwd=ROOT, env=_env(task), stdout=log, stderr=subprocess.STDOUT)


def _array(settings, out, logs, kills=()):
    """Starts the 8 tasks together; `kills`: (task, seconds, signal). Returns each task's exit code and output."""
    logs.mkdir(parents=True, exist_ok=True)
    files = [open(logs / f"task{task}.log", "w") for task in range(TASKS)]
    tasks = [_start(settings, out, task, files[task]) for task in range(TASKS)]
    started = time.monotonic()
    for task, seconds, sig in sorted(kills, key=lambda kill: kill[1]):
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        tasks[task].send_signal(sig)
    codes = [task.wait(timeout=1500) for task in tasks]
    for file in files:
        file.close()
    return codes, [(logs / f"task{task}.log").read_text() for task in range(TASKS)]


@pytest.fixture(scope="module")
def reference(settings, tmp_path_factory):
    """The same study in one process."""
    out = tmp_path_factory.mktemp("single") / "experiment"
    run = subprocess.run(
        [sys.executable, "-m", "study", "--settings", str(settings), "--out", str(out), *ARGS],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def _results(out):
    """The merged report's table and text, the text with --out's path taken out."""
    report = (out / "report" / "report.md").read_text().replace(str(out), "OUT")
    return (out / "report" / "results.csv").read_bytes(), report


@pytest.mark.slow
def test_eight_array_tasks_started_together_share_each_step_and_merge_to_the_single_processs_report(
    settings, reference, tmp_path
):
    out = tmp_path / "experiment"
    codes, logs = _array(settings, out, tmp_path / "logs")
    assert codes == [0] * TASKS, [log[-2000:] for log, code in zip(logs, codes) if code]
    for step, said in SHARED.items():
        assert sum(said in log for log in logs) == 1, step  # Done once, by one task.
    assert any("waiting for " in log for log in logs)  # The others waited for it.
    assert _results(out) == _results(reference)
    assert _results(out)[1].count("| luna16/resnet50/") == 2  # Both cells' CPM.


@pytest.mark.slow
def test_an_array_with_tasks_killed_at_random_moments_ends_equal_after_one_rerun(settings, reference, tmp_path):
    rng = random.Random(41)
    out = tmp_path / "experiment"
    # Two tasks holding cells (0-3) and one holding none, killed by SIGKILL or SIGTERM between 5 s and 150 s: in
    # the plan, a shared step (held or waited for), or a cell.
    victims = rng.sample(range(4), 2) + [rng.randrange(4, TASKS)]
    kills = [(task, rng.uniform(5, 150), rng.choice([signal.SIGKILL, signal.SIGTERM])) for task in victims]
    codes, logs = _array(settings, out, tmp_path / "first", kills)
    killed = {task for task, _, _ in kills}
    assert all(code == 0 for task, code in enumerate(codes) if task not in killed), [
        log[-2000:] for task, (log, code) in enumerate(zip(logs, codes)) if code and task not in killed
    ]
    for step, said in SHARED.items():
        assert sum(said in log for log in logs) <= 1 + len(killed), step
    codes, again = _array(settings, out, tmp_path / "again")  # The array run once more, as after a requeue.
    assert codes == [0] * TASKS, [log[-2000:] for log, code in zip(again, codes) if code]
    assert _results(out) == _results(reference), (kills, [log[-1500:] for log in logs])
    assert not list(out.rglob(".lock")) and not list((out / "steps").glob(".*.lock"))  # No lock left behind.
