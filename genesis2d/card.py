"""The model card of a pretrained encoder: what `card.json` holds and `MODEL_CARD.md` says.

Enough to rebuild, feed and cite the encoder without reading this project's code:
the architecture and its layer names, the input (shape, channels, dtype, range,
normalisation per modality), the output (channels, stride), the training data and
settings, the files' sha256, versions, licence, citation and, for each Keras that
loads it (Keras 3 on any backend, tf-keras, Keras 2.15), what it needs and a snippet
that runs there as written (the tests run Keras 3 and tf-keras; `tools/check_snippets.py`
all five environments).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genesis2d.backbones import BACKBONES, STRIDE
from plumbing.errors import InputError

# The encoder folder that pretraining writes, a preset: its files' names, here only.
CARD_FILE = "card.json"  # What the folder holds and how it was made; read by `read_card`.
ENCODER_FILE = "encoder.h5"  # Legacy HDF5: loads with plain `load_model` in Keras 3, tf-keras and Keras 2.15.
ENCODER_WEIGHTS_FILE = "encoder.weights.h5"  # Keras 3 weights of `genesis2d.unet.build_encoder`.
UNET_FILE = "unet.keras"  # The whole restoration U-Net.
MODEL_CARD_FILE = "MODEL_CARD.md"  # The card for people.
PRESET_FILES = (UNET_FILE, ENCODER_WEIGHTS_FILE, ENCODER_FILE, MODEL_CARD_FILE, CARD_FILE)  # Written in this order.

CITATION = (
    "Zhou Z., Sodha V., Rahman Siddiquee M. M., Feng R., Tajbakhsh N., Gotway M. B., Liang J. Models Genesis: "
    "Generic Autodidactic Models for 3D Medical Image Analysis. MICCAI 2019. Design of the 2D multi-modality "
    "variant: the master's thesis 'Comparison of self-supervised and ImageNet pretraining for medical image "
    "classification'."
)
LICENSE = (
    "Code: MIT. The weights are derived from the training data listed under 'data'; their use is bound by "
    "those datasets' terms."
)


@dataclass(frozen=True)
class LoadingSnippet:
    """How to load the encoder in one Keras environment: what that needs, and code that runs there as written.

    `tools/snippets.py` tells the environment from the code itself (see its `KINDS`);
    `tests/test_snippets.py` runs Keras 3 and tf-keras, `tools/check_snippets.py` all of them.
    """

    kind: str  # A key of tools/snippets.py's KINDS.
    title: str
    needs: str
    code: str


# The same use in each: load, features of a batch, a classifier head fine-tuned one epoch.
_USE = f"""encoder = keras.models.load_model("{ENCODER_FILE}", compile=False)
# Stand-in for your slices: float32 (N, H, W, 1) in [0, 1], normalised as in training, H and W multiples of 32.
images = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
features = encoder.predict(images, verbose=0)  # (N, H/32, W/32, channels)

x = keras.Input((None, None, 1))
probability = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(encoder(x)))
classifier = keras.Model(x, probability)
classifier.compile(optimizer="adam", loss="binary_crossentropy")
classifier.fit(images, np.array([0.0, 1.0, 0.0, 1.0]), epochs=1, verbose=0)"""
LOADING = (
    LoadingSnippet(
        "keras3",
        "Keras 3, on TensorFlow, JAX or PyTorch",
        "`pip install keras` and one backend: `tensorflow` (Keras's default), or `jax` or `torch` with the "
        "environment variable `KERAS_BACKEND=jax` or `KERAS_BACKEND=torch` set before Python starts.",
        "import numpy as np\nimport keras\n\n" + _USE,
    ),
    LoadingSnippet(
        "tf_keras",
        "tf-keras (Keras 2) on TensorFlow 2.16 and later",
        "`pip install tensorflow tf_keras`; `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported (the first lines "
        "set it), so that `tf.keras` is tf-keras rather than Keras 3.",
        'import os\nos.environ["TF_USE_LEGACY_KERAS"] = "1"\nimport numpy as np\nimport tensorflow as tf\n\n'
        "keras = tf.keras\n" + _USE,
    ),
    LoadingSnippet(
        "keras2",
        "Keras 2.15, on TensorFlow 2.15 and earlier",
        "`pip install tensorflow==2.15.*` and nothing else. Leave `TF_USE_LEGACY_KERAS` unset: TensorFlow 2.15 "
        "obeys it too and then looks for the `tf_keras` package, which a plain install lacks ('Keras cannot be "
        "imported').",
        "import numpy as np\nimport tensorflow as tf\n\nkeras = tf.keras\n" + _USE,
    ),
)


def encoder_card(backbone, normalisation):
    """The card's description of the encoder (architecture, input, output, use)."""
    from genesis2d.unet import ENCODER_OUTPUT, INPUT_NAME

    entry = BACKBONES[backbone]
    return {
        "architecture": {
            "backbone": backbone,
            "source": entry.library,
            "layers": {
                "input": INPUT_NAME,
                "gray_to_rgb": "Concatenate repeating the grayscale channel three times",
                "output": ENCODER_OUTPUT,
                "skips_deepest_first": list(entry.skips),
            },
        },
        "input": {
            "shape": [None, None, None, 1],
            "sides": f"any multiple of {STRIDE}",
            "channels": 1,
            "channels_note": "one grayscale channel; convert RGB images to gray first. A 3-channel batch is "
            "not accepted: the first layer repeats the channel three times, so Keras stops "
            "at the backbone's first layer with 'expected axis 3 ... to have value 3, but "
            "received input with shape (..., 9)'",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalisation": normalisation,
        },
        "output": {
            "layer": ENCODER_OUTPUT,
            "channels": entry.channels,
            "stride": STRIDE,
            "shape": f"(N, H/{STRIDE}, W/{STRIDE}, {entry.channels})",
        },
        "license": LICENSE,
        "citation": CITATION,
        "loading": [asdict(snippet) for snippet in LOADING],
    }


def _version_text(value):
    """A version as the card prints it; the CPU record (a mapping) as its model, vector sets and oneDNN setting."""
    if not isinstance(value, dict):
        return str(value)
    isa = value.get("isa")
    parts = [str(value.get("model")), f"({', '.join(isa)})" if isa else ""]
    parts += [f"{k}={v}" for k, v in value.items() if k not in ("model", "isa")]
    return " ".join(p for p in parts if p)


OBJECTIVE_TEXT = {
    "genesis": "Models Genesis (2D) restoration pretraining; the encoder of the restoration U-Net.",
    "contrastive": (
        "Contrastive pretraining (InfoNCE over two views of each slice, {negatives}); the encoder under the "
        "projection head."
    ),
    "genesis+contrastive": (
        "Restoration and contrast on one encoder (Models Genesis's restoration of distorted views and InfoNCE "
        "between two views of each slice, as DiRA's discriminative and restorative parts); the encoder of the U-Net."
    ),
}


NEGATIVES_TEXT = {
    "batch": "the batch's other slices as negatives, as SimCLR",
    "queue": "a queue of earlier views' keys from a momentum encoder as negatives, as MoCo v2",
}


def _objective_text(card):
    negatives = (card.get("contrast") or {}).get("negatives", "batch")  # Cards written before the queue: batch.
    # Cards written before objectives were restorative.
    return OBJECTIVE_TEXT[card.get("objective", "genesis")].format(negatives=NEGATIVES_TEXT[negatives])


def _baselines_text(card):
    """The validation loss (each term of a joined one) beside the bars it must clear, as the objective has them."""
    restoration = (
        f"{card.get('identity_val_loss')} for returning the distorted slices unchanged and "
        f"{card.get('constant_val_loss')} for the best constant output"
    )
    contrast = f"{card['chance_val_loss']:.4f} for telling nothing apart" if "chance_val_loss" in card else ""
    if card.get("objective") == "genesis+contrastive":  # Each term against its own bars, not their weighted sum.
        return (
            f"{card.get('last_val_loss')} (restoration weight x MSE + InfoNCE); its MSE "
            f"{card.get('last_val_restored_loss')} against {restoration}, its InfoNCE "
            f"{card.get('last_val_embedding_loss')} against {contrast} (each learned only if lower)"
        )
    against = contrast if card.get("objective") == "contrastive" else restoration
    return f"{card.get('last_val_loss')}, against {against} (learned only if lower)"


def _settings_text(card):
    parts = [f"{name.capitalize()}: {card[name]}." for name in ("distortions", "views", "contrast") if card.get(name)]
    return " ".join(parts)


def card_markdown(card):
    """MODEL_CARD.md: the card for people."""
    arch, inp, out = card["architecture"], card["input"], card["output"]
    norms = "\n".join(f"  - {k}: {v}" for k, v in inp["normalisation"].items())
    loading = "\n".join(
        f"### {s['title']}\nNeeds {s['needs']}\n\n```python\n{s['code']}\n```\n" for s in card["loading"]
    )
    files = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in card.get("files", {}).items())
    return f"""# genesis2d encoder: {arch["backbone"]}

{_objective_text(card)}

## Architecture
- Backbone: {arch["backbone"]}, {arch["source"]}.
- Layers: input `{arch["layers"]["input"]}` -> `gray_to_rgb` ({arch["layers"]["gray_to_rgb"]}) -> backbone -> output `{arch["layers"]["output"]}`.
- U-Net skip layers, deepest first: {", ".join(f"`{s}`" for s in arch["layers"]["skips_deepest_first"])}.

## Input
- Shape (N, H, W, 1), H and W {inp["sides"]}; {inp["channels_note"]}.
- {inp["dtype"]} in [{inp["range"][0]:g}, {inp["range"][1]:g}], normalised per modality:
{norms}
- Training crops: {card.get("crop", "")}; input size in training {card.get("input_size")}.

## Output
- `{out["layer"]}`: {out["shape"]} ({out["channels"]} channels at stride {out["stride"]}).

## Training
- Data: `{card.get("data")}` (content hash {card.get("data_hash")}).
- Best epoch {card.get("best_epoch")} of {card.get("epochs")}, chosen on the {card.get("best_epoch_chosen_on")}: {card.get("best_val_loss")}.
- Last validation loss {_baselines_text(card)}.
- {_settings_text(card)} Precision: {card.get("precision")}. Settings: `run.json`.
- Versions: {", ".join(f"{k} {_version_text(v)}" for k, v in (card.get("versions") or {}).items() if v)}.

## Files
| file | sha256 |
| --- | --- |
{files}

`encoder.h5` loads with plain `load_model` in Keras 3 (TensorFlow, JAX or PyTorch backend), tf-keras and
Keras 2.15; `encoder(x)` is one tensor in each. `encoder.weights.h5` holds the same weights for Keras 3's
`load_weights` into `genesis2d.unet.build_encoder("{arch["backbone"]}", (None, None, 1))`.

## Loading
{loading}
## Licence and citation
{card["license"]}

{card["citation"]}
"""


@dataclass(frozen=True)
class EncoderCard:
    """What a downstream task needs of a pretrained encoder folder, read from its card.

    Attributes:
        folder: the encoder folder.
        encoder_file: the file to load (`encoder.h5`, or the file the user named).
        backbone: the card's backbone; None when the folder has no card.
        input_size: [H, W, channels] the encoder was pretrained at, or None.
        normalisation: {modality: rule} the pretraining inputs were normalised with, or None.
        card: the whole card (empty without one).
    """

    folder: Path
    encoder_file: Path
    backbone: str | None = None
    input_size: list | None = None
    normalisation: dict | None = None
    card: dict = field(default_factory=dict)

    @property
    def objective(self):
        """What the encoder was pretrained for (`genesis2d.contrastive.OBJECTIVES`); None without a card."""
        return self.card.get("objective", "genesis") if self.card else None


def read_card(path):
    """The `EncoderCard` of an encoder folder, or of a file inside one (`encoder.h5`, `encoder.weights.h5`).

    A folder without `card.json` (an encoder from before cards, or a file copied alone) gives
    a card whose backbone is None: the caller says what it assumes. Raises InputError when
    the folder or file is missing or the card cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        folder, encoder_file = path, path / ENCODER_FILE
        if not encoder_file.is_file() and (path / ENCODER_WEIGHTS_FILE).is_file():
            encoder_file = path / ENCODER_WEIGHTS_FILE
    elif path.is_file():
        folder, encoder_file = path.parent, path
    else:
        raise InputError(path, "encoder folder or file does not exist (--encoder)")
    if not encoder_file.is_file():
        raise InputError(
            folder, f"holds no {ENCODER_FILE} (an encoder folder is what `python genesis2d/train.py` writes)"
        )
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        return EncoderCard(folder, encoder_file)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(card_path, f"cannot be read as JSON ({error})") from None
    backbone = card.get("backbone") if isinstance(card, dict) else None
    if backbone not in BACKBONES:
        raise InputError(card_path, f"names backbone {backbone!r}, not one of {', '.join(sorted(BACKBONES))}")
    return EncoderCard(
        folder,
        encoder_file,
        backbone,
        card.get("input_size"),
        (card.get("input") or {}).get("normalisation") or card.get("normalisation"),
        card,
    )


def find_encoders(root):
    """The `EncoderCard`s of the encoder folders directly under `root` that have a card, by folder name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [
        read_card(path.parent) for path in sorted(root.glob(f"*/{CARD_FILE}")) if (path.parent / ENCODER_FILE).is_file()
    ]
