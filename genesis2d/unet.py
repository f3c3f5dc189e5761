"""The 2D U-Net restored by Models Genesis pretraining, on segmentation_models backbones.

The encoder is a segmentation_models (qubvel) backbone; the decoder mirrors
`sm.Unet`'s upsampling decoder (filters 256, 128, 64, 32, 16) with a choice of
normalisation (thesis 3.1.11): `batch`, `instance` (GroupNormalization with one
group per channel) or `none`. A grayscale slice is repeated to three channels so
ImageNet encoders fit. The encoder's last layer is named `encoder_output`, so
downstream tasks cut the encoder at that layer. It builds on any Keras backend:
under `KERAS_BACKEND=jax` no TensorFlow is needed (`genesis2d.sm_backend`).

Example:
>>> model = build_unet("vgg16", input_shape=(64, 64, 1), norm="instance")  # doctest: +SKIP
>>> model.output_shape                                                      # doctest: +SKIP
(None, 64, 64, 1)
"""

import keras
from keras import layers

from genesis2d.backbones import BACKBONES  # The table, importable without Keras.
from genesis2d.sm_backend import segmentation_models

ENCODER_OUTPUT = "encoder_output"
INPUT_NAME = "image"
NORMS = ("batch", "instance", "none")
DECODER_FILTERS = (256, 128, 64, 32, 16)


def _check(backbone, input_shape, norm=None):
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}. Received: backbone={backbone!r}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}. Received: norm={norm!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 1 or any(s is not None and s % 32 for s in input_shape[:2]):
        raise ValueError(
            f"input_shape must be (H, W, 1) with H and W multiples of 32. Received: input_shape={input_shape}"
        )
    return input_shape


def build_backbone(backbone, input_shape=(224, 224, 1), weights=None):
    """A segmentation_models backbone on a grayscale input, without its top.

    Args:
        backbone: str. A key of `BACKBONES`.
        input_shape: (H, W, 1). H and W multiples of 32. Defaults to (224, 224, 1).
        weights: None (random) or 'imagenet' (downloaded by Keras into
            ~/.keras/models on first use), or a path to backbone weights.

    Returns:
        keras.Model from the grayscale input to the backbone's last feature map,
        with the grayscale slice repeated to 3 channels by a `gray_to_rgb` layer.
    """
    input_shape = _check(backbone, input_shape)
    image = keras.Input(input_shape, name=INPUT_NAME)
    rgb = layers.Concatenate(axis=-1, name="gray_to_rgb")([image, image, image])
    application = BACKBONES[backbone].application
    if application:  # keras.applications: Keras's own layer names and weight files.
        return getattr(keras.applications, application)(
            include_top=False, weights=weights, input_tensor=rgb, input_shape=input_shape[:2] + (3,)
        )
    sm = segmentation_models()
    get_backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)
    return get_backbone(
        backbone, input_shape=input_shape[:2] + (3,), input_tensor=rgb, weights=weights, include_top=False
    )


def _conv_norm_relu(x, filters, norm, name):
    x = layers.Conv2D(
        filters, 3, padding="same", use_bias=(norm == "none"), kernel_initializer="he_uniform", name=f"{name}_conv"
    )(x)
    if norm == "batch":
        x = layers.BatchNormalization(axis=-1, name=f"{name}_bn")(x)
    elif norm == "instance":
        x = layers.GroupNormalization(groups=-1, axis=-1, name=f"{name}_in")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_unet(
    backbone="resnet50", input_shape=(224, 224, 1), norm="batch", encoder_weights=None, decoder_filters=DECODER_FILTERS
):
    """Builds the U-Net for restoration pretraining.

    Args:
        backbone: str. 'vgg16', 'resnet50', or another key of `BACKBONES`. Defaults to 'resnet50'.
        input_shape: (H, W, 1). Defaults to (224, 224, 1) (thesis 3.1.8).
        norm: str. Decoder normalisation: 'batch', 'instance' or 'none'. Defaults to 'batch'.
        encoder_weights: None or 'imagenet'. Defaults to None (random).
        decoder_filters: five ints. Defaults to (256, 128, 64, 32, 16), as sm.Unet.

    Returns:
        keras.Model (H, W, 1) -> (H, W, 1) sigmoid output in float32. With
        norm='batch' it has the parameter count of `sm.Unet(backbone)`.
    """
    _check(backbone, input_shape, norm)
    encoder = build_backbone(backbone, input_shape, encoder_weights)
    x = layers.Activation("linear", name=ENCODER_OUTPUT)(encoder.output)
    skips = [encoder.get_layer(name).output for name in BACKBONES[backbone].skips]
    if isinstance(encoder.layers[-1], layers.MaxPooling2D):
        # VGG ends on a pooling layer: sm.Unet adds two 512-filter blocks before decoding.
        x = _conv_norm_relu(x, 512, norm, "center_block1")
        x = _conv_norm_relu(x, 512, norm, "center_block2")
    for stage, filters in enumerate(decoder_filters):
        x = layers.UpSampling2D(2, name=f"decoder_stage{stage}_upsampling")(x)
        if stage < len(skips):
            x = layers.Concatenate(axis=-1, name=f"decoder_stage{stage}_concat")([x, skips[stage]])
        x = _conv_norm_relu(x, filters, norm, f"decoder_stage{stage}a")
        x = _conv_norm_relu(x, filters, norm, f"decoder_stage{stage}b")
    x = layers.Conv2D(1, 3, padding="same", name="final_conv")(x)
    # Under mixed_float16 the output (and so the loss) must stay float32.
    output = layers.Activation("sigmoid", dtype="float32", name="restored")(x)
    # One input tensor (not the backbone's one-item list), so the model is called on a plain batch.
    return keras.Model(encoder.inputs[0], output, name=f"genesis2d_unet_{backbone}_{norm}")


def encoder_of(model):
    """The encoder of a U-Net (or of a classifier built on it): input -> `encoder_output`."""
    return keras.Model(model.input, model.get_layer(ENCODER_OUTPUT).output, name="encoder")


def build_encoder(backbone="resnet50", input_shape=(224, 224, 1), weights=None):
    """A stand-alone encoder ending in `encoder_output`, for scratch or ImageNet initialisation."""
    encoder = build_backbone(backbone, input_shape, weights)
    x = layers.Activation("linear", name=ENCODER_OUTPUT)(encoder.output)
    return keras.Model(encoder.input, x, name="encoder")
