"""Draws the Models Genesis distortions of one slice at 224x224 beside it: docs/distortions_224.png.

    python tools/draw_distortions.py [--out docs/distortions_224.png] [--seed 0]

The slice is the demo corpus's first validation CT slice (written on first use), centre
cropped and resized as pretraining feeds it. Local pixel shuffling is drawn twice: with
the public Models Genesis count of 10,000 blocks (~26 blocks cover each pixel at 224) and
with the count that gives Models Genesis's own density at 64x64x32 (~1.9 per voxel).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

import numpy as np  # noqa: E402

SIDE = 224


def demo_slice():
    """The demo corpus's first validation CT slice, as pretraining sees it: float32 (224, 224) in [0, 1]."""
    from genesis2d.data import demo_manifest
    from preprocessing.pipeline import load_manifest, make_dataset

    frame = load_manifest(demo_manifest(), "val")
    frame = frame[frame["modality"] == "CT"].head(1)
    batch = next(iter(make_dataset(frame, "val", batch_size=1, crop_size=448, image_size=SIDE, training=False)))
    return batch.numpy()[0, :, :, 0]


def panels(image, seed):
    """[(title, image)]: the input and each distortion applied alone, seeded."""
    from genesis2d import transforms as t

    same_density = int(
        round(t.N_BLOCKS * t.blocks_per_pixel(t.N_BLOCKS, 64, 32) / t.blocks_per_pixel(t.N_BLOCKS, SIDE))
    )

    def rng():
        return np.random.default_rng(seed)

    return [
        ("input", image),
        (
            f"local shuffle, {t.N_BLOCKS:,} blocks\n(~{t.blocks_per_pixel(t.N_BLOCKS, SIDE):.0f} per pixel)",
            t.local_pixel_shuffle(image, rng(), t.N_BLOCKS),
        ),
        (
            f"local shuffle, {same_density:,} blocks\n(~{t.blocks_per_pixel(same_density, SIDE):.1f} per pixel, "
            "Models Genesis's density)",
            t.local_pixel_shuffle(image, rng(), same_density),
        ),
        ("non-linear intensity", t.nonlinear_intensity(image, rng())),
        ("in-painting", t.in_paint(image, rng())),
        ("out-painting", t.out_paint(image, rng())),
    ]


def draw(path, seed=0):
    from plumbing.figures import pyplot, save_figure

    plt = pyplot()
    shown = panels(demo_slice(), seed)
    figure, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.2))
    for axis, (title, image) in zip(axes, shown):
        axis.imshow(image, cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=8)
        axis.set_axis_off()
    figure.suptitle(
        f"Models Genesis distortions at {SIDE}x{SIDE} (each alone; rates and counts: genesis2d/train.py --help)"
    )
    figure.tight_layout()
    save_figure(path, figure, dpi=100)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "docs" / "distortions_224.png"),
        help="PNG to write. Default: docs/distortions_224.png.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the distortions. Default: 0.")
    args = parser.parse_args(argv)
    print(draw(args.out, args.seed))


if __name__ == "__main__":
    main()
