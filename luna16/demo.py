"""The demo LUNA16 tree, in the layout and formats of the real data set.

    python -m study.demo_data       # writes it, with the other demo trees

`subset0`..`subset9` of `.mhd`/`.raw` CT scans with non-trivial origin and
spacing, `candidates_V2.csv` and `annotations.csv`: nodules at known world
coordinates among vessel-like negatives. Synthetic phantoms, not medical data.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.demo import ct_phantom, default_demo_dir, ensure_part, write_itk

LUNA_SUBSETS = 10


def write_luna16(out, rng, scans_per_subset=2, shape=(40, 96, 96)):
    """A LUNA16 tree: subsets of .mhd/.raw scans, candidates_V2.csv and annotations.csv.

    Each scan holds 2-3 spherical nodules (radius 3-5 mm) in the lungs and a few
    vessel-like tubes. Candidates: one or two per nodule (class 1, within 1 mm of its
    centre) and 120 negatives (class 0) on vessels, lung and soft tissue.
    """
    out = Path(out)
    candidates, annotations = [], []
    for subset in range(LUNA_SUBSETS):
        for s in range(scans_per_subset):
            uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{subset:02d}{s:02d}{rng.integers(10**9, 10**10)}"
            spacing = (round(rng.uniform(0.6, 0.85), 4), None, round(rng.choice([1.25, 1.8, 2.5]), 4))
            spacing = (spacing[0], spacing[0], spacing[2])  # In-plane spacing is square in LUNA16.
            origin = np.array([rng.uniform(-200, -150), rng.uniform(-220, -170), rng.uniform(-380, -250)])
            nz, ny, nx = shape
            extent = np.array([nx * spacing[0], ny * spacing[1], nz * spacing[2]])  # mm, (x, y, z)
            last = np.array([(nx - 1) * spacing[0], (ny - 1) * spacing[1], (nz - 1) * spacing[2]])

            def inside(offset):  # Candidates lie inside their scan, as LUNA16's do.
                return origin + np.clip(offset, 0.0, last)

            def lung_point(margin):
                side = rng.choice([-1, 1])
                return np.array(
                    [
                        extent[0] * (0.5 + side * 0.2) + rng.uniform(-0.06, 0.06) * extent[0],
                        extent[1] * rng.uniform(0.38, 0.62),
                        rng.uniform(margin, extent[2] - margin),
                    ]
                )

            nodules = [(lung_point(8), rng.uniform(3.0, 5.0)) for _ in range(rng.integers(2, 4))]
            vessels = []
            for _ in range(4):
                a, b = lung_point(2), lung_point(2)
                vessels.append((a, b, rng.uniform(1.0, 1.6)))
            volume = ct_phantom(shape, spacing, rng, nodules=nodules, vessels=vessels)
            write_itk(out / f"subset{subset}" / f"{uid}.mhd", volume, spacing, origin)
            for center, radius in nodules:
                world = origin + center
                annotations.append((uid, *world, 2 * radius))
                for _ in range(rng.integers(1, 3)):
                    jitter = rng.uniform(-1, 1, size=3)
                    candidates.append((uid, *inside(center + jitter), 1))
            for a, b, _ in vessels:
                for t in rng.uniform(0.05, 0.95, size=10):
                    candidates.append((uid, *inside(a + t * (b - a)), 0))
            for _ in range(50):
                candidates.append((uid, *inside(lung_point(2)), 0))
            for _ in range(30):
                point = np.array(
                    [
                        extent[0] * rng.uniform(0.15, 0.85),
                        extent[1] * rng.uniform(0.15, 0.85),
                        rng.uniform(0, extent[2]),
                    ]
                )
                candidates.append((uid, *inside(point), 0))
    columns = ["seriesuid", "coordX", "coordY", "coordZ"]
    pd.DataFrame(candidates, columns=columns + ["class"]).to_csv(out / "candidates_V2.csv", index=False)
    pd.DataFrame(annotations, columns=columns + ["diameter_mm"]).to_csv(out / "annotations.csv", index=False)


def ensure_demo(out=None, seed=0):
    """The demo LUNA16 folder (`out/LUNA16`, demo_data/ by default), written on first use."""
    return ensure_part(out or default_demo_dir(), "LUNA16", write_luna16, seed)
