"""The thesis's configuration, rehearsed on the demo trees: every model at its real size, a few steps each.

    python benchmarks/thesis_rehearsal.py                # resnet50 and vgg16 at the thesis's sizes, 3 steps a stage
    python benchmarks/thesis_rehearsal.py --size tiny    # seconds: the same path at 32 px

Part 1 measures each model of the experiment in a process of its own, as the plan of
`python -m study --corpus ... --luna16 ... --mura ...` measures it (`study.measure`): the
restoration U-Nets at 224 px and batch 32 (the pretraining defaults), the thesis's
classifier at LUNA16's 64 px patches and MURA's 224 px with each task's batch from its
schedule table. Printed: seconds per training step and per inference batch, and the
process's peak memory (a model alone in its process: the stage's own).

Part 2 runs the experiment itself on the demo trees laid out as a user's folders (every
stage's defaults, the thesis's, except the number of steps: `--steps` per stage, one fold,
one repeat), and prints each step's projected time (from part 1's kind of measurement,
made by the plan) beside the time it took: how far to trust a plan's hours.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # (pretraining size, batch), LUNA16 patch size and MURA size (None: the thesis's), backbones.
    "full": ((224, 32), None, None, ("resnet50", "vgg16")),
    "tiny": ((32, 4), 32, 32, ("resnet50",)),
}


def measure_in_own_process(kind, backbone, size, batch, steps):
    """`study.measure`'s StepTime of one model, measured in a fresh process (its peak memory is the model's)."""
    call = "pretraining_step" if kind == "pretraining" else "classifier_step"
    code = (
        "import dataclasses, json; from plumbing.cli import start_tensorflow_quietly; start_tensorflow_quietly(); "
        f"from study.measure import {call}; "
        f"print('RESULT', json.dumps(dataclasses.asdict({call}({backbone!r}, {size}, {batch}, steps={steps}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"measuring {kind} {backbone} failed:\n{done.stderr[-2000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def thesis_batch(task, backbone):
    from transfer.schedules import schedule_row

    if task == "luna16":
        from luna16.experiment import THESIS_SCHEDULES
    else:
        from mura.experiment import THESIS_SCHEDULES
    return schedule_row(THESIS_SCHEDULES, backbone, "scratch")[0].batch_size


def settings_for(data, size, steps):
    (pretrain_size, pretrain_batch), patch, mura_size, _ = SIZES[size]
    settings = {
        "roots": {
            "corpus": str(data / "pretrain"),
            "datasets": str(data / "pretrain" / "datasets.yaml"),
            "luna16": str(data / "LUNA16"),
            "mura": str(data / "MURA-v1.1"),
        },
        "manifest": {"fractions": [0.6, 0.2, 0.2]},  # A few demo patients per dataset: val and test not empty.
        "pretrain": {"epochs": 1, "steps_per_epoch": steps, "validation_steps": 1, "samples": 1},
        "luna16": {"epochs": 1, "warmup_epochs": 1, "steps_per_epoch": steps, "gallery": 0},
        "mura": {"epochs": 1, "warmup_epochs": 1, "steps_per_epoch": steps, "gallery": 0},
    }
    if size == "tiny":
        settings["pretrain"].update(crop_size=64, image_size=pretrain_size, batch_size=pretrain_batch, lr=0.1)
        settings["pretrain"].update(warmup_steps=0, shuffle_buffer=16)
        settings["luna16"].update(patch_size=patch, batch_size=8, positive_copies=2)
        settings["mura"].update(image_size=mura_size, batch_size=8)
    return settings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model, and steps per stage. Default: 3.")
    parser.add_argument("--backbones", nargs="+", help="Default: resnet50 vgg16 (full), resnet50 (tiny).")
    parser.add_argument("--skip-run", action="store_true", help="part 1 only.")
    parser.add_argument("--json", help="write every figure here too.")
    args = parser.parse_args(argv)
    (pretrain_size, pretrain_batch), patch, mura_size, backbones = SIZES[args.size]
    backbones = args.backbones or backbones
    found = {"measured": [], "steps": {}}
    print(f"part 1: each model alone in its process, {args.steps} timed steps after an untimed one\n")
    print("| model | input | batch | s/step (train) | s/batch (inference) | images/s | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for backbone in backbones:
        rows = [
            ("pretraining", pretrain_size, pretrain_batch),
            ("luna16", patch or 64, thesis_batch("luna16", backbone)),
            ("mura", mura_size or 224, thesis_batch("mura", backbone)),
        ]
        for kind, size, batch in rows:
            result = measure_in_own_process(kind, backbone, size, batch, args.steps)
            result["stage"] = kind
            found["measured"].append(result)
            print(
                f"| {kind}: {result['model']} | {size} px | {batch} | {result['train_seconds']:.3f} | "
                f"{result['predict_seconds']:.3f} | {batch / result['train_seconds']:.1f} | "
                f"{result['peak_rss_gb']:.2f} |",
                flush=True,
            )
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            from study.demo_data import write_all

            write_all(tmp / "data")
            (tmp / "settings.yaml").write_text(yaml.safe_dump(settings_for(tmp / "data", args.size, args.steps)))
            command = [sys.executable, "-m", "study", "--settings", str(tmp / "settings.yaml"), "--out"]
            command += [str(tmp / "out"), "--backbone", *backbones, "--inits", "scratch", "genesis", "--folds", "1"]
            command += ["--repeats", "1", "--measure-steps", str(args.steps)]
            print(f"\npart 2: {' '.join(command[1:])}", flush=True)
            started = time.time()
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"the experiment failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            print(f"ran in {(time.time() - started) / 60:.1f} min (the plan's measurements included)\n")
            print("| step | training steps | measured s/step | projected s | took s | took / projected |")
            print("| --- | --- | --- | --- | --- | --- |")
            for path in sorted((tmp / "out" / "steps").glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
                step = json.loads(path.read_text())
                found["steps"][step["step"]] = step
                speed = step["measured_seconds_per_step"]
                ratio = step["seconds"] / step["projected_seconds"] if step["projected_seconds"] > 0 else float("nan")
                print(
                    f"| {step['step']} | {step['train_steps']} | {'-' if speed is None else f'{speed:.3f}'} | "
                    f"{step['projected_seconds']:.1f} | {step['seconds']:.1f} | {ratio:.2f} |"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2))
    return found


if __name__ == "__main__":
    main()
