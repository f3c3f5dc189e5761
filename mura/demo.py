"""The demo MURA-v1.1 tree, in the layout and formats of the real data set.

    python -m study.demo_data       # writes it, with the other demo trees

`MURA-v1.1/{train,valid}/XR_*/patientNNNNN/studyN_{positive,negative}/imageN.png`
with the header-less `*_image_paths.csv` and `*_labeled_studies.csv`; abnormal
studies show a lesion (a bright lump and a dark fracture line) whose contrast is
a parameter of the data, `LESION_CONTRAST` by default. Synthetic phantoms, not
medical data.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.demo import DEMO_VERSION, default_demo_dir, ensure_part, write_png, xray_phantom

MURA_PARTS = ("XR_SHOULDER", "XR_HAND")
MURA_VERSION = 1  # Bump when the lesion's drawing changes, so old demo trees are rewritten.
# The median lesion strength, as a fraction of the full lesion (a white lump, a black line). At full strength every
# initialisation reached an image AUC of 0.99-1.0 on 25%, 50% and 100% of the labels, and the demo study's
# label-efficiency curve was flat. At 0.55 (mura/configs/demo.yaml, resnet18, 2 runs, seed 0) training from scratch
# reached 0.82, 0.88 and 0.81 on 25%, 50% and 100% of the labels, genesis 0.69, 0.56 and 0.76; at 0.5 every
# cell was at 0.64-0.69, at 0.6 scratch at 0.90-0.91, at 0.7 every cell at 0.92-0.97.
LESION_CONTRAST = 0.55


def add_lesion(image, rng, contrast=LESION_CONTRAST):
    """The phantom `image` with an abnormality: a bright lump and a dark fracture line.

    The lesion's strength is drawn uniformly from [contrast / 2, 3 contrast / 2] (at most 1),
    so abnormalities range from faint to plain and the AUC says how faint a lesion a model
    finds, rather than whether it found the one lesion at all. At strength s each pixel of
    the lesion moves the fraction s of the way from the anatomy to the full lesion (lump
    1.0, line 0.02), so the noise and the bone beneath show through.

    Args:
        image: float array (height, width) in [0, 1], an `xray_phantom` without lesion.
        rng: numpy Generator. Its draws do not depend on `contrast`, so one seed gives the
            same lesion, scaled, at every contrast.
        contrast: float in [0, 1]. The median strength. Defaults to `LESION_CONTRAST`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> add_lesion(xray_phantom(160, 140, rng), rng, contrast=0.5).shape
    (160, 140)
    """
    if not 0 <= contrast <= 1:
        raise ValueError(f"contrast must be in [0, 1]. Received: contrast={contrast}")
    height, width = image.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    radius = 0.09 * min(height, width)
    line = np.abs((y - cy) - np.tan(rng.uniform(-1, 1)) * (x - cx)) <= 0.015 * height
    full = image.copy()
    full[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = 1.0
    full[line & (image > 0.2)] = 0.02  # Across soft tissue and bone; the background is below 0.16.
    strength = min(1.0, contrast * rng.uniform(0.5, 1.5))
    return (image + strength * (full - image)).astype(np.float32)


def write_mura(out, rng, patients=(50, 30), lesion_contrast=LESION_CONTRAST):
    """A MURA-v1.1 tree with its four header-less csv files.

    Args:
        patients: (train, valid) patients per body part.
        lesion_contrast: float in [0, 1]. The median strength of the abnormal images'
            lesions (see `add_lesion`); a change of it is a change of the data. Defaults to
            `LESION_CONTRAST`.
    """
    out = Path(out)
    root = out / "MURA-v1.1"
    patient_number = 0
    for split, count in zip(("train", "valid"), patients):
        image_rows, study_rows = [], []
        for part in MURA_PARTS:
            for _ in range(count):
                patient_number += 1
                for study in range(1, rng.integers(1, 3) + 1):
                    positive = bool(rng.random() < 0.5)
                    label = "positive" if positive else "negative"
                    study_dir = f"MURA-v1.1/{split}/{part}/patient{patient_number:05d}/study{study}_{label}/"
                    for image in range(1, rng.integers(1, 4) + 1):
                        # Some images are smaller than 224 on a side (zero-padded later) and some RGB.
                        height, width = int(rng.integers(150, 320)), int(rng.integers(120, 300))
                        pixels = xray_phantom(height, width, rng)
                        if positive:
                            pixels = add_lesion(pixels, rng, lesion_contrast)
                        write_png(out / study_dir / f"image{image}.png", pixels, rgb=bool(rng.random() < 0.2))
                        image_rows.append(study_dir + f"image{image}.png")
                    study_rows.append((study_dir, int(positive)))
        pd.DataFrame(image_rows).to_csv(root / f"{split}_image_paths.csv", header=False, index=False)
        pd.DataFrame(study_rows).to_csv(root / f"{split}_labeled_studies.csv", header=False, index=False)


def ensure_demo(out=None, seed=0, lesion_contrast=LESION_CONTRAST):
    """The folder holding the demo MURA-v1.1 (demo_data/ by default), written on first use.

    A tree is kept only if it was completed with this generator, seed and `lesion_contrast`
    (all three in its completion marker); otherwise it is rewritten, so a tree of another
    contrast or of an earlier generator is never reused.
    """
    out = Path(out or default_demo_dir())
    version = f"{DEMO_VERSION}.{MURA_VERSION} lesion_contrast={lesion_contrast!r}"

    def write(folder, rng):
        write_mura(folder.parent, rng, lesion_contrast=lesion_contrast)

    ensure_part(out, "MURA-v1.1", write, seed, version)
    return out
