"""segmentation_models on whichever Keras backend runs: the one place that imports it.

segmentation_models 1.0.1 (qubvel) builds on `tensorflow.keras` (SM_FRAMEWORK
'tf.keras') or on plain `keras` ('keras'). Under TensorFlow we keep 'tf.keras',
which in TensorFlow 2.16+ is Keras 3 itself; under another backend (JAX, with no
TensorFlow installed) only 'keras' can load. Its 'keras' path imports
`efficientnet.keras`, which registers its custom objects through
`keras.utils.generic_utils.get_custom_objects`, a Keras 2 module that Keras 3
no longer has (Keras 3 keeps the function at `keras.utils.get_custom_objects`):
the shim below gives it that one function, and nothing else.
"""

import os
import sys
import types


def framework():
    """The SM_FRAMEWORK segmentation_models must use: 'tf.keras' under TensorFlow, else 'keras'."""
    import keras

    return "tf.keras" if keras.backend.backend() == "tensorflow" else "keras"


def _shim_generic_utils():
    import keras

    if hasattr(keras.utils, "generic_utils"):
        return
    module = types.ModuleType("keras.utils.generic_utils")
    module.get_custom_objects = keras.utils.get_custom_objects
    keras.utils.generic_utils = module
    sys.modules["keras.utils.generic_utils"] = module


def segmentation_models():
    """The `segmentation_models` module, imported for the running backend (an explicit SM_FRAMEWORK wins)."""
    os.environ.setdefault("SM_FRAMEWORK", framework())
    if os.environ["SM_FRAMEWORK"] == "keras":
        _shim_generic_utils()
    import segmentation_models

    return segmentation_models
