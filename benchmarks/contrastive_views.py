"""The contrastive arm's cost beside Models Genesis's: its input per core, and its training step.

    python benchmarks/contrastive_views.py [--size 224] [--batch 32] [--repeats 7]
    python benchmarks/contrastive_views.py --steps [--backbone resnet50] [--step-batch 8]

A batch of `--batch` images through the encoder is, for --objective genesis, one distorted pair
per slice (`make_pair` on `--batch` slices) and, for the contrastive objectives, two views of
each of `--batch / 2` slices (`make_views`), plus for genesis+contrastive the distortions of those
views. All three run in this process on the same random slices, on one core (BLAS and numba
limited to one thread); the medians of `--repeats` runs are printed as images/s and as ratios to
the distortions'. Multiply by the cores `tf.data` gets to see whether they feed a GPU.

With --steps it also times one training step of each objective's model (`build_pretrainer`,
compiled as pretraining compiles it) on the same random batch of `--step-batch` images at
`--size`, the median of `--repeats` steps after one untimed, as seconds and as ratios to the
genesis U-Net's: the contrastive encoder has no decoder; the joined model is the U-Net plus
the projection head; with a queue (MoCo v2) the step also runs the key encoder forward and,
after it, the momentum update. On this CPU that is the model's cost, not a GPU's.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _median_seconds(function, repeats):
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        function(repeat)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/contrastive_views.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", type=int, default=224, help="image side. Default: 224 (thesis 3.1.8).")
    parser.add_argument("--batch", type=int, default=32, help="images through the encoder per batch. Default: 32.")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches per method; the median is kept.")
    parser.add_argument("--steps", action="store_true", help="also time each objective's training step.")
    parser.add_argument("--backbone", default="resnet50", help="backbone of the timed steps. Default: resnet50.")
    parser.add_argument("--step-batch", type=int, default=8, help="images in a timed step. Default: 8.")
    args = parser.parse_args(argv)

    from genesis2d.contrastive import make_views
    from genesis2d.transforms import make_pair

    slices = np.random.default_rng(0).random((args.batch, args.size, args.size, 1), dtype=np.float32)
    half = slices[: args.batch // 2]
    make_pair(slices[:2], 0)  # Compile numba's kernels outside the timing.
    methods = {
        "genesis (distortions)": lambda seed: make_pair(slices, seed),
        "contrastive (views)": lambda seed: make_views(half, seed),
        "genesis+contrastive (views, then distortions)": lambda seed: make_pair(make_views(half, seed), seed),
    }
    rates = {name: args.batch / _median_seconds(function, args.repeats) for name, function in methods.items()}
    baseline = rates["genesis (distortions)"]
    print(f"{args.batch} images of {args.size}x{args.size} a batch, one core, median of {args.repeats}:")
    for name, rate in rates.items():
        print(f"  {name:<48} {rate:8.0f} images/s  {rate / baseline:5.2f}x the distortions")
    if args.steps:
        step_times(args.backbone, args.size, args.step_batch, args.repeats)


def step_times(backbone, size, batch, repeats, queue_size=4096):
    """Seconds per training step of each objective's model on one random batch, and the ratio to genesis's.

    The contrastive objectives are timed with in-batch negatives and with a queue (MoCo v2): the
    queue's step adds the key encoder's forward pass and, after the step, the momentum update.
    """
    import keras

    from genesis2d.contrastive import EMBEDDING, RESTORED, MomentumUpdate, build_pretrainer, compile_arguments

    rng = np.random.default_rng(1)
    images = rng.random((batch, size, size, 1), dtype=np.float32)
    seconds = {}
    arms = [("genesis", "batch"), ("contrastive", "batch"), ("genesis+contrastive", "batch")]
    arms += [("contrastive", "queue"), ("genesis+contrastive", "queue")]
    for objective, negatives in arms:
        keras.utils.set_random_seed(0)
        model = build_pretrainer(objective, backbone, (size, size, 1), negatives=negatives, queue_size=queue_size)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            **compile_arguments(objective, negatives=negatives),
        )
        unused = np.zeros(batch, np.float32)
        targets = {"genesis": images, "contrastive": unused}.get(objective, {RESTORED: images, EMBEDDING: unused})
        update = MomentumUpdate()
        update.set_model(model)

        def step(_):
            model.train_on_batch(images, targets)
            if negatives == "queue":
                update.on_train_batch_end(0)

        step(None)  # Builds and traces the step.
        name = objective if negatives == "batch" else f"{objective}, queue of {queue_size} (MoCo v2)"
        seconds[name] = _median_seconds(step, repeats)
    print(f"training step, {backbone} at {size}x{size}, {batch} images, median of {repeats} after one untimed:")
    for name, value in seconds.items():
        print(f"  {name:<48} {value:8.3f} s/step  {value / seconds['genesis']:5.2f}x the genesis U-Net's")


if __name__ == "__main__":
    main()
