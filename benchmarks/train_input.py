"""Does the input pipeline keep training fed? Training images/s from the full pipeline vs from memory.

    python benchmarks/train_input.py [--backbone resnet18] [--image-size 128] [--batch-size 8] [--steps 10]

Trains the same U-Net for the same number of steps in one run: fed by the full
pretraining input (read, normalise, crop, resize, Models Genesis distortions, on
the demo corpus; its shuffle buffer already filled, as in a long epoch) and from
batches already held in memory. A ratio near 1 means the pipeline is not the
bottleneck.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", help="Default: resnet18.")
    parser.add_argument("--image-size", type=int, default=128, help="Default: 128.")
    parser.add_argument("--crop-size", type=int, default=256, help="Default: 256.")
    parser.add_argument("--batch-size", type=int, default=8, help="Default: 8.")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method. Default: 10.")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from genesis2d.pretrain import demo_manifest, make_optimizer, pairs, parse_args
    from genesis2d.runtime import pick_precision
    from genesis2d.unet import build_unet

    options = parse_args(["--manifest", str(demo_manifest()), "--backbone", args.backbone, "--image-size",
                          str(args.image_size), "--crop-size", str(args.crop_size), "--batch-size", str(args.batch_size),
                          "--optimizer", "adam", "--lr", "1e-3"])
    precision = pick_precision("auto")
    stream = iter(pairs(options.manifest, "train", options, training=True, first_seed=0))
    held = [next(stream) for _ in range(args.steps)]  # Also fills the shuffle buffer: steady state below.
    model = build_unet(args.backbone, (args.image_size, args.image_size, 1), "batch")
    model.compile(make_optimizer(options.optimizer, options.lr, options.momentum), loss="mse")
    model.train_on_batch(*held[0])  # Trace and warm up once.

    def rate(batches):
        start = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(*next(batches))
        return args.steps * args.batch_size / (time.perf_counter() - start)

    memory = rate(iter(held))
    pipeline = rate(stream)
    memory = max(memory, rate(iter(held)))  # Interleaved, best of two.
    device = tf.config.list_physical_devices("GPU")
    print(f"{args.backbone} U-Net, {args.image_size}x{args.image_size}, batch {args.batch_size}, {precision}, "
          f"{'GPU ' + str(len(device)) if device else str(os.cpu_count()) + ' CPU cores'}")
    print(f"from memory:        {memory:8.1f} images/s")
    print(f"from the pipeline:  {pipeline:8.1f} images/s")
    print(f"ratio pipeline/memory: {pipeline / memory:.2f}")


if __name__ == "__main__":
    main()
