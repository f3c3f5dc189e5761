"""LUNA16 patch extraction: all candidates of a scan from one read vs one read per candidate.

    python benchmarks/luna16_extract.py [--shape 240 512 512] [--candidates 200] [--patch-size 64]

Writes one scan of LUNA16 size (.mhd/.raw, int16) to a temporary folder and
extracts the same candidates twice in one process: grouped (the scan read once,
as luna16.data does) and one read per candidate (as a per-sample loader does,
timed on the first tenth of the candidates). Prints candidates per second and
the ratio.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from luna16.patches import extract, extract_scan, voxel_to_world  # noqa: E402
from preprocessing.demo import write_itk  # noqa: E402
from preprocessing.readers import read_image  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[240, 512, 512], help="scan (z, y, x). Default: 240 512 512."
    )
    parser.add_argument("--candidates", type=int, default=200, help="candidates in the scan. Default: 200.")
    parser.add_argument("--patch-size", type=int, default=64, help="Default: 64.")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    spacing, origin = (0.7, 0.7, 1.25), (-180.0, -200.0, -320.0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.mhd"
        write_itk(path, rng.integers(-1000, 400, size=args.shape, dtype=np.int16), spacing, origin)
        zyx = rng.uniform(0.1, 0.9, size=(args.candidates, 3)) * np.array(args.shape)
        rows = np.column_stack([voxel_to_world(zyx, origin, spacing), np.zeros(args.candidates)])

        start = time.perf_counter()
        volume, meta = read_image(path)
        extract_scan(volume, meta, rows, args.patch_size, positive_copies=1)
        grouped = len(rows) / (time.perf_counter() - start)
        del volume

        subset = rows[: max(1, len(rows) // 10)]
        start = time.perf_counter()
        for x, y, z, _ in subset:
            volume, meta = read_image(path)
            extract(volume, meta, (x, y, z), args.patch_size)
        per_candidate = len(subset) / (time.perf_counter() - start)
    print(
        f"scan {tuple(args.shape)} int16 ({np.prod(args.shape) * 2 / 2**20:.0f} MiB), {args.candidates} candidates, "
        f"patch {args.patch_size}, {os.cpu_count()} cores"
    )
    print(f"one read per candidate: {per_candidate:8.1f} candidates/s")
    print(f"one read per scan:      {grouped:8.1f} candidates/s")
    print(f"speed-up: {grouped / per_candidate:.1f}x")


if __name__ == "__main__":
    main()
