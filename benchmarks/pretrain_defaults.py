"""Do the pretraining defaults learn at the real size? `python genesis2d/train.py`, measured against doing nothing.

    python benchmarks/pretrain_defaults.py                   # resnet50 and vgg16 U-Nets, 224, batch 32, 64 steps
    python benchmarks/pretrain_defaults.py --guard off -- --warmup-steps 0 --clipnorm 0   # Models Genesis's start
    python benchmarks/pretrain_defaults.py --size tiny               # seconds: what tests/test_benchmarks.py runs

Each backbone runs the pretraining command itself (`genesis2d.pretrain.run`, every
default as `python genesis2d/train.py --backbone B` has it, on the demo corpus's
manifest) in a process of its own, `--steps` steps cut into epochs of `--log-every`
steps, so that the validation loss is read every `--log-every` steps. Printed per
interval: the learning rate, the training loss, the validation loss against the two
baselines a restoration must beat (returning the distorted validation slices unchanged;
the best constant output), and, on the first validation batch, the spread of the
restored slices against the targets' (the health guard's collapse measure: 0 is a
constant output) through the moving BatchNorm statistics (what the validation loss
sees) and through the batch's own (what the weights do before the moving statistics
catch up), with that batch's loss. Restoration learned something when the validation
loss is below both baselines.

With `--guard off` the health guard measures but does not stop: what a run stopped by
it would have done next. Options after `--` go to the pretraining command (e.g. another
--lr or --warmup-steps).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # image size, crop size, batch size, steps, log every, backbones
    "full": (224, 448, 32, 64, 8, ("resnet50", "vgg16")),  # The defaults of `python genesis2d/train.py`.
    "tiny": (32, 64, 4, 4, 2, ("resnet18",)),
}


def run_row(row):
    """One pretraining run in this process; returns what it measured (see the module's docstring)."""
    import keras
    import numpy as np

    import genesis2d.health as health
    from genesis2d import pretrain
    from plumbing.runtime import STREAM_VAL_DISTORTIONS, derive_seed

    baselines = []
    measure_baselines = health.restoration_baselines

    def measured_baselines(*args, **kwargs):
        baselines.append(measure_baselines(*args, **kwargs))
        return baselines[-1]

    health.restoration_baselines = measured_baselines
    if not row["guard"]:
        health.health_guard = lambda *args, **kwargs: keras.callbacks.Callback()
    argv = [
        "--manifest",
        row["manifest"],
        "--backbone",
        row["backbone"],
        "--out",
        row["out"],
        "--image-size",
        str(row["image_size"]),
        "--crop-size",
        str(row["crop_size"]),
        "--batch-size",
        str(row["batch_size"]),
        "--epochs",
        str(row["steps"] // row["log_every"]),
        "--steps-per-epoch",
        str(row["log_every"]),
        "--checkpoint-every",
        "0",
        "--verbose",
        "0",
        *row["extra"],
    ]
    config = pretrain.parse_args(argv)
    first = derive_seed(config.seed, STREAM_VAL_DISTORTIONS)
    inputs, targets = (
        np.asarray(x)
        for x in next(iter(pretrain.pairs(config.manifest, "val", config, training=False, first_seed=first).take(1)))
    )
    intervals = []

    class Measure(keras.callbacks.Callback):
        """The first validation batch restored through the moving and through the batch's BatchNorm statistics."""

        def on_epoch_end(self, epoch, logs=None):
            moving = keras.ops.convert_to_numpy(self.model(inputs, training=False)).astype(np.float64)
            batch = np.asarray(health.batch_statistics_output(self.model, inputs), np.float64)
            spread = float(np.std(targets))
            intervals.append(
                {
                    "spread_moving": float(np.std(moving)) / spread,
                    "spread_batch": float(np.std(batch)) / spread,
                    "mse_batch": float(np.mean((batch - targets) ** 2)),
                }
            )

    started, stopped = time.perf_counter(), None
    try:
        pretrain.run(config, extra_callbacks=[Measure()])
    except Exception as error:  # The guard's stop (or any failure) is a finding here, reported in the table.
        stopped = str(error)
    seconds = time.perf_counter() - started
    import pandas as pd

    out = Path(row["out"])
    history = pd.read_csv(out / "history.csv") if (out / "history.csv").exists() else pd.DataFrame()
    identity, constant = baselines[0] if baselines else (None, None)
    return {
        "history": history.to_dict("list"),
        "intervals": intervals,
        "seconds": seconds,
        "stopped": stopped,
        "identity": identity,
        "constant": constant,
        "config": {
            k: v
            for k, v in config.record().items()
            if k in ("lr", "momentum", "warmup_steps", "clipnorm", "optimizer", "bn_momentum")
        },
    }


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--backbones", nargs="+", help="Default: resnet50 vgg16 (full), resnet18 (tiny).")
    parser.add_argument("--steps", type=int, help="Default: 64 (full).")
    parser.add_argument("--log-every", type=int, help="Default: 8 (full).")
    parser.add_argument(
        "--guard",
        choices=("on", "off"),
        default="on",
        help="off: the health guard measures but never stops a run. Default: on.",
    )
    parser.add_argument("--json", help="also write the measurements to this JSON file.")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # A child process's one run.
    args = parser.parse_args(argv)
    if args.row:
        row = json.loads(args.row)
        print("RESULT " + json.dumps(run_row(row)), flush=True)
        return None
    image_size, crop_size, batch_size, steps, log_every, backbones = SIZES[args.size]
    steps, log_every = args.steps or steps, args.log_every or log_every
    from genesis2d.data import demo_manifest

    manifest = str(demo_manifest())
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for backbone in args.backbones or backbones:
            row = {
                "backbone": backbone,
                "manifest": manifest,
                "out": str(Path(scratch) / backbone),
                "image_size": image_size,
                "crop_size": crop_size,
                "batch_size": batch_size,
                "steps": steps,
                "log_every": log_every,
                "guard": args.guard == "on",
                "extra": extra,
            }
            done = subprocess.run(
                [sys.executable, __file__, "--row", json.dumps(row)], capture_output=True, text=True, cwd=ROOT
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                raise SystemExit(f"{backbone}: the run failed:\n{done.stderr[-3000:]}")
            results[backbone] = found = json.loads(lines[-1][len("RESULT ") :])
            print_row(backbone, found, image_size, batch_size, log_every)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def print_row(backbone, found, image_size, batch_size, log_every):
    history, identity, constant = found["history"], found["identity"], found["constant"]
    print(
        f"\n{backbone} U-Net, {image_size}x{image_size}, batch {batch_size}: {found['config']}; "
        f"{found['seconds']:.0f} s; identity {identity:.4f}, constant {constant:.4f}"
    )
    print(
        "| step | learning rate | loss | val loss | val / identity | val / constant | restored spread / targets' "
        "(moving statistics) | the same, batch statistics | val batch MSE, batch statistics |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i, epoch in enumerate(history.get("epoch", [])):
        val, measured = history["val_loss"][i], found["intervals"][i]
        rate = history["learning_rate"][i] if "learning_rate" in history else float("nan")
        print(
            f"| {(epoch + 1) * log_every} | {rate:.3g} | {history['loss'][i]:.4f} | {val:.4f} | "
            f"{val / identity:.3f} | {val / constant:.3f} | {measured['spread_moving']:.3f} | "
            f"{measured['spread_batch']:.3f} | {measured['mse_batch']:.4f} |"
        )
    if found["stopped"]:
        print(f"stopped: {found['stopped']}")


if __name__ == "__main__":
    main()
