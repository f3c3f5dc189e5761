"""Input pipeline speed and memory: preprocessing.pipeline against a plain Python loop.

    python benchmarks/pipeline.py [--copies 4] [--crop-size 448] [--image-size 224]

Speed: slices per second of one pass over the demo corpus's manifest through
`preprocessing.pipeline.make_dataset` (each volume read once, in parallel) and
through a plain loop that reads, normalises and crops each manifest row on its
own, in the same run. Memory: peak resident memory of a full pass over a corpus
of N slices and of 4N slices (the demo files linked under new names), each in a
fresh process; a streaming pipeline keeps the two about equal.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402


def loop_pass(frame, crop_size, image_size):
    from preprocessing.geometry import crop_and_resize
    from preprocessing.normalize import normalize_slice
    from preprocessing.readers import read_image

    for row in frame.itertuples():
        array, meta = read_image(row.path)
        plane = array[row.slice_index] if array.ndim == 3 else array
        crop_and_resize(
            normalize_slice(plane, row.modality, meta.get("bit_depth")), crop_size, image_size, training=False
        )
    return len(frame)


def pipeline_pass(source, crop_size, image_size):
    from preprocessing.pipeline import make_dataset

    return sum(int(b.shape[0]) for b in make_dataset(source, "train", 32, crop_size, image_size, training=False))


def replicated_manifest(frame, copies, folder):
    """The manifest repeated `copies` times, each copy's files linked under new names."""
    parts = []
    for copy in range(copies):
        mapping = {}
        for path in frame["path"].unique():
            source = Path(path)
            target = Path(folder) / f"copy{copy}" / source.parent.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source, target_is_directory=source.is_dir())
                if source.suffix == ".mhd":  # MetaImage names its .raw: link it too.
                    raw = source.with_suffix(".raw")
                    target.with_suffix(".raw").symlink_to(raw)
            mapping[path] = str(target)
        parts.append(frame.assign(path=frame["path"].map(mapping)))
    out = Path(folder) / f"manifest_x{copies}.csv"
    pd.concat(parts).to_csv(out, index=False)
    return out


def peak_memory_child(manifest, crop_size, image_size):
    """Runs one pipeline pass in a fresh process; returns (slices, peak RSS in MiB)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import resource; "
        "from benchmarks.pipeline import pipeline_pass; "
        f"n = pipeline_pass({str(manifest)!r}, {crop_size}, {image_size}); "
        "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    slices, peak = result.stdout.split()[-2:]
    return int(slices), float(peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--copies", type=int, default=4, help="size of the large corpus, in copies of the demo. Default: 4."
    )
    parser.add_argument("--crop-size", type=int, default=448, help="Default: 448.")
    parser.add_argument("--image-size", type=int, default=224, help="Default: 224.")
    args = parser.parse_args(argv)
    from genesis2d.pretrain import demo_manifest

    manifest = demo_manifest()
    frame = pd.read_csv(manifest, dtype={"patient_id": str}).assign(split="train")
    with tempfile.TemporaryDirectory() as folder:
        base = replicated_manifest(frame, 1, folder)
        big = replicated_manifest(frame, args.copies, folder)
        pipeline_pass(base, args.crop_size, args.image_size)  # Warm the file cache and TF for both.
        start = time.perf_counter()
        n = pipeline_pass(base, args.crop_size, args.image_size)
        fast = n / (time.perf_counter() - start)
        start = time.perf_counter()
        n_loop = loop_pass(pd.read_csv(base), args.crop_size, args.image_size)
        slow = n_loop / (time.perf_counter() - start)
        small_n, small_peak = peak_memory_child(base, args.crop_size, args.image_size)
        big_n, big_peak = peak_memory_child(big, args.crop_size, args.image_size)
    print(f"{n} slices of the demo corpus, crop {args.crop_size} -> {args.image_size}, {os.cpu_count()} cores")
    print(f"plain loop (one read per slice): {slow:8.1f} slices/s")
    print(f"preprocessing.pipeline:          {fast:8.1f} slices/s")
    print(f"speed-up: {fast / slow:.1f}x")
    print(
        f"peak memory, {small_n} slices: {small_peak:.0f} MiB; {big_n} slices: {big_peak:.0f} MiB; "
        f"ratio {big_peak / small_peak:.2f}"
    )


if __name__ == "__main__":
    main()
