"""One `.h5` model file that both Keras 3 and Keras 2 (tf-keras, TensorFlow <= 2.15) load.

Keras 3 writes its own config schema into legacy HDF5 files: an `InputLayer` with
`batch_shape` and `optional`, dtype policies as objects, initializer arguments
that Keras 2 lacks (`input_axes`, `output_axes`), and call arguments recorded as
`{"args": [keras tensors]}`. Keras 2's `load_model` rejects all of these. Keras 3
still reads the Keras 2 schema (it is how it opens old files), so rewriting the
config into that schema gives one file for both; the weights, stored the same
way by both, are untouched.
"""

import json
from pathlib import Path

KERAS3_ONLY_ARGUMENTS = {"input_axes", "output_axes"}  # VarianceScaling family, Keras >= 3.13.


def _clean(value):
    """Drops Keras-3-only arguments inside serialized objects (initializers, regularizers)."""
    if isinstance(value, dict):
        if isinstance(value.get("config"), dict) and "class_name" in value:
            return dict(
                value, config={k: _clean(v) for k, v in value["config"].items() if k not in KERAS3_ONLY_ARGUMENTS}
            )
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _dtype(value):
    """A dtype policy object as the plain name Keras 2 expects ('float32', 'mixed_float16')."""
    if isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return value["config"]["name"]
    return value


def _tensor_reference(tensor):
    name, node_index, tensor_index = tensor["config"]["keras_history"]
    return [name, node_index, tensor_index, {}]


def _node(node):
    """A Keras 3 call record {"args": [...]} as Keras 2's list of [layer, node, tensor, kwargs]."""
    if isinstance(node, list):  # Already in Keras 2 form.
        return node
    references = []
    for argument in node.get("args", []):
        tensors = argument if isinstance(argument, list) else [argument]
        references += [
            _tensor_reference(t) for t in tensors if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__"
        ]
    return references


def _layer(layer):
    config = {k: _clean(v) for k, v in layer["config"].items()}
    if layer["class_name"] == "InputLayer":
        if "batch_shape" in config:
            config["batch_input_shape"] = config.pop("batch_shape")
        config.pop("optional", None)
    if "dtype" in config:
        config["dtype"] = _dtype(config["dtype"])
    return {
        "class_name": layer["class_name"],
        "config": config,
        "name": layer["name"],
        "inbound_nodes": [_node(n) for n in layer.get("inbound_nodes", [])],
    }


def _one_or_many(references):
    """One tensor reference as itself, several as their list.

    Both Keras generations rebuild `inputs` and `outputs` in the nesting they read:
    a list of one reference makes `model(x)` return a one-item list (Keras 3) and
    makes it expect a list. Keras 2 reads a bare reference as one tensor too.
    """
    if len(references) == 1 and isinstance(references[0], list):
        return references[0]
    return references


def keras2_config(config):
    """A functional model's config (as Keras 3 serializes it) in the schema of Keras 2."""
    inner = config["config"]
    return {
        "class_name": "Functional",
        "config": {
            "name": inner["name"],
            "trainable": inner.get("trainable", True),
            "layers": [_layer(layer) for layer in inner["layers"]],
            "input_layers": _one_or_many(inner["input_layers"]),
            "output_layers": _one_or_many(inner["output_layers"]),
        },
    }


def make_portable(path):
    """Rewrites the model config of a legacy `.h5` model file, in place, so Keras 2 and Keras 3 both load it."""
    import h5py

    with h5py.File(Path(path), "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        handle.attrs["model_config"] = json.dumps(keras2_config(config))
