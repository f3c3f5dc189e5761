"""The Models Genesis image distortions, in 2D.

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image
Analysis", MICCAI 2019 (thesis 4.1.1). A network learns to restore the original
slice from a distorted one; the distortions and their default rates follow the
public Models Genesis code:

1. flip (rate 0.4): input and target flipped together, up to 3 times;
2. local pixel shuffling (rate 0.5): 10,000 small blocks, each permuted;
3. non-linear intensity (rate 0.9): a monotone cubic Bezier map, half the time inverted;
4. painting (rate 0.9): in-painting (probability 0.2) or out-painting.

Every random number is drawn from a `numpy.random.Generator` seeded once per
batch, so the same seed gives the same output. The block shuffle, the one step
numpy cannot vectorise, runs in a numba kernel seeded from that generator.

Example:
>>> import numpy as np
>>> images = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
>>> inputs, targets = make_pair(images, seed=1)
>>> inputs.shape, inputs.dtype.name
((4, 64, 64, 1), 'float32')
"""

import numba
import numpy as np

FLIP_RATE = 0.4
LOCAL_RATE = 0.5
NONLINEAR_RATE = 0.9
PAINT_RATE = 0.9
INPAINT_RATE = 0.2  # Otherwise out-painting.
N_BLOCKS = 10_000  # Public Models Genesis code, for 64x64x32 cubes (see `blocks_per_pixel`).
BEZIER_POINTS = 1000
LUT_SIZE = 4096


def flip(image, target, rng, rate=FLIP_RATE):
    """While a draw is below `rate` (at most 3 times) flips both along a random axis."""
    for _ in range(3):
        if rng.random() >= rate:
            break
        axis = int(rng.integers(0, 2))
        image, target = np.flip(image, axis), np.flip(target, axis)
    return image, target


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(nogil=True, cache=True, inline="always")
def _below(state, n):
    """A uniform integer in [0, n) from a splitmix64 stream kept in `state[0]`.

    numba's np.random.randint costs ~30 ns a draw and the shuffle needs ~1.2M draws
    per 224x224 image, so the stream is inlined here (multiply-shift range reduction;
    its bias, below n / 2**32, is immaterial for n <= 50,176).
    """
    z = state[0] + _GOLDEN
    state[0] = z
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.int64(((z >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@numba.njit(nogil=True, cache=True)
def _shuffle_blocks(image, n_blocks, max_h, max_w, seed):
    """Models Genesis's local pixel shuffle, computing only what the output keeps.

    Every block reads the undistorted image and overwrites its window, so a pixel
    shows the last block that covers it. The block geometries are drawn first, in
    order; then the blocks are visited from the last to the first, and each fills
    only its pixels that no later block covers, with distinct source pixels of its
    window drawn uniformly (a partial Fisher-Yates shuffle): the same distribution
    as permuting every block in full, for a few percent of the random draws.
    """
    state = np.empty(1, dtype=np.uint64)
    state[0] = np.uint64(seed)
    h, w = image.shape
    geometry = np.empty((n_blocks, 4), dtype=np.int64)
    for b in range(n_blocks):
        bh = 1 + _below(state, max_h)
        bw = 1 + _below(state, max_w)
        geometry[b, 0], geometry[b, 1] = bh, bw
        geometry[b, 2] = _below(state, h - bh + 1)
        geometry[b, 3] = _below(state, w - bw + 1)
    out = image.copy()
    covered = np.zeros((h, w), dtype=np.bool_)
    visible = np.empty(max_h * max_w, dtype=np.int64)
    order = np.empty(max_h * max_w, dtype=np.int64)
    for b in range(n_blocks - 1, -1, -1):
        bh, bw, top, left = geometry[b, 0], geometry[b, 1], geometry[b, 2], geometry[b, 3]
        m = 0
        for i in range(bh):
            for j in range(bw):
                if not covered[top + i, left + j]:
                    covered[top + i, left + j] = True
                    visible[m] = i * bw + j
                    m += 1
        if m == 0:
            continue
        size = bh * bw
        for k in range(size):
            order[k] = k
        for t in range(m):  # The first m draws of a Fisher-Yates shuffle of the window's pixels.
            r = t + _below(state, size - t)
            order[t], order[r] = order[r], order[t]
            target, source = visible[t], order[t]
            out[top + target // bw, left + target % bw] = image[top + source // bw, left + source % bw]
    return out


def blocks_per_pixel(n_blocks, side, depth=1):
    """How many shuffled blocks cover a pixel on average: n_blocks x mean block size / image size.

    Block sides are uniform in 1..side//10 (and 1..depth//10 in 3D), so at Models Genesis's
    64x64x32 cubes 10,000 blocks cover a voxel ~1.9 times, and a 224x224 slice ~26 times:
    there the whole slice is shuffled whenever the distortion fires.
    """
    mean_side = (1 + max(side // 10, 1)) / 2
    mean_depth = (1 + max(depth // 10, 1)) / 2 if depth > 1 else 1
    return n_blocks * mean_side**2 * mean_depth / (side * side * depth)


def local_pixel_shuffle(image, rng, n_blocks=N_BLOCKS):
    """Permutes the pixels of `n_blocks` random blocks (sides 1..dim//10), taken from `image`."""
    h, w = image.shape
    seed = int(rng.integers(0, 2**63 - 1))
    return _shuffle_blocks(
        np.ascontiguousarray(image, dtype=np.float32), n_blocks, max(h // 10, 1), max(w // 10, 1), seed
    )


@numba.njit(nogil=True, cache=True)
def _bezier(points, n):
    """n samples of the cubic Bezier curve of the (4, 2) control points, t evenly spaced in [0, 1]."""
    xs, ys = np.empty(n), np.empty(n)
    for k in range(n):
        t = k / (n - 1)
        a = 1.0 - t
        weights = (a * a * a, 3.0 * a * a * t, 3.0 * a * t * t, t * t * t)
        x = y = 0.0
        for p in range(4):
            x += weights[p] * points[p, 0]
            y += weights[p] * points[p, 1]
        xs[k], ys[k] = x, y
    return xs, ys


def bezier_curve(points, n=BEZIER_POINTS):
    """Samples the cubic Bezier curve of four (x, y) control points: (x, y) arrays of length n."""
    return _bezier(np.asarray(points, dtype=np.float64).reshape(4, 2), n)


@numba.njit(nogil=True, cache=True)
def _nonlinear(image, points, inverted, n, grid):
    """The image through the monotone map of the Bezier curve's sorted samples (decreasing when inverted)."""
    xs, ys = _bezier(points, n)
    xs, ys = np.sort(xs), np.sort(ys)
    if inverted:
        ys = ys[::-1].copy()
    table = np.interp(np.linspace(0.0, 1.0, grid + 1), xs, ys).astype(np.float32)
    return _apply_table(image, table, grid)


def nonlinear_intensity(image, rng):
    """Maps intensities through a Bezier curve (0,0), (u1,u2), (u3,u4), (1,1); half the time inverted.

    The curve's samples are sorted along both axes (as the public code does), which makes the map
    monotone; it is applied through a look-up table, as `apply_curve` explains, in one compiled call.
    """
    u = rng.random(4)
    inverted = rng.random() >= 0.5  # Decreasing map: inverted intensities.
    points = np.array([(0.0, 0.0), (u[0], u[1]), (u[2], u[3]), (1.0, 1.0)])
    return _nonlinear(np.ascontiguousarray(image, dtype=np.float32), points, inverted, BEZIER_POINTS, LUT_SIZE)


def apply_curve(image, xs, ys, grid=LUT_SIZE):
    """`np.interp(image, xs, ys)` for image values in [0, 1], through a uniform look-up table.

    np.interp searches the 1000 curve points for each pixel (~5 ms at 224x224); sampling
    the curve once on a uniform grid makes each pixel two reads and a blend. The
    table is piecewise linear between monotone samples, so the map stays monotone.
    """
    table = np.interp(np.linspace(0.0, 1.0, grid + 1), xs, ys).astype(np.float32)
    return _apply_table(np.ascontiguousarray(image, dtype=np.float32), table, grid)


@numba.njit(nogil=True, cache=True)
def _apply_table(image, table, grid):
    """Each pixel's value in [0, 1] mapped through `table` (grid + 1 samples), blending its two neighbours."""
    values = image.ravel()  # A contiguous image of any shape.
    out = np.empty_like(values)
    scale = np.float32(grid)
    for k in range(values.size):
        position = min(max(values[k], np.float32(0.0)), np.float32(1.0)) * scale
        index = min(np.int64(position), grid - 1)
        fraction = position - np.float32(index)
        low = table[index]
        out[k] = low + fraction * (table[index + 1] - low)
    return out.reshape(image.shape)


def _window(rng, size, low, high):
    """A random side in [low, high] and an offset at least 3 px from both borders."""
    side = int(rng.integers(low, high + 1))
    offset = int(rng.integers(3, max(size - side - 3, 3) + 1))
    return offset, side


def in_paint(image, rng, max_holes=5, continue_rate=0.95):
    """Up to `max_holes` holes of side dim//6..dim//3 filled with uniform noise."""
    h, w = image.shape
    out = image.copy()
    for hole in range(max_holes):
        if hole > 0 and rng.random() >= continue_rate:
            break
        top, bh = _window(rng, h, h // 6, h // 3)
        left, bw = _window(rng, w, w // 6, w // 3)
        out[top : top + bh, left : left + bw] = rng.random((bh, bw), dtype=np.float32)
    return out


def out_paint(image, rng, max_windows=5, continue_rate=0.95):
    """Uniform noise everywhere except up to `max_windows` windows restored from the image.

    Each window's side is dim minus a random integer in 3*dim//7..4*dim//7.
    """
    h, w = image.shape
    out = rng.random((h, w), dtype=np.float32)
    for window in range(max_windows):
        if window > 0 and rng.random() >= continue_rate:
            break
        top, bh = _window(rng, h, h - 4 * h // 7, h - 3 * h // 7)
        left, bw = _window(rng, w, w - 4 * w // 7, w - 3 * w // 7)
        out[top : top + bh, left : left + bw] = image[top : top + bh, left : left + bw]
    return out


def _check(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"images must be (N, H, W, 1). Received: images.shape={images.shape}")
    if images.shape[1] < 10 or images.shape[2] < 10:
        raise ValueError(f"images must be at least 10x10. Received: images.shape={images.shape}")
    return images.astype(np.float32, copy=False)


def make_pair(
    images,
    seed=None,
    flip_rate=FLIP_RATE,
    local_rate=LOCAL_RATE,
    nonlinear_rate=NONLINEAR_RATE,
    paint_rate=PAINT_RATE,
    inpaint_rate=INPAINT_RATE,
    n_blocks=N_BLOCKS,
):
    """Distorted inputs and restoration targets for a batch, as in Models Genesis.

    Args:
        images: float32 (N, H, W, 1) in [0, 1].
        seed: int or None. The same seed gives the same pair.
        flip_rate: float. Defaults to 0.4.
        local_rate: float. Probability of local pixel shuffling. Defaults to 0.5.
        nonlinear_rate: float. Probability of the Bezier intensity map. Defaults to 0.9.
        paint_rate: float. Probability of painting. Defaults to 0.9.
        inpaint_rate: float. Share of painting that is in-painting. Defaults to 0.2.
        n_blocks: int. Blocks shuffled by local pixel shuffling. Defaults to 10,000.

    Returns:
        (inputs, targets): float32 (N, H, W, 1) in [0, 1]. The targets are the
        images, flipped like their inputs.
    """
    images = _check(images)
    rng = np.random.default_rng(seed)
    inputs = np.empty_like(images)
    targets = np.empty_like(images)
    for n in range(len(images)):
        image, target = flip(images[n, :, :, 0], images[n, :, :, 0], rng, flip_rate)
        if rng.random() < local_rate:
            image = local_pixel_shuffle(image, rng, n_blocks)
        if rng.random() < nonlinear_rate:
            image = nonlinear_intensity(image, rng)
        if rng.random() < paint_rate:
            image = in_paint(image, rng) if rng.random() < inpaint_rate else out_paint(image, rng)
        inputs[n, :, :, 0] = image
        targets[n, :, :, 0] = target
    return inputs, targets


def distort(images, seed=None, **rates):
    """The distorted batch: `make_pair(images, seed, **rates)[0]`. Same shape, dtype and range."""
    return make_pair(images, seed, **rates)[0]


def tf_make_pair(images, seed, **rates):
    """`make_pair` inside a tf.data pipeline: (B, H, W, 1) float32 tensor and int64 seed in."""
    import tensorflow as tf

    inputs, targets = tf.numpy_function(
        lambda x, s: make_pair(x, int(s), **rates), [images, seed], [tf.float32, tf.float32], stateful=False
    )
    inputs.set_shape(images.shape)
    targets.set_shape(images.shape)
    return inputs, targets
