"""The backbone table: one row per encoder, as data (importable without Keras, so options are checked fast).

Each row is a frozen `Backbone` (after timm's `PretrainedCfg`): the library its
layers come from, its skip connections, deepest first (segmentation_models'
defaults, `Backbones.get_feature_layers(name, n=4)`), its output channels at
stride 32, and the file name under which Keras caches its ImageNet weights in
~/.keras/models. Backbones from `keras.applications` name their constructor
(`application`); those with RadImageNet weights (Mei et al., Radiology: AI 2022)
name that file (`radimagenet_file`). A new backbone is one row here, and
tests/test_unet.py checks every row.

Example:
>>> BACKBONES["resnet18"].channels
512
>>> BACKBONES["resnet50_keras"].radimagenet_file
'RadImageNet-ResNet50_notop.h5'
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One encoder of the table.

    Args:
        name: str. The key users type (`--backbone`).
        library: str. Where its layers come from, for the model card.
        skips: tuple of four layer names, deepest first: the U-Net's skip connections.
        channels: int. Channels of its last feature map (stride 32).
        imagenet_file: str. The file name of its ImageNet weights in Keras's cache.
        application: str or None. The `keras.applications` constructor; None for a
            segmentation_models backbone. Defaults to None.
        radimagenet_file: str or None. The file name of its RadImageNet weights, if
            RadImageNet publishes them in this layout. Defaults to None.
    """

    name: str
    library: str
    skips: tuple
    channels: int
    imagenet_file: str
    application: str | None = None
    radimagenet_file: str | None = None

    def __post_init__(self):
        if len(self.skips) != 4:
            raise ValueError(f"skips must name four layers, deepest first. Received: skips={self.skips}")


_RESNET_SKIPS = ("stage4_unit1_relu1", "stage3_unit1_relu1", "stage2_unit1_relu1", "relu0")
_VGG = "keras-applications VGG (through segmentation_models)"
_RESNET = (
    "qubvel classification_models ResNet (through segmentation_models); its first layer, bn_data, normalises the input"
)
_ROWS = (
    Backbone(
        "vgg16",
        _VGG,
        ("block5_conv3", "block4_conv3", "block3_conv3", "block2_conv2"),
        512,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone(
        "vgg19",
        _VGG,
        ("block5_conv4", "block4_conv4", "block3_conv4", "block2_conv2"),
        512,
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    Backbone("resnet18", _RESNET, _RESNET_SKIPS, 512, "resnet18_imagenet_1000_no_top.h5"),
    Backbone("resnet34", _RESNET, _RESNET_SKIPS, 512, "resnet34_imagenet_1000_no_top.h5"),
    Backbone("resnet50", _RESNET, _RESNET_SKIPS, 2048, "resnet50_imagenet_1000_no_top.h5"),
    # The keras.applications ResNet50: the layout of RadImageNet's ResNet50 (and of Keras's own ImageNet file).
    Backbone(
        "resnet50_keras",
        "keras.applications ResNet50",
        ("conv4_block6_out", "conv3_block4_out", "conv2_block3_out", "conv1_relu"),
        2048,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        application="ResNet50",
        radimagenet_file="RadImageNet-ResNet50_notop.h5",
    ),
)
BACKBONES = {row.name: row for row in _ROWS}
RADIMAGENET_SOURCE = "https://github.com/BMEII-AI/RadImageNet (the model weights linked from its README)"
STRIDE = 32  # Every backbone downsamples five times; inputs are multiples of 32.


def image_size(text):
    """An argparse `type`: an image side that is a positive multiple of 32."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer. Received: {text!r}") from None
    if value < STRIDE or value % STRIDE:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of {STRIDE} (the encoders downsample 5 times). Received: {value}"
        )
    return value
