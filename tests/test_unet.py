import numpy as np
import pytest

from genesis2d.unet import BACKBONES, ENCODER_OUTPUT, build_unet, encoder_of


@pytest.mark.parametrize("backbone", sorted(b for b, entry in BACKBONES.items() if "application" not in entry))
def test_batch_norm_unet_has_sm_unet_parameter_count(backbone):
    import segmentation_models as sm

    ours = build_unet(backbone, (64, 64, 1), norm="batch")
    reference = sm.Unet(backbone, encoder_weights=None, input_shape=(64, 64, 3), classes=1)
    # sm.Unet's first convolution sees 3 channels; ours sees the grayscale slice repeated to 3, so
    # the counts agree exactly.
    assert ours.count_params() == reference.count_params()


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
        layer = next(l for l in model.layers if isinstance(l, keras.layers.GroupNormalization))
        assert layer.groups == layer.input.shape[-1]  # One group per channel: instance norm.


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="Received: backbone='vgg99'"):
        build_unet("vgg99", (64, 64, 1))
    with pytest.raises(ValueError, match="Received: input_shape=\\(60, 64, 1\\)"):
        build_unet("vgg16", (60, 64, 1))
    with pytest.raises(ValueError, match="Received: norm='layer'"):
        build_unet("vgg16", (64, 64, 1), norm="layer")
