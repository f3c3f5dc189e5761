"""Can the pretraining input feed a GPU? Distorted pairs per second per core, with nothing training.

    python benchmarks/pretrain_input.py [--volumes 6] [--batches 8] [--repeats 5]

Writes a corpus of CT volumes with 512x512 slices (the size of real CT), its
manifest and its TFRecord shards, then times `genesis2d.pretrain.pairs`, the
exact input of `python genesis2d/train.py` (read, normalise, 448 crop, resize to
224, all Models Genesis distortions at their default rates), from the shards and
from the manifest, with TensorFlow's input threads limited to 1 and then 2. Each
figure is the median of several timed runs, interleaved; the last lines say how
many cores would deliver 1,500 pairs/s, about what a ResNet50 U-Net trains at on
one H100 in mixed precision.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TARGET = 1500.0  # pairs/s


def write_corpus(folder, volumes, depth, rng, size=512):
    """CT NIfTI volumes of size x size slices (512: real CT) and a manifest, volume 0 for validation."""
    import nibabel as nib
    import pandas as pd

    rows = []
    for v in range(volumes):
        path = folder / f"ct{v}.nii.gz"
        data = rng.normal(0, 300, size=(size, size, depth)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), path)
        split = "val" if v == 0 else "train"
        rows += [("BENCH", "CT", "CHEST", f"p{v}", str(path), z, split) for z in range(depth)]
    manifest = folder / "manifest.csv"
    pd.DataFrame(
        rows, columns=["dataset", "modality", "body_part", "patient_id", "path", "slice_index", "split"]
    ).to_csv(manifest, index=False)
    return manifest


def pairs_per_second(source, threads, batches, batch_size):
    import tensorflow as tf

    from genesis2d.pretrain import PretrainConfig, pairs

    config = PretrainConfig(out="unused", manifest=None, batch_size=batch_size, shuffle_buffer=64)
    dataset = pairs(source, "train", config, training=True, first_seed=0)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.autotune.cpu_budget = threads
    iterator = iter(dataset.with_options(options))
    for _ in range(2):  # Warm up: fill the buffers, trace the functions.
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=6, help="CT volumes written (one for validation). Default: 6.")
    parser.add_argument("--depth", type=int, default=40, help="slices per volume. Default: 40.")
    parser.add_argument("--batches", type=int, default=8, help="timed batches of 32 per run. Default: 8.")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median). Default: 5.")
    args = parser.parse_args(argv)

    from plumbing.cli import start_tensorflow_quietly

    start_tensorflow_quietly()
    from preprocessing.shards import write_shards

    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_corpus(Path(tmp), args.volumes, args.depth, np.random.default_rng(0))
        write_shards(manifest, Path(tmp) / "shards", slices_per_shard=32, progress=False)
        sources = {"shards": Path(tmp) / "shards", "manifest": manifest}
        rates = {(name, threads): [] for name in sources for threads in (1, 2)}
        for _ in range(args.repeats):  # Interleaved settings: a noisy machine's drift hits all alike.
            for (name, threads), found in rates.items():
                found.append(pairs_per_second(sources[name], threads, args.batches, 32))
    print(
        f"pretraining input at 224x224 from 512x512 CT slices (448 crop, all distortions), {os.cpu_count()} cores; "
        f"median of {args.repeats} runs of {args.batches} batches of 32"
    )
    for name in sources:
        one, two = np.median(rates[(name, 1)]), np.median(rates[(name, 2)])
        print(
            f"{name:>8}: 1 thread {one:7.1f} pairs/s, 2 threads {two:7.1f} pairs/s ({two / one:.2f}x); "
            f"{TARGET:.0f} pairs/s needs about {int(np.ceil(TARGET / one))} cores"
        )


if __name__ == "__main__":
    main()
