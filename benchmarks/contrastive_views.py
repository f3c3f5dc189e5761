"""Contrastive views against Models Genesis's distortions: images per second per core at the real size.

    python benchmarks/contrastive_views.py [--size 224] [--batch 32] [--repeats 7]

A batch of `--batch` images through the encoder is, for --objective genesis, one distorted pair
per slice (`make_pair` on `--batch` slices) and, for the contrastive objectives, two views of
each of `--batch / 2` slices (`make_views`), plus for genesis+contrastive the distortions of those
views. All three run in this process on the same random slices, on one core (BLAS and numba
limited to one thread); the medians of `--repeats` runs are printed as images/s and as ratios to
the distortions'. Multiply by the cores `tf.data` gets to see whether they feed a GPU.
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


if __name__ == "__main__":
    main()
