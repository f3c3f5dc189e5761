"""The backbone table: one entry per encoder, as data (importable without Keras, so options are checked fast).

For each backbone: the library its layers come from, its skip connections, deepest
first (segmentation_models' defaults, `Backbones.get_feature_layers(name, n=4)`),
its output channels at stride 32, and the file name under which Keras caches its
ImageNet weights in ~/.keras/models. Backbones from `keras.applications` name their
constructor (`application`); those with RadImageNet weights (Mei et al., Radiology:
AI 2022) name that file (`radimagenet_file`). A new backbone is one entry here.
"""

_RESNET_SKIPS = ("stage4_unit1_relu1", "stage3_unit1_relu1", "stage2_unit1_relu1", "relu0")
_VGG = "keras-applications VGG (through segmentation_models)"
_RESNET = "qubvel classification_models ResNet (through segmentation_models); its first layer, bn_data, normalises the input"
BACKBONES = {
    "vgg16": {"library": _VGG, "skips": ("block5_conv3", "block4_conv3", "block3_conv3", "block2_conv2"),
              "channels": 512, "imagenet_file": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"},
    "vgg19": {"library": _VGG, "skips": ("block5_conv4", "block4_conv4", "block3_conv4", "block2_conv2"),
              "channels": 512, "imagenet_file": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"},
    "resnet18": {"library": _RESNET, "skips": _RESNET_SKIPS, "channels": 512,
                 "imagenet_file": "resnet18_imagenet_1000_no_top.h5"},
    "resnet34": {"library": _RESNET, "skips": _RESNET_SKIPS, "channels": 512,
                 "imagenet_file": "resnet34_imagenet_1000_no_top.h5"},
    "resnet50": {"library": _RESNET, "skips": _RESNET_SKIPS, "channels": 2048,
                 "imagenet_file": "resnet50_imagenet_1000_no_top.h5"},
    # The keras.applications ResNet50: the layout of RadImageNet's ResNet50 (and of Keras's own ImageNet file).
    "resnet50_keras": {"library": "keras.applications ResNet50", "application": "ResNet50",
                       "skips": ("conv4_block6_out", "conv3_block4_out", "conv2_block3_out", "conv1_relu"),
                       "channels": 2048, "imagenet_file": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                       "radimagenet_file": "RadImageNet-ResNet50_notop.h5"},
}
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
        raise argparse.ArgumentTypeError(f"must be a multiple of {STRIDE} (the encoders downsample 5 times). "
                                         f"Received: {value}")
    return value
