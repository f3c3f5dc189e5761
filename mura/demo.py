"""The demo MURA-v1.1 tree, in the layout and formats of the real data set.

    python -m study.demo_data       # writes it, with the other demo trees

`MURA-v1.1/{train,valid}/XR_*/patientNNNNN/studyN_{positive,negative}/imageN.png`
with the header-less `*_image_paths.csv` and `*_labeled_studies.csv`; abnormal
studies show a visible lesion. Synthetic phantoms, not medical data.
"""

from pathlib import Path

import pandas as pd

from preprocessing.demo import default_demo_dir, ensure_part, write_png, xray_phantom

MURA_PARTS = ("XR_SHOULDER", "XR_HAND")


def write_mura(out, rng, patients=(50, 30)):
    """A MURA-v1.1 tree with its four header-less csv files.

    Args:
        patients: (train, valid) patients per body part.
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
                        pixels = xray_phantom(height, width, rng, lesion=positive)
                        write_png(out / study_dir / f"image{image}.png", pixels, rgb=bool(rng.random() < 0.2))
                        image_rows.append(study_dir + f"image{image}.png")
                    study_rows.append((study_dir, int(positive)))
        pd.DataFrame(image_rows).to_csv(root / f"{split}_image_paths.csv", header=False, index=False)
        pd.DataFrame(study_rows).to_csv(root / f"{split}_labeled_studies.csv", header=False, index=False)


def ensure_demo(out=None, seed=0):
    """The folder holding the demo MURA-v1.1 (demo_data/ by default), written on first use."""
    out = Path(out or default_demo_dir())
    ensure_part(out, "MURA-v1.1", lambda folder, rng: write_mura(folder.parent, rng), seed)
    return out
