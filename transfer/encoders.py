"""Encoders and their initialisations for transfer to a downstream task (thesis 4.2).

- `--init scratch`: the backbone's encoder with random weights;
- `--init genesis`: a genesis2d encoder (`encoder.h5` or `encoder.weights.h5`);
- `--init contrastive`, `--init genesis+contrastive`: an encoder pretrained by the same command with
  that `--objective` (`genesis2d.contrastive`), loaded as a genesis one; its card must name that objective;
- `--init imagenet`: the backbone's ImageNet weights, as Keras downloads them;
- `--init radimagenet`: RadImageNet's supervised medical weights (Mei et al., Radiology: AI
  2022), a file the user downloads (`--radimagenet-weights`), for the backbones that have one.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from genesis2d.backbones import BACKBONES, RADIMAGENET_SOURCE
from plumbing.errors import InputError, UsageError

INITS = ("scratch", "genesis", "contrastive", "genesis+contrastive", "imagenet", "radimagenet")
PRETRAINED_INITS = ("genesis", "contrastive", "genesis+contrastive")  # Encoders of `python genesis2d/train.py`.


PROJECT_ROOT = Path(__file__).resolve().parents[1]


class InitError(InputError):
    """An encoder that cannot be initialised as asked; the message says what to do."""


def keras_cache_dir():
    """Where Keras looks for (and downloads) weights: $KERAS_HOME/models or ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def default_genesis_encoder(backbone, root=None, objective="genesis"):
    """The `EncoderCard` of the one encoder folder under `root` (weights/) whose card names `backbone` and `objective`.

    The cards decide, not the folders' names; none or several stop with a line that lists them.
    """
    from genesis2d.card import find_encoders

    root = Path(root) if root else PROJECT_ROOT / "weights"
    found = [card for card in find_encoders(root) if card.backbone == backbone and card.objective == objective]
    what = f"{backbone} encoder" + ("" if objective == "genesis" else f" pretrained with --objective {objective}")
    if not found:
        raise InitError(
            root,
            f"holds no encoder folder whose card names backbone {backbone}"
            + ("" if objective == "genesis" else f" and objective {objective}")
            + f"; pretrain with `python genesis2d/train.py --backbone {backbone}"
            + ("" if objective == "genesis" else f" --objective {objective}")
            + "` or pass --encoder FOLDER",
        )
    if len(found) > 1:
        raise InitError(
            root,
            f"holds {len(found)} {what}s ({', '.join(card.folder.name for card in found)}); "
            "choose one with --encoder FOLDER",
        )
    print(f"{objective} encoder: {found[0].folder} (the only {what} under {root})")
    return found[0]


def read_encoder_card(path):
    """`genesis2d.card.read_card`, its refusals as InitError (the encoder cannot be initialised)."""
    from genesis2d.card import read_card

    try:
        return read_card(path)
    except InitError:
        raise
    except InputError as error:
        raise InitError(error.path, error.problem) from None


def pretraining_of(init, encoder):
    """What the card of a genesis encoder says of its pretraining (backbone, input size, normalisation), or {}."""
    if init not in PRETRAINED_INITS or not encoder:
        return {}
    card = read_encoder_card(encoder)
    if card.backbone is None:
        return {"card": None}
    return {
        "card": str(card.folder),
        "backbone": card.backbone,
        "input_size": card.input_size,
        "normalisation": card.normalisation,
    }


def genesis_card(encoder, backbone, default_backbone, init="genesis"):
    """(EncoderCard, backbone) of an --encoder folder or file, or of the default search, the backbone checked.

    Args:
        encoder: the --encoder folder (or a file inside it), or None for the one under weights/.
        backbone: the --backbone given, or None.
        default_backbone: the backbone assumed when neither --backbone nor a card says.
        init: str. One of PRETRAINED_INITS: the objective the card must name.

    The card's backbone wins; an explicit `backbone` that contradicts it stops with one line
    naming both. An encoder without a card (written before cards) loads as `backbone` (or
    the default), with a line saying so.
    """
    from genesis2d.card import CARD_FILE

    if encoder is None:
        card = default_genesis_encoder(backbone or default_backbone, objective=init)
        return card, card.backbone
    card = read_encoder_card(encoder)
    if card.objective not in (None, init):
        raise UsageError(
            "--init",
            f"{init} contradicts the encoder's card ({card.folder / CARD_FILE}: objective {card.objective}); "
            f"pass --init {card.objective} or another --encoder",
        )
    if card.backbone is None:
        assumed = backbone or default_backbone
        print(
            f"{card.encoder_file}: no {CARD_FILE} beside it; assuming a {assumed} encoder (--backbone) pretrained "
            "on [0, 1] slices normalised as genesis2d does"
        )
        return card, assumed
    if backbone and backbone != card.backbone:
        raise UsageError(
            "--backbone",
            f"{backbone} contradicts the encoder's card ({card.folder / CARD_FILE}: "
            f"backbone {card.backbone}); leave --backbone out or pass --backbone {card.backbone}",
        )
    return card, card.backbone


def check_finished(card, accept_unfinished=False):
    """Refuses (InitError) an encoder folder whose pretraining checkpoint says it was stopped before it finished:
    its encoder is the best epoch so far, not the run's. `accept_unfinished` (--unfinished-encoder) takes it."""
    from genesis2d.pretrain import unfinished

    if unfinished(card.folder) and not accept_unfinished:
        raise InitError(
            card.folder,
            "holds a pretraining that was stopped before it finished; resume it (python genesis2d/train.py "
            "--resume --out FOLDER) or pass --unfinished-encoder to use its best epoch so far",
        )
    if unfinished(card.folder):
        print(f"{card.folder}: pretraining unfinished; using its best epoch so far (--unfinished-encoder)")


def radimagenet_file(backbone, explicit=None):
    """The RadImageNet weights file of a backbone: `explicit`, else the one in Keras's cache; one line if neither."""
    name = BACKBONES[backbone].radimagenet_file
    if not name:
        having = sorted(name for name, row in BACKBONES.items() if row.radimagenet_file)
        raise UsageError(
            "--backbone",
            f"RadImageNet publishes no {backbone} weights in this layout; use "
            f"--backbone {' or '.join(having)} with --init radimagenet",
        )
    path = Path(explicit) if explicit else keras_cache_dir() / name
    if not path.is_file():
        raise InitError(
            path,
            f"does not exist: --init radimagenet needs {name}, which cannot be downloaded "
            f"automatically; get it from {RADIMAGENET_SOURCE} and pass --radimagenet-weights PATH",
        )
    return path


def _load_genesis(encoder, path, backbone):
    import keras

    path = Path(path)
    if not path.is_file():
        raise InitError(path, "encoder file does not exist")
    try:
        if path.name.endswith(".weights.h5"):
            encoder.load_weights(path)
            return encoder
        saved = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise InitError(path, f"cannot be loaded as an encoder ({type(error).__name__}: {str(error)[:200]})") from error
    weights = saved.get_weights()
    if len(weights) != len(encoder.weights) or any(a.shape != b.shape for a, b in zip(weights, encoder.get_weights())):
        raise InitError(
            path,
            f"encoder does not match backbone {backbone} "
            f"({len(weights)} weight arrays, expected {len(encoder.weights)}); check --backbone",
        )
    encoder.set_weights(weights)
    return encoder


def _load_imagenet(backbone, input_shape, explicit=None):
    from genesis2d.unet import build_encoder

    name = BACKBONES[backbone].imagenet_file
    path = Path(explicit) if explicit else keras_cache_dir() / name
    if explicit and not path.is_file():
        raise InitError(path, "ImageNet weights file does not exist")
    if path.is_file():
        encoder = build_encoder(backbone, input_shape, weights=None)
        try:
            encoder.load_weights(path)  # Keras-2 HDF5, loaded layer by layer in order.
        except Exception as error:
            raise InitError(
                path, f"not the {backbone} ImageNet weights ({type(error).__name__}: {str(error)[:160]})"
            ) from error
        return encoder
    try:  # The real download path: segmentation_models asks Keras to fetch the file.
        return build_encoder(backbone, input_shape, weights="imagenet")
    except Exception as error:
        raise InitError(
            keras_cache_dir() / name,
            f"ImageNet weights for {backbone} are not there and could not be "
            f"downloaded ({type(error).__name__}); place the file there or pass --imagenet-weights PATH",
        ) from error


def _load_radimagenet(backbone, input_shape, path):
    from genesis2d.unet import build_encoder

    path = radimagenet_file(backbone, path)
    encoder = build_encoder(backbone, input_shape, weights=None)
    try:
        encoder.load_weights(path)  # The Keras HDF5 weights of keras.applications' architecture, layer by layer.
    except Exception as error:
        raise InitError(
            path, f"not RadImageNet's {backbone} weights ({type(error).__name__}: {str(error)[:160]})"
        ) from error
    return encoder


def load_encoder(init, backbone, input_shape, encoder_path=None, imagenet_weights=None, radimagenet_weights=None):
    """An encoder (input -> `encoder_output`) initialised as asked.

    Args:
        init: str. One of INITS.
        backbone: str. A key of `genesis2d.backbones.BACKBONES`.
        input_shape: (H, W, 1).
        encoder_path: for PRETRAINED_INITS, an encoder folder (or its encoder.h5 / encoder.weights.h5).
            Defaults to the one under weights/ whose card names this backbone.
        imagenet_weights: for 'imagenet', a weights file to use instead of Keras's cache.
        radimagenet_weights: for 'radimagenet', the RadImageNet weights file. Defaults to
            its name in Keras's cache.
    """
    from genesis2d.unet import build_encoder

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}. Received: init={init!r}")
    if init == "imagenet":
        return _load_imagenet(backbone, input_shape, imagenet_weights)
    if init == "radimagenet":
        return _load_radimagenet(backbone, input_shape, radimagenet_weights)
    encoder = build_encoder(backbone, input_shape, weights=None)
    if init in PRETRAINED_INITS:
        if encoder_path is None:
            path = default_genesis_encoder(backbone, objective=init).encoder_file
        else:
            path = read_encoder_card(encoder_path).encoder_file if Path(encoder_path).is_dir() else Path(encoder_path)
        _load_genesis(encoder, path, backbone)
    return encoder


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to start from (see `load_encoder`), and whether it is fed its weights' input convention."""

    init: str
    backbone: str
    encoder_path: str | None = None
    imagenet_weights: str | None = None
    radimagenet_weights: str | None = None
    imagenet_input: bool = False

    def check_available(self):
        """Before any long work: the weights file an ImageNet or RadImageNet start needs is there (ImageNet's
        fetched into Keras's cache now, where this machine can download it), or the one line `load` would give."""
        if self.init == "radimagenet":
            radimagenet_file(self.backbone, self.radimagenet_weights)
        elif self.init == "imagenet":
            path = Path(self.imagenet_weights or keras_cache_dir() / BACKBONES[self.backbone].imagenet_file)
            if self.imagenet_weights and not path.is_file():
                raise InitError(path, "ImageNet weights file does not exist")
            if not path.is_file():
                _load_imagenet(self.backbone, (224, 224, 1))  # The download path, at a size every backbone takes.

    def load(self, input_shape):
        encoder = load_encoder(
            self.init, self.backbone, input_shape, self.encoder_path, self.imagenet_weights, self.radimagenet_weights
        )
        return with_imagenet_input(encoder, self.backbone) if self.imagenet_input else encoder


# The input each backbone's ImageNet weights were trained on, from [0, 1] grayscale repeated to RGB: keras
# VGG and keras.applications ResNet50 take caffe-style input (0-255, BGR, ImageNet channel means subtracted:
# `keras.applications.imagenet_utils.preprocess_input(mode="caffe")`); qubvel's ResNets take 0-255 and
# normalise it in their first layer, bn_data. The thesis fed every encoder [0, 1] images (4.2.1.4, 4.2.4.3).
IMAGENET_INPUT = {
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet50_keras": "caffe",
    "resnet18": "0-255",
    "resnet34": "0-255",
    "resnet50": "0-255",
}
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)
IMAGENET_INITS = ("imagenet", "radimagenet")


_IMAGENET_INPUT_LAYER = []


def imagenet_input_layer():
    """The Keras layer class of `with_imagenet_input` (defined on first use: Keras is imported lazily here)."""
    if _IMAGENET_INPUT_LAYER:
        return _IMAGENET_INPUT_LAYER[0]
    import keras

    @keras.saving.register_keras_serializable(package="transfer")
    class ImageNetInput(keras.layers.Layer):
        """In place of `gray_to_rgb`: three copies of a [0, 1] slice, as the ImageNet weights' input convention."""

        def __init__(self, convention, **kwargs):
            super().__init__(**kwargs)
            self.convention = convention

        def call(self, inputs):
            rgb = keras.ops.concatenate(inputs, axis=-1) * 255.0
            if self.convention == "caffe":  # R = G = B, so the swap to BGR changes nothing; the means do.
                rgb = rgb - keras.ops.convert_to_tensor(CAFFE_MEANS_BGR, dtype=rgb.dtype)
            return rgb

        def get_config(self):
            return {**super().get_config(), "convention": self.convention}

    _IMAGENET_INPUT_LAYER.append(ImageNetInput)
    return ImageNetInput


def with_imagenet_input(encoder, backbone):
    """The encoder with its `gray_to_rgb` layer turned into the backbone's ImageNet input convention.

    Every other layer is the encoder's own (shared, weights included); only the input
    changes, inside the model, so that saving, Grad-CAM and predicting see it too.
    """
    import keras

    if backbone not in IMAGENET_INPUT:
        raise UsageError("--imagenet-preprocessing", f"knows no ImageNet input convention for {backbone}")
    layer = imagenet_input_layer()

    def swap(item):
        return layer(IMAGENET_INPUT[backbone], name="gray_to_rgb") if item.name == "gray_to_rgb" else item

    return keras.models.clone_model(encoder, clone_function=swap)
