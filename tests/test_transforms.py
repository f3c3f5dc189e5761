import numpy as np
import pytest

from genesis2d import transforms as T


def _images(n=8, size=64, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


def test_same_seed_same_pair_and_range():
    images = _images()
    a_in, a_target = T.make_pair(images, seed=5)
    b_in, b_target = T.make_pair(images, seed=5)
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_target, b_target)
    assert not np.array_equal(a_in, T.make_pair(images, seed=6)[0])
    assert a_in.shape == images.shape and a_in.dtype == np.float32
    assert a_in.min() >= 0 and a_in.max() <= 1
    np.testing.assert_array_equal(T.distort(images, seed=5), a_in)


def test_flips_apply_to_input_and_target_at_the_models_genesis_rate():
    images = _images(3000, size=12)
    inputs, targets = T.make_pair(images, seed=1, local_rate=0, nonlinear_rate=0, paint_rate=0)
    np.testing.assert_array_equal(inputs, targets)  # Flip alone: input and target agree.
    orientations = [
        [np.array_equal(t, f(i)) for f in (lambda a: a, np.flipud, np.fliplr, lambda a: a[::-1, ::-1])]
        for t, i in zip(targets[..., 0], images[..., 0])
    ]
    assert all(any(o) for o in orientations)
    # Up to 3 flips while a draw is below 0.4, each on a random axis: the slice ends up
    # changed with probability 0.24 + 0.096 / 2 + 0.064 = 0.352 (two flips on one axis cancel).
    changed = np.mean([not o[0] for o in orientations])
    assert abs(changed - 0.352) < 0.035


def test_local_shuffle_keeps_block_pixels():
    image = np.arange(40 * 40, dtype=np.float32).reshape(40, 40) / 1600
    for seed in range(100):  # A 1x1 block, or an identity permutation, changes nothing: try another.
        out = T.local_pixel_shuffle(image, np.random.default_rng(seed), n_blocks=1)
        changed = np.argwhere(out != image)
        if len(changed):
            break
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    block_in, block_out = image[top : bottom + 1, left : right + 1], out[top : bottom + 1, left : right + 1]
    np.testing.assert_array_equal(np.sort(block_in.ravel()), np.sort(block_out.ravel()))
    assert bottom - top + 1 <= 4 and right - left + 1 <= 4  # Sides at most dim // 10.
    many = T.local_pixel_shuffle(image, np.random.default_rng(3))
    # Every output pixel comes from the original image (blocks read the undistorted image).
    assert np.isin(many, image).all()
    assert (many != image).mean() > 0.5


@pytest.mark.slow
def test_nonlinear_maps_are_monotone_half_increasing():
    ramp = np.linspace(0, 1, 200, dtype=np.float32)
    increasing = 0
    for seed in range(200):
        mapped = T.nonlinear_intensity(ramp, np.random.default_rng(seed))
        steps = np.diff(mapped)
        assert (steps >= -1e-6).all() or (steps <= 1e-6).all()
        assert mapped.min() >= 0 and mapped.max() <= 1
        increasing += steps.sum() > 0
        endpoints = (0.0, 1.0) if steps.sum() > 0 else (1.0, 0.0)
        np.testing.assert_allclose((mapped[0], mapped[-1]), endpoints, atol=1e-6)
    assert 70 < increasing < 130


def test_curve_lookup_matches_interp():
    rng = np.random.default_rng(0)
    xs, ys = T.bezier_curve([(0, 0), (0.9, 0.1), (0.2, 0.8), (1, 1)])
    xs, ys = np.sort(xs), np.sort(ys)
    image = rng.random((50, 50), dtype=np.float32)
    np.testing.assert_allclose(T.apply_curve(image, xs, ys), np.interp(image, xs, ys), atol=2e-5)


def test_painting_statistics():
    images = np.full((1, 70, 70, 1), 0.5, np.float32)
    painted = in_painted = 0
    trials = 600
    for seed in range(trials):
        out = T.make_pair(images, seed=seed, flip_rate=0, local_rate=0, nonlinear_rate=0)[0][0, :, :, 0]
        noisy = out != 0.5
        if noisy.any():
            painted += 1
            # Windows and holes keep 3 px from the border: out-painting fills all of it with
            # noise, in-painting none of it.
            border = np.concatenate(
                [noisy[:3].ravel(), noisy[-3:].ravel(), noisy[:, :3].ravel(), noisy[:, -3:].ravel()]
            )
            assert border.all() or not border.any()
            in_painted += not border.any()
    assert abs(painted / trials - 0.9) < 0.04
    assert abs(in_painted / painted - 0.2) < 0.05


def test_inpaint_hole_sizes_and_margin():
    image = np.zeros((60, 60), np.float32)
    for seed in range(50):
        out = T.in_paint(image, np.random.default_rng(seed))
        rows, cols = np.nonzero(out)
        assert rows.min() >= 3 and cols.min() >= 3 and rows.max() <= 56 and cols.max() <= 56


def test_bad_shape():
    with pytest.raises(ValueError, match="Received: images.shape"):
        T.make_pair(np.zeros((4, 64, 64)))


def _shuffle_every_block(image, n_blocks, max_h, max_w, rng):
    """The direct form of the local pixel shuffle (each block permuted in full, in order): the reference."""
    h, w = image.shape
    out = image.copy()
    for _ in range(n_blocks):
        bh, bw = 1 + rng.integers(max_h), 1 + rng.integers(max_w)
        top, left = rng.integers(h - bh + 1), rng.integers(w - bw + 1)
        block = image[top : top + bh, left : left + bw].ravel()
        out[top : top + bh, left : left + bw] = rng.permutation(block).reshape(bh, bw)
    return out


@pytest.mark.slow
def test_local_shuffle_has_the_distribution_of_permuting_every_block():
    """The kernel fills only what later blocks leave visible; its output must be distributed as the direct form's."""
    image = np.arange(20 * 20, dtype=np.float32).reshape(20, 20)
    rows, cols = np.mgrid[0:20, 0:20]
    stats = {}
    for name in ("kernel", "reference"):
        changed, shift = np.zeros((20, 20)), np.zeros((20, 20))
        for seed in range(3000):
            rng = np.random.default_rng(seed)
            if name == "kernel":
                out = T._shuffle_blocks(image, 40, 4, 4, seed)
            else:
                out = _shuffle_every_block(image, 40, 4, 4, rng)
            source = out.astype(int)
            changed += out != image
            shift += np.abs(source // 20 - rows) + np.abs(source % 20 - cols)
        stats[name] = (changed / 3000, shift / 3000)
    (c1, s1), (c2, s2) = stats["kernel"], stats["reference"]
    assert abs(c1.mean() - c2.mean()) < 0.005 and abs(s1.mean() - s2.mean()) < 0.02  # Overall rates.
    # Per pixel (borders are covered less often than the centre): the same maps, up to sampling noise.
    assert np.abs(c1 - c2).mean() < 0.01 and np.corrcoef(c1.ravel(), c2.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("side, depth", [(224, 1), (64, 32), (32, 1)])
def test_blocks_per_pixel_is_the_mean_cover_of_random_blocks(side, depth):
    """The --help density against blocks drawn as the shuffle draws them (sides 1..dim//10, inside the image)."""
    from genesis2d.transforms import blocks_per_pixel

    rng = np.random.default_rng(0)
    n = 20_000
    sides = [rng.integers(1, max(side // 10, 1) + 1, n) for _ in range(2)]
    depths = rng.integers(1, max(depth // 10, 1) + 1, n) if depth > 1 else np.ones(n)
    measured = float(np.sum(sides[0] * sides[1] * depths)) / (side * side * depth)
    assert blocks_per_pixel(n, side, depth) == pytest.approx(measured, rel=0.02)
    assert blocks_per_pixel(10_000, 224) == pytest.approx(26.36, abs=0.01)  # The "~26 cover a pixel".
