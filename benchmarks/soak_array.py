"""A soak of the study as a Slurm job array: many rounds of 8 tasks started together, with random kills and random
write failures, each round's array rerun until every task ends well, its report compared with one process's.

    python benchmarks/soak_array.py                 # 3 rounds at tiny sizes on the demo trees (~5 min a round, 2 cores)
    python benchmarks/soak_array.py --rounds 20     # longer

Each round starts the 8 tasks of `python -m study` (four cells on resnet50 and the report; tests/test_array.py runs
them on resnet18) on a fresh --out at the same moment. Each task is, by chance, left alone, killed (SIGKILL or
SIGTERM, at a moment between 5 s and --kill-window s), or started with a file-size limit (RLIMIT_FSIZE, with SIGXFSZ
ignored, so that a write past it fails with EFBIG as a write to a full disk fails with ENOSPC: a limit between 16
KiB and 64 MiB, so the failure lands in one of the steps' files). Then the array is run again, unharmed, up to
--reruns times until all 8 tasks exit 0. Printed per round: the faults, the reruns needed, whether the merged
`results.csv` and report equal the single process's byte for byte (paths aside), and the lock files left behind;
then the totals. A round whose reruns do not all end well, whose results differ, or that leaves a lock counts as a
failure, and the script exits 1.
"""

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = 8
TINY = {  # The study at 32 px and two steps an epoch: the path, not the learning (tests/test_experiment.py too).
    "manifest": {"fractions": [0.6, 0.2, 0.2]},
    "pretrain": {
        "crop_size": 64,
        "image_size": 32,
        "batch_size": 4,
        "epochs": 1,
        "steps_per_epoch": 2,
        "validation_steps": 1,
        "shuffle_buffer": 16,
        "warmup_steps": 0,
        "lr": 0.1,
        "samples": 1,
    },
    "luna16": {
        "patch_size": 32,
        "positive_copies": 2,
        "epochs": 1,
        "warmup_epochs": 0,
        "steps_per_epoch": 2,
        "batch_size": 8,
        "gallery": 0,
    },
    "mura": {"image_size": 32, "epochs": 1, "warmup_epochs": 0, "steps_per_epoch": 2, "batch_size": 8, "gallery": 0},
}


def study_args(backbone="resnet50"):
    """The study each task runs: four cells (LUNA16 and MURA, scratch and genesis, on `backbone`) and the report."""
    cells = ["--cells", f"luna16/{backbone}/*", f"mura/{backbone}/*", "report"]
    grid = ["--backbone", backbone, "--inits", "scratch", "genesis", "--folds", "1", "--repeats", "1"]
    return [*grid, "--measure-steps", "0", *cells]


def write_settings(base):
    """The demo trees under `base/data` and a settings file naming them, at TINY sizes; returns its path."""
    from study.demo_data import write_all

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


def environment(task=None):
    """This process's environment for a study task: unbuffered, and as Slurm sets it for `--array=0-7`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    # One thread per TensorFlow pool: on a crowded CPU its concurrently scheduled ops vary the weights' last digits
    # from run to run (see tests/test_array.py), which would hide what the soak looks for.
    env.update(TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
    if task is not None:
        env.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT=str(TASKS))
    return env


def _file_limit(limit):
    def apply():  # In the child, before exec: writes past `limit` bytes fail (EFBIG) instead of killing it.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_array(settings, out, logs, kills=(), limits=None, backbone="resnet50"):
    """The 8 tasks started together. `kills`: (task, seconds, signal); `limits`: {task: bytes} of RLIMIT_FSIZE.
    Returns each task's exit code and output."""
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "study", "--settings", str(settings), "--out", str(out), *study_args(backbone)]
    files = [open(logs / f"task{task}.log", "w") for task in range(TASKS)]
    tasks = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment(task),
            stdout=files[task],
            stderr=subprocess.STDOUT,
            preexec_fn=_file_limit(limits[task]) if limits and task in limits else None,
        )
        for task in range(TASKS)
    ]
    started = time.monotonic()
    for task, seconds, sig in sorted(kills, key=lambda kill: kill[1]):
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        if tasks[task].poll() is None:
            tasks[task].send_signal(sig)
    codes = [task.wait(timeout=3600) for task in tasks]
    for file in files:
        file.close()
    return codes, [(logs / f"task{task}.log").read_text() for task in range(TASKS)]


def run_single(settings, out, backbone="resnet50"):
    """The same study in one process: its `subprocess.CompletedProcess`, output captured as text."""
    command = [sys.executable, "-m", "study", "--settings", str(settings), "--out", str(out), *study_args(backbone)]
    return subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=3600)


def results(out):
    """The merged report's table (bytes) and text (--out's path taken out), or None where there is none."""
    table, report = out / "report" / "results.csv", out / "report" / "report.md"
    if not (table.is_file() and report.is_file()):
        return None
    return table.read_bytes(), report.read_text().replace(str(out), "OUT")


def locks_left(out):
    """The lock files under `out`: a folder's `.lock`, a manifest's, and the study's step locks."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*lock") if p.is_file())


def faults(rng, kill_window):
    """For each task: nothing (half the time), a kill, or a file-size limit."""
    kills, limits = [], {}
    for task in range(TASKS):
        draw = rng.random()
        if draw < 0.3:
            kills.append((task, rng.uniform(5, kill_window), rng.choice([signal.SIGKILL, signal.SIGTERM])))
        elif draw < 0.5:
            limits[task] = int(2 ** rng.uniform(14, 26))
    return kills, limits


def soak_round(number, settings, base, reference, rng, args):
    out = base / f"round{number}" / "experiment"
    kills, limits = faults(rng, args.kill_window)
    run_array(settings, out, base / f"round{number}" / "faulted", kills, limits)
    reruns, codes = 0, None
    while reruns < args.reruns and codes != [0] * TASKS:
        reruns += 1
        codes, logs = run_array(settings, out, base / f"round{number}" / f"rerun{reruns}")
    ended = codes == [0] * TASKS
    equal = ended and results(out) == reference
    left = locks_left(out)
    return {"kills": len(kills), "limits": len(limits), "reruns": reruns, "ended": ended, "equal": equal, "left": left}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the array. Default: 3.")
    parser.add_argument("--reruns", type=int, default=2, help="reruns of the array a round may take. Default: 2.")
    parser.add_argument("--kill-window", type=float, default=150.0, help="latest kill, seconds. Default: 150.")
    parser.add_argument("--seed", type=int, default=0, help="the faults' seed. Default: 0.")
    parser.add_argument("--keep", action="store_true", help="keep the rounds' folders (printed) to read their logs.")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="soak_array_"))
    rng = random.Random(args.seed)
    try:
        settings = write_settings(base)
        single = run_single(settings, base / "single" / "experiment")
        reference = results(base / "single" / "experiment")
        if single.returncode or reference is None:
            sys.exit(f"error: the single-process run failed (exit {single.returncode}): {single.stderr[-500:]}")
        print(
            f"{'round':>5} {'kills':>5} {'write limits':>12} {'reruns':>6} {'all ended 0':>11} {'equal':>5}  locks left"
        )
        rows = []
        for number in range(1, args.rounds + 1):
            row = soak_round(number, settings, base, reference, rng, args)
            rows.append(row)
            print(
                f"{number:>5} {row['kills']:>5} {row['limits']:>12} {row['reruns']:>6} {str(row['ended']):>11} "
                f"{str(row['equal']):>5}  {len(row['left'])} {' '.join(row['left'])}",
                flush=True,
            )
        failed = [r for r in rows if not (r["ended"] and r["equal"]) or r["left"]]
        print(
            f"\n{len(rows)} rounds of {TASKS} tasks, {sum(1 + r['reruns'] for r in rows)} array runs: "
            f"{sum(r['kills'] for r in rows)} tasks killed, {sum(r['limits'] for r in rows)} with a write limit; "
            f"{sum(r['equal'] for r in rows)} of {len(rows)} rounds equal to the single process; "
            f"{sum(len(r['left']) for r in rows)} locks left behind; {len(failed)} rounds failed"
        )
    finally:
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
