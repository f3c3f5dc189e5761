import numpy as np
import pytest

from preprocessing.geometry import center_crop, crop_and_resize, pad_to, random_crop, tf_crop_and_resize
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


def test_pad_crop_resize():
    image = np.arange(300 * 500, dtype=np.float32).reshape(300, 500)
    padded = pad_to(image, 448)
    assert padded.shape == (448, 500)
    np.testing.assert_array_equal(padded[74:374], image)  # (448 - 300) // 2 = 74 rows above.
    assert not padded[:74].any() and not padded[374:].any()
    crop = random_crop(image, 448, rng=0)
    assert crop.shape == (448, 448)
    centre = center_crop(image, 448)
    np.testing.assert_array_equal(centre[74:374], image[:, 26:474])
    out = crop_and_resize(image, 448, 224, rng=1)
    assert out.shape == (224, 224) and out.dtype == np.float32


def test_resize_of_a_constant_stays_constant():
    out = crop_and_resize(np.full((600, 600), 0.25, np.float32), 448, 224, rng=0)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_tf_centre_crop_matches_numpy():
    import tensorflow as tf

    image = np.random.default_rng(0).random((70, 90), dtype=np.float32)
    expected = center_crop(image, 64)
    got = tf_crop_and_resize(tf.constant(image[..., None]), 64, 64, training=False).numpy()[..., 0]
    np.testing.assert_allclose(got, expected)
    small = tf_crop_and_resize(tf.constant(image[:40, :50, None]), 64, 32, training=True).numpy()
    assert small.shape == (32, 32, 1)
