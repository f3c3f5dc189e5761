"""Measures the margin of every learning assertion on both of TensorFlow's CPU kernel sets and a few seeds.

    python tools/learning_margins.py                 # seeds 0 1 2, oneDNN's kernels off and on (~30 min on 2 cores)
    python tools/learning_margins.py --seeds 0 --kernel-sets 0

The tests marked `learning` (tests/conftest.py) assert what a short training learned.
Another CPU's kernels add in another order, which moves such outcomes as another seed
does. TensorFlow has two CPU kernel sets, chosen by TF_ENABLE_ONEDNN_OPTS: 0 its own
(Eigen's), 1 oneDNN's; unset, it takes oneDNN's on CPUs with AVX-512 VNNI, BF16 or AMX
and its own elsewhere (an AVX2 CPU gives the same digits unset as with 0). Running
both on one machine stands in for two CPUs. This runs `pytest -m learning` once per
kernel set and seed (LEARNING_SEED), each test writing what it measured and the bound
it asserts (LEARNING_RECORD), and prints one row per measured quantity: its bound, the
range measured on each kernel set, and the worst margin, the smallest distance from a
measured value to the bound on the side the test asks for (negative: a failure). The
ranges are what the comments beside the thresholds quote. Exits 1 when any run failed.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # This checkout's packages, whatever is installed.

from plumbing.cli import ArgumentParser, run_command

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def parse_args(argv=None):
    parser = ArgumentParser(prog="python tools/learning_margins.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="LEARNING_SEED values. Default: 0 1 2.")
    parser.add_argument(
        "--kernel-sets",
        nargs="+",
        default=["0", "1"],
        help=f"values of {ONEDNN}: 0 (TensorFlow's own kernels), 1 (oneDNN's), unset (this CPU's default). "
        "Default: 0 1.",
    )
    parser.add_argument(
        "--pytest-args", default="", help="more arguments for pytest, as one string (`-k contrastive`)."
    )
    return parser.parse_args(argv)


def _run(seed, kernels, record):
    env = dict(os.environ, LEARNING_SEED=str(seed), LEARNING_RECORD=str(record))
    env.pop(ONEDNN, None)
    if kernels != "unset":
        env[ONEDNN] = kernels
    return env


def margin(row):
    """How far the measured value lies from its bound, on the side the test asks for (negative: it failed)."""
    gap = row["value"] - row["threshold"]
    return gap if row["kind"] == "min" else -gap


def table(rows, kernel_sets):
    """Markdown lines: one row per (test, quantity) with its bound, each kernel set's range and the worst margin."""
    header = ["test", "quantity", "bound"] + [f"{ONEDNN}={k}" for k in kernel_sets] + ["worst margin"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(dict.fromkeys((r["test"], r["quantity"]) for r in rows))
    for test, quantity in keys:
        mine = [r for r in rows if (r["test"], r["quantity"]) == (test, quantity)]
        bound = ("> " if mine[0]["kind"] == "min" else "< ") + f"{mine[0]['threshold']:g}"
        ranges = []
        for kernels in kernel_sets:
            values = sorted(r["value"] for r in mine if r["onednn"] == kernels)
            seeds = len(values)
            ranges.append(f"{values[0]:.4g} .. {values[-1]:.4g} ({seeds} seeds)" if values else "-")
        worst = min(margin(r) for r in mine)
        lines.append(f"| {test.split('::')[-1]} | {quantity} | {bound} | " + " | ".join(ranges) + f" | {worst:+.4g} |")
    return lines


def run(args):
    failed = []
    with tempfile.TemporaryDirectory() as folder:
        record, shown = Path(folder) / "learning.jsonl", []
        for kernels in args.kernel_sets:
            for seed in args.seeds:
                print(f"{ONEDNN}={kernels}, LEARNING_SEED={seed}: pytest -m learning", flush=True)
                command = [sys.executable, "-m", "pytest", "-q", "-m", "learning", "-p", "no:cacheprovider"]
                done = subprocess.run(
                    command + args.pytest_args.split(), cwd=ROOT, env=_run(seed, kernels, record), text=True,
                    capture_output=True,
                )  # fmt: skip
                print("  " + (done.stdout.strip().splitlines() or ["(no output)"])[-1], flush=True)
                seen = record.read_text().splitlines() if record.exists() else []
                for row in map(json.loads, seen[len(shown) :]):
                    print(f"  {row['test'].split('::')[-1]}: {row['quantity']} {row['value']:.4g}", flush=True)
                shown = seen
                if done.returncode != 0:
                    failed.append(f"{ONEDNN}={kernels}, LEARNING_SEED={seed}")
        rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    print()
    print("\n".join(table(rows, args.kernel_sets)))
    if failed:
        print(f"failed: {'; '.join(failed)}")
        return 1
    return 0


def main(argv=None):
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
