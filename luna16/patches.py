"""LUNA16 candidate patches: world coordinates to voxels, 2D views around each candidate, augmentation.

Candidates in `candidates_V2.csv` are world coordinates (x, y, z) in mm. A scan's
voxel (i, j, k) lies at `origin + direction @ ((i, j, k) * spacing)`, so the
inverse uses the direction matrix as well as origin and spacing (code that
ignores direction is wrong on flipped scans).

Patches are sampled on a grid in world space, oriented along the patient axes
(axial: rows posterior, columns left; coronal and sagittal: rows inferior), so
they look alike whatever the scan's direction and slice thickness; outside the
scan they read air (-1000 HU). Values are then windowed to [0, 1] (thesis 4.2.1.4).
"""

import numpy as np

from preprocessing.normalize import hu_window

PLANES = ("axial", "coronal", "sagittal")
AIR_HU = -1000.0
# Row and column directions of each view, in patient (LPS) world axes.
_VIEW_AXES = {
    "axial": (np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])),
    "coronal": (np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])),
    "sagittal": (np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])),
}


def _direction(direction):
    return np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)


def world_to_voxel(xyz, origin, spacing, direction=None):
    """Continuous voxel indices (z, y, x) of world points (x, y, z) in mm.

    Args:
        xyz: (..., 3) world coordinates, as in the LUNA16 csv files.
        origin: (3,) world position of voxel (0, 0, 0) (`meta['origin']`).
        spacing: (3,) mm between voxels along x, y, z (`meta['spacing']`).
        direction: 9 numbers or (3, 3), row-major; columns are the world directions
            of the x, y, z index axes (`meta['direction']`). Defaults to identity.

    Returns:
        float array (..., 3) of (z, y, x) indices into the (z, y, x) array.
    """
    xyz = np.asarray(xyz, dtype=float)
    offset = xyz - np.asarray(origin, dtype=float)
    ijk = offset @ np.linalg.inv(_direction(direction)).T / np.asarray(spacing, dtype=float)
    return ijk[..., ::-1]


def voxel_to_world(zyx, origin, spacing, direction=None):
    """World (x, y, z) of continuous voxel indices (z, y, x); the inverse of `world_to_voxel`."""
    ijk = np.asarray(zyx, dtype=float)[..., ::-1] * np.asarray(spacing, dtype=float)
    return ijk @ _direction(direction).T + np.asarray(origin, dtype=float)


def _sample(volume, meta, points):
    """Trilinear HU values at world points (..., 3); air outside the scan."""
    from scipy.ndimage import map_coordinates

    zyx = world_to_voxel(points, meta["origin"], meta["spacing"], meta.get("direction"))
    flat = zyx.reshape(-1, 3).T
    values = map_coordinates(volume, flat, order=1, mode="constant", cval=AIR_HU, prefilter=False)
    return values.reshape(points.shape[:-1]).astype(np.float32)


def view_grid(center, size, pixel_mm, zoom=1.0, angle_deg=0.0):
    """World points (3 views, size, size, 3) of the three views centred on `center`."""
    offsets = (np.arange(size) - (size - 1) / 2.0) * pixel_mm / zoom
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    theta = np.deg2rad(angle_deg)
    rows, cols = rows * np.cos(theta) - cols * np.sin(theta), rows * np.sin(theta) + cols * np.cos(theta)
    grids = [
        np.asarray(center, float) + rows[..., None] * r + cols[..., None] * c
        for r, c in (_VIEW_AXES[p] for p in PLANES)
    ]
    return np.stack(grids)


def extract(volume, meta, xyz, size=64, pixel_mm=None, method="planes", rng=None):
    """The axial, coronal and sagittal patches (3, size, size) around a world point, windowed to [0, 1].

    Args:
        volume: float32 (z, y, x) in HU.
        meta: the reader's meta (origin, spacing, direction).
        xyz: world (x, y, z) mm of the candidate.
        size: int. Patch side in pixels. Defaults to 64 (thesis 4.2.1.2).
        pixel_mm: float. Sampling step in mm. Defaults to the scan's in-plane spacing,
            so the axial view is the scan's own pixels.
        method: 'planes' (thesis method 1: three orthogonal views through the centre) or
            'cube' (method 2: a size^3 cube, from which three views are taken at random
            offsets within size/8 of its centre).
        rng: numpy Generator for the 'cube' offsets.
    """
    pixel_mm = float(pixel_mm or meta["spacing"][0])
    center = np.asarray(xyz, dtype=float)
    if method == "cube":
        rng = np.random.default_rng(rng)
        shift = rng.integers(-(size // 8), size // 8 + 1, size=3) * pixel_mm
        # Each view passes through the cube at its own offset along its normal.
        normals = (np.array([0, 0, 1.0]), np.array([0, 1.0, 0]), np.array([1.0, 0, 0]))
        grids = [view_grid(center + s * n, size, pixel_mm)[i] for i, (s, n) in enumerate(zip(shift, normals))]
        return hu_window(_sample(volume, meta, np.stack(grids)))
    if method != "planes":
        raise ValueError(f"method must be 'planes' or 'cube'. Received: method={method!r}")
    return hu_window(_sample(volume, meta, view_grid(center, size, pixel_mm)))


def extract_cube(volume, meta, xyz, size=64, pixel_mm=None):
    """A (size, size, size) cube (z, y, x order along the world axes) around a point, windowed."""
    pixel_mm = float(pixel_mm or meta["spacing"][0])
    offsets = (np.arange(size) - (size - 1) / 2.0) * pixel_mm
    z, y, x = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    points = np.asarray(xyz, float) + np.stack([x, y, z], axis=-1)
    return hu_window(_sample(volume, meta, points))


def augment(volume, meta, xyz, rng, size=64, pixel_mm=None, zoom=(0.9, 1.1), rotation_deg=20.0, shift_mm=1.0):
    """One augmented copy of a positive candidate's three views (thesis 4.2.1.3).

    Random zoom in `zoom`, rotation in +-`rotation_deg` within each view, a shift of
    up to +-`shift_mm` mm along each world axis (through the spacing into voxels,
    by sampling in world space), and horizontal and vertical flips (each p=0.5).
    """
    pixel_mm = float(pixel_mm or meta["spacing"][0])
    factor = rng.uniform(*zoom)
    angle = rng.uniform(-rotation_deg, rotation_deg)
    center = np.asarray(xyz, float) + rng.uniform(-shift_mm, shift_mm, size=3)
    views = hu_window(_sample(volume, meta, view_grid(center, size, pixel_mm, factor, angle)))
    if rng.random() < 0.5:
        views = views[:, :, ::-1]
    if rng.random() < 0.5:
        views = views[:, ::-1, :]
    return np.ascontiguousarray(views)


def extract_scan(volume, meta, candidates, size=64, pixel_mm=None, method="planes", positive_copies=8, rng=None):
    """All candidates of one scan, read once: (patches (N, 3, S, S), augmented (M, 3, S, S), their rows).

    Args:
        candidates: array (N, 4) of x, y, z, class.
        positive_copies: int. Each positive appears this many times in training: the
            original and `positive_copies - 1` augmented copies (thesis: 8x).

    Returns:
        (patches, augmented, augmented_rows): float16 arrays and, for each augmented
        copy, the index of its candidate in `candidates`.
    """
    rng = np.random.default_rng(rng)
    candidates = np.asarray(candidates, dtype=float).reshape(-1, 4)
    patches = np.empty((len(candidates), 3, size, size), np.float16)
    augmented, rows = [], []
    for n, (x, y, z, label) in enumerate(candidates):
        patches[n] = extract(volume, meta, (x, y, z), size, pixel_mm, method, rng)
        if label == 1:
            for _ in range(positive_copies - 1):
                augmented.append(augment(volume, meta, (x, y, z), rng, size, pixel_mm).astype(np.float16))
                rows.append(n)
    augmented = np.stack(augmented) if augmented else np.empty((0, 3, size, size), np.float16)
    return patches, augmented, np.asarray(rows, dtype=np.int64)
