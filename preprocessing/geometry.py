"""Crop and resize slices: random 448 crop then resize to 224 (thesis 3.1.8-3.1.10).

A slice smaller than the crop is not padded: it is cropped at the largest square
that fits (side min(448, H, W)), at a random position in training and centred
otherwise, then resized to 224 like every other crop, so an MRNet 256x256 slice
fills the network input instead of a third of it. (The thesis zero-pads the MURA
images of its pretraining corpus that are under 224 on a side, 3.1.10; here they
are cropped at their largest square like any small slice. Downstream, `mura.data`
pads them, carrying that rule over: 4.2.4.3 says only that images become 224x224.)
numpy versions for single
slices (evaluation, tests) and a TensorFlow version for the streaming pipeline.
"""

import numpy as np

CROP_SIZE = 448  # Thesis 3.1.8: "random clip for images of size 448*448".
IMAGE_SIZE = 224  # ... "and resize these random clippings ... i.e. 224*224".


def crop_side(height, width, size=CROP_SIZE):
    """The side of the square crop of a (height, width) slice: `size`, or the shorter side when smaller."""
    return min(int(size), int(height), int(width))


def random_crop(array, size=CROP_SIZE, rng=None):
    """A random square window of a (H, W) array, of side min(size, H, W)."""
    rng = np.random.default_rng(rng)
    h, w = array.shape[:2]
    side = crop_side(h, w, size)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return array[top : top + side, left : left + side]


def center_crop(array, size=CROP_SIZE):
    """The central square window of side min(size, H, W) (for evaluation)."""
    h, w = array.shape[:2]
    side = crop_side(h, w, size)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top : top + side, left : left + side]


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
        seed: optional shape-(2,) int tensor for a stateless random crop (reproducible
            whatever the order in which parallel calls run).
    """
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.minimum(tf.minimum(h, w), crop_size)
    if training:
        size = tf.stack([side, side, 1])
        if seed is None:
            image = tf.image.random_crop(image, size)
        else:
            image = tf.image.stateless_random_crop(image, size, seed=seed)
    else:
        image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
    # Area averaging when shrinking (no aliasing), bilinear when a small slice is enlarged.
    image = tf.cond(
        side > image_size,
        lambda: tf.image.resize(image, (image_size, image_size), method="area"),
        lambda: tf.image.resize(image, (image_size, image_size), method="bilinear"),
    )
    return tf.ensure_shape(image, (image_size, image_size, 1))
