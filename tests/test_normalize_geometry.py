import numpy as np
import pytest

from preprocessing.geometry import center_crop, crop_and_resize, random_crop, tf_crop_and_resize
from preprocessing.normalize import hu_window, normalize_slice


def test_ct_window_is_the_thesis_formula():
    hu = np.array([[-3000, -1000, 200, 1400, 3000, np.nan]], dtype=np.float32)
    out = normalize_slice(hu, "CT")
    expected = np.clip((np.nan_to_num(hu, nan=-1000) + 1000) / 2400, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-7)
    assert out.dtype == np.float32
    np.testing.assert_allclose(hu_window([0.0], -100, 100), [0.5])
    with pytest.raises(ValueError, match="Received: hu_min=1"):
        hu_window([0.0], 1, 0)


def test_mr_divides_each_slice_by_its_own_maximum():
    slice_ = np.array([[0, 50, 200], [100, 25, 0]], dtype=np.float32)
    np.testing.assert_allclose(normalize_slice(slice_, "MR"), slice_ / 200)
    zeros = normalize_slice(np.zeros((3, 3)), "MR")
    assert not zeros.any() and not np.isnan(zeros).any()


@pytest.mark.parametrize("bit_depth,peak", [(8, 255), (16, 65535), (12, 4095), (None, 255)])
def test_xr_divides_by_the_bit_depth_maximum(bit_depth, peak):
    slice_ = np.array([[0, 100, 255]], dtype=np.float32)
    np.testing.assert_allclose(normalize_slice(slice_, "XR", bit_depth), slice_ / peak, rtol=1e-6)


def test_xr_without_bit_depth_infers_16_bit():
    np.testing.assert_allclose(normalize_slice(np.array([[65535.0, 0]]), "XR"), [[1.0, 0.0]])


def test_unknown_modality():
    with pytest.raises(ValueError, match="Received: modality='PET'"):
        normalize_slice(np.zeros((2, 2)), "PET")


def test_small_slices_are_cropped_at_the_largest_square_never_padded():
    image = np.arange(300 * 500, dtype=np.float32).reshape(300, 500) + 1
    for seed in range(5):
        crop = random_crop(image, 448, rng=seed)
        assert crop.shape == (300, 300) and crop.min() > 0  # Content only, no zero padding.
        left = int(crop[0, 0] - 1)  # Its position in the row.
        np.testing.assert_array_equal(crop, image[:, left : left + 300])
    np.testing.assert_array_equal(center_crop(image, 448), image[:, 100:400])  # (500 - 300) // 2 = 100.
    big = np.arange(600 * 700, dtype=np.float32).reshape(600, 700)
    np.testing.assert_array_equal(center_crop(big, 448), big[76:524, 126:574])
    out = crop_and_resize(image, 448, 224, rng=1)
    assert out.shape == (224, 224) and out.dtype == np.float32 and out.min() > 0


def test_resize_of_a_constant_stays_constant():
    out = crop_and_resize(np.full((600, 600), 0.25, np.float32), 448, 224, rng=0)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_tf_centre_crop_matches_numpy():
    import tensorflow as tf

    image = np.random.default_rng(0).random((70, 90), dtype=np.float32)
    expected = center_crop(image, 64)
    got = tf_crop_and_resize(tf.constant(image[..., None]), 64, 64, training=False).numpy()[..., 0]
    np.testing.assert_allclose(got, expected)
    small = tf_crop_and_resize(tf.constant(image[:40, :50, None]), 64, 32, training=True, seed=[1, 2]).numpy()
    assert small.shape == (32, 32, 1) and small.min() > 0  # A 40x40 crop of content, enlarged: no padding.
    centre = tf_crop_and_resize(tf.constant(image[:40, :50, None]), 64, 40, training=False).numpy()[..., 0]
    np.testing.assert_allclose(centre, center_crop(image[:40, :50], 64))
