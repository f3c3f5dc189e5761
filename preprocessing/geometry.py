"""Crop and resize slices: random 448 crop then resize to 224 (thesis 3.1.8-3.1.10).

numpy versions for single slices (evaluation, tests) and a TensorFlow version for
the streaming pipeline; both pad a side shorter than the crop with zeros, centred.
"""

import numpy as np

CROP_SIZE = 448  # Thesis 3.1.8: "random clip for images of size 448*448".
IMAGE_SIZE = 224  # ... "and resize these random clippings ... i.e. 224*224".


def pad_to(array, size):
    """Zero-pads a (H, W) array, centred, so that both sides are at least `size`."""
    h, w = array.shape[:2]
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if not pad_h and not pad_w:
        return array
    pads = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads)


def random_crop(array, size=CROP_SIZE, rng=None):
    """A random `size` x `size` window of a (H, W) array, zero-padded first when smaller."""
    rng = np.random.default_rng(rng)
    array = pad_to(array, size)
    h, w = array.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return array[top : top + size, left : left + size]


def center_crop(array, size=CROP_SIZE):
    """The central `size` x `size` window (for evaluation), zero-padded first when smaller."""
    array = pad_to(array, size)
    h, w = array.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return array[top : top + size, left : left + size]


def resize(array, size=IMAGE_SIZE):
    """Resizes a (H, W) float array to `size` x `size` (area averaging when shrinking)."""
    import cv2

    array = np.asarray(array, dtype=np.float32)
    if array.shape[:2] == (size, size):
        return array
    shrinking = array.shape[0] > size or array.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interpolation)


def crop_and_resize(array, crop_size=CROP_SIZE, image_size=IMAGE_SIZE, rng=None, training=True):
    """Random (training) or centre (evaluation) crop, then resize; float32 (image_size, image_size)."""
    crop = random_crop(array, crop_size, rng) if training else center_crop(array, crop_size)
    return resize(crop, image_size)


def tf_crop_and_resize(image, crop_size=CROP_SIZE, image_size=IMAGE_SIZE, training=True, seed=None):
    """TensorFlow twin of `crop_and_resize` for a (H, W, 1) float32 tensor in a tf.data map.

    Args:
        image: tf.Tensor (H, W, 1).
        seed: optional shape-(2,) int tensor for a stateless random crop.
    """
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    target_h, target_w = tf.maximum(h, crop_size), tf.maximum(w, crop_size)
    image = tf.image.pad_to_bounding_box(image, (target_h - h) // 2, (target_w - w) // 2, target_h, target_w)
    if training:
        if seed is None:
            image = tf.image.random_crop(image, (crop_size, crop_size, 1))
        else:
            image = tf.image.stateless_random_crop(image, (crop_size, crop_size, 1), seed=seed)
    else:
        top, left = (target_h - crop_size) // 2, (target_w - crop_size) // 2
        image = tf.image.crop_to_bounding_box(image, top, left, crop_size, crop_size)
    if crop_size != image_size:
        image = tf.image.resize(image, (image_size, image_size), method="area" if image_size < crop_size else "bilinear")
    return tf.ensure_shape(image, (image_size, image_size, 1))
