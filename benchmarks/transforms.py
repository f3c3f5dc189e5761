"""Distortion speed: genesis2d.transforms against a per-sample Python loop port, side by side.

    python benchmarks/transforms.py [--size 224] [--batch 32] [--repeats 7]

The baseline below is a line-by-line 2D port of the public Models Genesis
`generate_pair` (Python `random`, one `np.random.shuffle` per block, a
100,000-point Bezier curve), run in the same process on the same images. Both
run on one core (numba and BLAS are limited to one thread), so the printed ratio
is pairs per second per core.
"""

import argparse
import copy
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.special import comb  # noqa: E402

from genesis2d.transforms import make_pair  # noqa: E402

# --------------------------------------------------------------------------- the loop port (baseline)


def _bernstein_poly(i, n, t):
    return comb(n, i) * (t ** (n - i)) * (1 - t) ** i


def _bezier_curve(points, n_times=100000):
    n_points = len(points)
    x_points = np.array([p[0] for p in points])
    y_points = np.array([p[1] for p in points])
    t = np.linspace(0.0, 1.0, n_times)
    polynomial_array = np.array([_bernstein_poly(i, n_points - 1, t) for i in range(0, n_points)])
    return np.dot(x_points, polynomial_array), np.dot(y_points, polynomial_array)


def _flip(x, y, prob=0.4):
    cnt = 3
    while random.random() < prob and cnt > 0:
        degree = random.choice([0, 1])
        x, y = np.flip(x, axis=degree), np.flip(y, axis=degree)
        cnt -= 1
    return x, y


def _nonlinear(x, prob=0.9):
    if random.random() >= prob:
        return x
    points = [[0, 0], [random.random(), random.random()], [random.random(), random.random()], [1, 1]]
    xvals, yvals = _bezier_curve(points, n_times=100000)
    if random.random() < 0.5:
        xvals = np.sort(xvals)
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals)


def _local_pixel_shuffling(x, prob=0.5):
    if random.random() >= prob:
        return x
    image_temp = copy.deepcopy(x)
    orig_image = copy.deepcopy(x)
    img_rows, img_cols = x.shape
    for _ in range(10000):
        bx = random.randint(1, img_rows // 10)
        by = random.randint(1, img_cols // 10)
        nx = random.randint(0, img_rows - bx)
        ny = random.randint(0, img_cols - by)
        window = orig_image[nx : nx + bx, ny : ny + by]
        window = window.flatten()
        np.random.shuffle(window)
        image_temp[nx : nx + bx, ny : ny + by] = window.reshape((bx, by))
    return image_temp


def _in_painting(x):
    img_rows, img_cols = x.shape
    cnt = 5
    while cnt > 0 and random.random() < 0.95:
        bx = random.randint(img_rows // 6, img_rows // 3)
        by = random.randint(img_cols // 6, img_cols // 3)
        nx = random.randint(3, img_rows - bx - 3)
        ny = random.randint(3, img_cols - by - 3)
        x[nx : nx + bx, ny : ny + by] = np.random.rand(bx, by) * 1.0
        cnt -= 1
    return x


def _out_painting(x):
    img_rows, img_cols = x.shape
    image_temp = copy.deepcopy(x)
    x = np.random.rand(*x.shape) * 1.0
    bx = img_rows - random.randint(3 * img_rows // 7, 4 * img_rows // 7)
    by = img_cols - random.randint(3 * img_cols // 7, 4 * img_cols // 7)
    nx = random.randint(3, img_rows - bx - 3)
    ny = random.randint(3, img_cols - by - 3)
    x[nx : nx + bx, ny : ny + by] = image_temp[nx : nx + bx, ny : ny + by]
    cnt = 4
    while cnt > 0 and random.random() < 0.95:
        bx = img_rows - random.randint(3 * img_rows // 7, 4 * img_rows // 7)
        by = img_cols - random.randint(3 * img_cols // 7, 4 * img_cols // 7)
        nx = random.randint(3, img_rows - bx - 3)
        ny = random.randint(3, img_cols - by - 3)
        x[nx : nx + bx, ny : ny + by] = image_temp[nx : nx + bx, ny : ny + by]
        cnt -= 1
    return x


def loop_generate_pair(images):
    """The per-sample loop, as the public code runs it."""
    xs, ys = [], []
    for image in images[..., 0]:
        y = image.copy()
        x, y = _flip(image.copy(), y)
        x = _local_pixel_shuffling(x)
        x = _nonlinear(x)
        if random.random() < 0.9:
            x = _in_painting(x) if random.random() < 0.2 else _out_painting(x)
        xs.append(x)
        ys.append(y)
    return np.stack(xs)[..., None].astype(np.float32), np.stack(ys)[..., None].astype(np.float32)


def _times(function, images, repeats):
    """Seconds per batch, one per repeat (each a new seed)."""
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        function(images, r)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side. Default: 224.")
    parser.add_argument("--batch", type=int, default=32, help="images per batch. Default: 32.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed batches per method, interleaved; the median is reported. Default: 7.",
    )
    args = parser.parse_args(argv)
    images = np.random.default_rng(0).random((args.batch, args.size, args.size, 1), dtype=np.float32)
    make_pair(images[:2], seed=0)  # Compile (or load) the numba kernel outside the timing.

    def baseline(batch, r):
        random.seed(r)
        np.random.seed(r)
        return loop_generate_pair(batch)

    ours_times, loop_times = [], []
    for r in range(args.repeats):  # Interleaved, so drifts of a noisy machine hit both alike.
        ours_times += _times(lambda batch, _: make_pair(batch, seed=r), images, 1)
        loop_times += _times(lambda batch, _: baseline(batch, r), images, 1)
    ours, loop = len(images) / np.median(ours_times), len(images) / np.median(loop_times)
    print(f"image {args.size}x{args.size}, batch {args.batch}, one core, median of {args.repeats} batches each")
    print(f"loop port (baseline): {loop:8.1f} pairs/s  ({1000 / loop:6.1f} ms per slice)")
    print(f"genesis2d.transforms: {ours:8.1f} pairs/s  ({1000 / ours:6.1f} ms per slice)")
    print(f"speed-up: {ours / loop:.1f}x")


if __name__ == "__main__":
    main()
