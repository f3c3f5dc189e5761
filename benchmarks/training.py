"""Does the pretraining input keep an accelerator fed? Training images/s fed from memory and from the pipeline.

    python benchmarks/training.py                      # on a GPU: ResNet50 and VGG16 U-Nets at 224, batch 32
    python benchmarks/training.py --backbones resnet18 --image-size 32 --crop-size 64 --slice-size 96 \\
        --batch-size 4 --steps 2 --repeats 1 --volumes 2 --depth 8     # the tiny CPU run of tests/test_benchmarks.py

Writes a corpus of CT volumes (512x512 slices, the size of real CT) and its
TFRecord shards, then trains each U-Net with `jit_compile` off and on (mixed
precision on a GPU, as `python genesis2d/train.py` picks it) for a few epochs of
`--steps` steps: once fed from batches already held in memory (what the
accelerator can do) and once from `genesis2d.pretrain.pairs`, the exact input of
pretraining (read, 448 crop, resize, all distortions). The figures are the median
over the timed epochs (the first, which traces and compiles, is left out). A
pipeline/memory ratio near 1 means the input keeps up; below 1 it starves the
accelerator by that much.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.pretrain_input import write_corpus  # noqa: E402


def device_name():
    """The GPU's name (first GPU), or the CPU's core count."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU, {os.cpu_count()} cores"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{details.get('device_name', 'GPU')} x{len(gpus)}"


def epoch_rates(model, dataset, steps, epochs, batch_size):
    """Images/s of each epoch after the first (which traces and compiles)."""
    import keras

    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(dataset, epochs=epochs + 1, steps_per_epoch=steps, verbose=0, callbacks=[Clock()], shuffle=False)
    return [steps * batch_size / t for t in times[1:]]


def measure(config, source, backbone, jit, steps, repeats):
    """{'memory': images/s, 'pipeline': images/s, 'peak_gib': GPU memory or None} for one U-Net and jit setting."""
    import keras
    import tensorflow as tf

    from genesis2d.pretrain import make_optimizer, pairs
    from genesis2d.unet import build_unet

    stream = pairs(source, "train", config, training=True, first_seed=0)
    held = list(stream.take(4))  # Distinct batches, cycled: the accelerator's own speed.
    memory = tf.data.Dataset.from_tensor_slices(
        (tf.stack([b[0] for b in held]), tf.stack([b[1] for b in held]))).repeat()
    keras.backend.clear_session()
    model = build_unet(backbone, (config.image_size, config.image_size, 1), config.norm)
    model.compile(optimizer=make_optimizer(config.optimizer, config.lr, config.momentum), loss="mse", jit_compile=jit)
    rates = {}  # One model, compiled once, fed from memory and then from the pipeline.
    for feed, dataset in (("memory", memory), ("pipeline", stream)):
        rates[feed] = float(np.median(epoch_rates(model, dataset, steps, repeats, config.batch_size)))
    peak = None
    if tf.config.list_physical_devices("GPU"):
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
        tf.config.experimental.reset_memory_stats("GPU:0")
    return {**rates, "peak_gib": peak}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "vgg16"], help="Default: resnet50 vgg16.")
    parser.add_argument("--image-size", type=int, default=224, help="Default: 224.")
    parser.add_argument("--crop-size", type=int, default=448, help="Default: 448.")
    parser.add_argument("--slice-size", type=int, default=512, help="side of the corpus's slices. Default: 512.")
    parser.add_argument("--batch-size", type=int, default=32, help="Default: 32.")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch. Default: 30.")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (median). Default: 3.")
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=("off", "on"), help="Default: off on.")
    parser.add_argument("--volumes", type=int, default=8, help="CT volumes written. Default: 8.")
    parser.add_argument("--depth", type=int, default=40, help="slices per volume. Default: 40.")
    args = parser.parse_args(argv)

    from plumbing.cli import start_tensorflow_quietly

    start_tensorflow_quietly()
    from genesis2d.pretrain import PretrainConfig
    from plumbing.runtime import pick_precision
    from preprocessing.shards import write_shards

    precision = pick_precision("auto")
    config = PretrainConfig(out="unused", batch_size=args.batch_size, crop_size=args.crop_size,
                            image_size=args.image_size, lr=0.1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_corpus(Path(tmp), args.volumes, args.depth, np.random.default_rng(0), args.slice_size)
        write_shards(manifest, Path(tmp) / "shards", slices_per_shard=32, progress=False)
        for backbone in args.backbones:
            for jit in args.jit:
                found = measure(config, Path(tmp) / "shards", backbone, jit == "on", args.steps, args.repeats)
                rows.append((backbone, jit, found))
    print(f"U-Net training at {args.image_size}x{args.image_size}, batch {args.batch_size}, {precision}, "
          f"{device_name()}; median of {args.repeats} epochs of {args.steps} steps")
    print(f"{'backbone':<10} {'jit':<4} {'memory img/s':>13} {'pipeline img/s':>15} {'ratio':>6} {'peak GiB':>9}")
    for backbone, jit, found in rows:
        peak = f"{found['peak_gib']:9.1f}" if found["peak_gib"] is not None else f"{'-':>9}"
        print(f"{backbone:<10} {jit:<4} {found['memory']:13.1f} {found['pipeline']:15.1f} "
              f"{found['pipeline'] / found['memory']:6.2f} {peak}")
    return rows


if __name__ == "__main__":
    main()
