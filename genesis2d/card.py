"""The model card of a pretrained encoder: what `card.json` holds and `MODEL_CARD.md` says.

Enough to rebuild, feed and cite the encoder without reading this project's code:
the architecture and its layer names, the input (shape, channels, dtype, range,
normalisation per modality), the output (channels, stride), the training data and
settings, the files' sha256, versions, licence, citation and loading snippets for
Keras 3 and Keras 2 (a test runs both).
"""

from genesis2d.backbones import BACKBONES, STRIDE
from genesis2d.unet import ENCODER_OUTPUT, INPUT_NAME

CITATION = ("Zhou Z., Sodha V., Rahman Siddiquee M. M., Feng R., Tajbakhsh N., Gotway M. B., Liang J. Models Genesis: "
            "Generic Autodidactic Models for 3D Medical Image Analysis. MICCAI 2019. Design of the 2D multi-modality "
            "variant: the master's thesis 'Comparison of self-supervised and ImageNet pretraining for medical image "
            "classification'.")
LICENSE = ("Code: MIT. The weights are derived from the training data listed under 'data'; their use is bound by "
           "those datasets' terms.")
KERAS3_SNIPPET = """import keras
encoder = keras.models.load_model("encoder.h5", compile=False)
features = encoder.predict(images)  # images: float32 (N, H, W, 1) in [0, 1], H and W multiples of 32"""
KERAS2_SNIPPET = """import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf-keras with TensorFlow >= 2.16; plain tf.keras with TensorFlow <= 2.15
import tensorflow as tf
encoder = tf.keras.models.load_model("encoder.h5", compile=False)
features = encoder.predict(images)  # images: float32 (N, H, W, 1) in [0, 1], H and W multiples of 32"""


def encoder_card(backbone, normalisation):
    """The card's description of the encoder (architecture, input, output, use)."""
    entry = BACKBONES[backbone]
    return {
        "architecture": {
            "backbone": backbone, "source": entry["library"],
            "layers": {"input": INPUT_NAME, "gray_to_rgb": "Concatenate repeating the grayscale channel three times",
                       "output": ENCODER_OUTPUT, "skips_deepest_first": list(entry["skips"])},
        },
        "input": {"shape": [None, None, None, 1], "sides": f"any multiple of {STRIDE}", "channels": 1,
                  "channels_note": "one grayscale channel; convert RGB images to gray first. A 3-channel batch is "
                                   "not accepted: the first layer repeats the channel three times, so Keras stops "
                                   "at the backbone's first layer with 'expected axis 3 ... to have value 3, but "
                                   "received input with shape (..., 9)'",
                  "dtype": "float32", "range": [0.0, 1.0], "normalisation": normalisation},
        "output": {"layer": ENCODER_OUTPUT, "channels": entry["channels"], "stride": STRIDE,
                   "shape": f"(N, H/{STRIDE}, W/{STRIDE}, {entry['channels']})"},
        "license": LICENSE, "citation": CITATION,
        "loading": {"keras3": KERAS3_SNIPPET, "keras2": KERAS2_SNIPPET},
    }


def card_markdown(card):
    """MODEL_CARD.md: the card for people."""
    arch, inp, out = card["architecture"], card["input"], card["output"]
    norms = "\n".join(f"  - {k}: {v}" for k, v in inp["normalisation"].items())
    files = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in card.get("files", {}).items())
    return f"""# genesis2d encoder: {arch['backbone']}

Models Genesis (2D) restoration pretraining; the encoder of the restoration U-Net.

## Architecture
- Backbone: {arch['backbone']}, {arch['source']}.
- Layers: input `{arch['layers']['input']}` -> `gray_to_rgb` ({arch['layers']['gray_to_rgb']}) -> backbone -> output `{arch['layers']['output']}`.
- U-Net skip layers, deepest first: {', '.join(f'`{s}`' for s in arch['layers']['skips_deepest_first'])}.

## Input
- Shape (N, H, W, 1), H and W {inp['sides']}; {inp['channels_note']}.
- {inp['dtype']} in [{inp['range'][0]:g}, {inp['range'][1]:g}], normalised per modality:
{norms}
- Training crops: {card.get('crop', '')}; input size in training {card.get('input_size')}.

## Output
- `{out['layer']}`: {out['shape']} ({out['channels']} channels at stride {out['stride']}).

## Training
- Data: `{card.get('data')}` (content hash {card.get('data_hash')}).
- Best epoch {card.get('best_epoch')} of {card.get('epochs')}, chosen on the {card.get('best_epoch_chosen_on')}: {card.get('best_val_loss')}.
- Distortions: {card.get('distortions')}. Precision: {card.get('precision')}. Settings: `run.json`.
- Versions: {', '.join(f'{k} {v}' for k, v in (card.get('versions') or {}).items() if v)}.

## Files
| file | sha256 |
| --- | --- |
{files}

`encoder.h5` loads in Keras 3 and in Keras 2; `encoder.weights.h5` holds the same weights for
Keras 3's `load_weights` into `genesis2d.unet.build_encoder("{arch['backbone']}", (None, None, 1))`.

## Loading
Keras 3 (TensorFlow 2.16+):
```python
{card['loading']['keras3']}
```
Keras 2 (tf-keras, or TensorFlow 2.15 and earlier):
```python
{card['loading']['keras2']}
```

## Licence and citation
{card['license']}

{card['citation']}
"""
