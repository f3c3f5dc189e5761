"""Grad-CAM peaks where the signal is; galleries pick the right cases."""

import numpy as np
import pytest

from transfer.saliency import CATEGORIES, confident_cases, gallery, grad_cam


def hand_made_classifier():
    """The thesis head (transfer.finetune.build_classifier) on a tiny encoder that responds to brightness."""
    import keras

    from transfer.finetune import build_classifier

    image = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, kernel_initializer="ones", name="full_grid")(image)
    x = keras.layers.AveragePooling2D(8)(x)  # An 8x8 map, as a backbone's deep block at stride 8.
    encoder = keras.Model(image, keras.layers.Activation("linear", name="encoder_output")(x), name="encoder")
    model = build_classifier(encoder, units=4, dropout=0.5)
    hidden, output = model.get_layer("hidden"), model.get_layer("probability")
    hidden.set_weights([np.full((4, 4), 0.5, np.float32), np.zeros(4, np.float32)])
    output.set_weights([np.ones((4, 1), np.float32), np.full(1, -2.0, np.float32)])
    return model


def test_grad_cam_peaks_where_the_signal_is():
    model = hand_made_classifier()
    images = np.zeros((3, 64, 64, 1), np.float32)
    places = [(8, 40), (40, 8), (48, 48)]
    for image, (top, left) in zip(images, places):
        image[top : top + 12, left : left + 12] = 1.0  # A bright square; the rest is empty.
    maps = grad_cam(model, images)
    assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    finer = grad_cam(model, images, block="full_grid")  # An earlier block: the gradient flows through the rest.
    for cam, (top, left) in zip(finer, places):
        assert cam[top : top + 12, left : left + 12].min() > 0.4 and cam[(top + 32) % 64, (left + 32) % 64] == 0
    for cam, (top, left) in zip(maps, places):
        row, column = np.unravel_index(np.argmax(cam), cam.shape)
        assert top - 4 <= row < top + 16 and left - 4 <= column < left + 16
        inside = cam[top : top + 12, left : left + 12].mean()
        far = cam[(top + 32) % 64 : (top + 32) % 64 + 12, (left + 32) % 64 : (left + 32) % 64 + 12].mean()
        assert inside > 0.4 and far < 0.05


def test_a_linear_probes_class_activation_map_peaks_where_the_signal_is():
    """A probe trained to tell slices with a bright square from empty ones points at the square."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transfer.probe import LinearProbe

    encoder = hand_made_classifier().get_layer("encoder")
    rng = np.random.default_rng(0)
    images = 0.05 * rng.random((40, 64, 64, 1)).astype(np.float32)
    labels = np.arange(40) % 2
    for image, label in zip(images, labels):
        if label:
            top, left = rng.integers(0, 52, size=2)
            image[top : top + 12, left : left + 12] = 1.0
    pooled = encoder.predict(images, verbose=0).mean(axis=(1, 2))
    probe = LinearProbe(encoder, make_pipeline(StandardScaler(), LogisticRegression()).fit(pooled, labels), {})
    test = np.zeros((1, 64, 64, 1), np.float32)
    test[0, 40:52, 8:20] = 1.0
    cam = probe.saliency(test)[0]
    row, column = np.unravel_index(np.argmax(cam), cam.shape)
    assert 36 <= row < 56 and 4 <= column < 24 and cam[:24, 32:].mean() < 0.05


def test_the_explained_block_keeps_a_grid_that_can_localise():
    from genesis2d.backbones import BACKBONES
    from transfer.saliency import saliency_block

    skips = BACKBONES["resnet18"].skips  # Strides 16, 8, 4, 2.
    assert saliency_block(skips, 224) is None  # 7x7: the encoder's last block, as Grad-CAM is usually drawn.
    assert saliency_block(skips, 128) is None
    assert saliency_block(skips, 64) == skips[0]  # 2x2 at stride 32; 4x4 at stride 16.
    assert saliency_block(skips, 32) == skips[1]


def test_confident_cases_are_the_most_confident_of_each_kind(tmp_path):
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    probabilities = np.array([0.9, 0.6, 0.2, 0.8, 0.55, 0.1, 0.05, 0.3])
    chosen = confident_cases(labels, probabilities, k=2)
    assert chosen["true positives"].tolist() == [0, 1]
    assert chosen["false positives"].tolist() == [3, 4]
    assert chosen["false negatives"].tolist() == [6, 2]
    images = np.random.default_rng(0).random((8, 3, 16, 16))
    drawn = gallery(
        tmp_path / "g.png", images, images, labels, probabilities, k=2, view_names=("axial", "coronal", "sagittal")
    )
    assert set(drawn) == set(CATEGORIES) and (tmp_path / "g.png").stat().st_size > 1000
