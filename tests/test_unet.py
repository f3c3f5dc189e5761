import dataclasses

import numpy as np
import pytest

from genesis2d.backbones import BACKBONES, Backbone
from genesis2d.unet import ENCODER_OUTPUT, build_unet, encoder_of

SIDE = 32  # The smallest side every backbone takes: its skips are then 16, 8, 4 and 2 pixels wide.


def run_backbone_test(row, tmp_path):
    """One harness for every row of the table (after keras-hub's `run_vision_backbone_test`): shapes, dtype, no NaN,
    the row's skips and channels, a save/load round trip and mixed precision."""
    import keras

    images = np.random.default_rng(0).random((2, SIDE, SIDE, 1), dtype=np.float32)
    keras.utils.set_random_seed(0)
    model = build_unet(row.name, (SIDE, SIDE, 1))
    restored = model.predict(images, verbose=0)
    assert restored.shape == images.shape and restored.dtype == np.float32
    assert np.isfinite(restored).all() and 0 <= restored.min() and restored.max() <= 1
    # The skips, deepest first, are the strides 16, 8, 4 and 2 of the table's row.
    sides = [model.get_layer(name).output.shape[1] for name in row.skips]
    assert sides == [SIDE // 16, SIDE // 8, SIDE // 4, SIDE // 2]
    assert encoder_of(model).output.shape[1:] == (SIDE // 32, SIDE // 32, row.channels)

    path = tmp_path / f"{row.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), restored)

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = build_unet(row.name, (SIDE, SIDE, 1))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    half.set_weights(model.get_weights())
    assert half.get_layer("decoder_stage0a_conv").compute_dtype == "float16"
    half_restored = half.predict(images, verbose=0)
    assert half_restored.dtype == np.float32 and np.isfinite(half_restored).all()  # The output layer stays float32.
    np.testing.assert_allclose(half_restored, restored, atol=0.02)  # float16 activations, float32 weights.


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_of_the_table(name, tmp_path):
    run_backbone_test(BACKBONES[name], tmp_path)


def test_rows_are_frozen_and_checked():
    row = BACKBONES["resnet18"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.channels = 3
    assert all(key == row.name for key, row in BACKBONES.items())
    with pytest.raises(ValueError, match="Received: skips=\\('a',\\)"):
        Backbone("x", "y", ("a",), 1, "z.h5")


@pytest.mark.parametrize("backbone", sorted(name for name, row in BACKBONES.items() if row.application is None))
def test_batch_norm_unet_has_sm_unet_parameter_count(backbone):
    from genesis2d.sm_backend import segmentation_models

    sm = segmentation_models()

    ours = build_unet(backbone, (64, 64, 1), norm="batch")
    reference = sm.Unet(backbone, encoder_weights=None, input_shape=(64, 64, 3), classes=1)
    # sm.Unet's first convolution sees 3 channels; ours sees the grayscale slice repeated to 3, so
    # the counts agree exactly.
    assert ours.count_params() == reference.count_params()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet_shapes_and_output(backbone, norm):
    import keras

    model = build_unet(backbone, (64, 64, 1), norm=norm)
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 64, 64, 1) and y.dtype == np.float32
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    encoder = encoder_of(model)
    assert encoder.layers[-1].name == ENCODER_OUTPUT and encoder.output_shape == (None, 2, 2, encoder.output_shape[-1])
    kinds = {type(layer).__name__ for layer in model.layers if layer.name.startswith("decoder_stage")}
    expected = {"batch": "BatchNormalization", "instance": "GroupNormalization", "none": None}[norm]
    assert (expected in kinds) if expected else not ({"BatchNormalization", "GroupNormalization"} & kinds)
    if norm == "instance":
        layer = next(item for item in model.layers if isinstance(item, keras.layers.GroupNormalization))
        assert layer.groups == layer.input.shape[-1]  # One group per channel: instance norm.


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="Received: backbone='vgg99'"):
        build_unet("vgg99", (64, 64, 1))
    with pytest.raises(ValueError, match="Received: input_shape=\\(60, 64, 1\\)"):
        build_unet("vgg16", (60, 64, 1))
    with pytest.raises(ValueError, match="Received: norm='layer'"):
        build_unet("vgg16", (64, 64, 1), norm="layer")
