"""Pick precision and distribution strategy by the hardware found; record versions and seeds."""

import json
import os
import platform


def gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def pick_precision(requested="auto"):
    """Sets and returns the Keras dtype policy.

    'auto' gives `mixed_float16` when a GPU is visible (tensor cores) and `float32`
    on CPU, where float16 is slower; 'float32' or 'mixed_float16' force one.
    """
    import keras

    choices = ("auto", "float32", "mixed_float16")
    if requested not in choices:
        raise ValueError(f"precision must be one of {choices}. Received: precision={requested!r}")
    policy = ("mixed_float16" if gpus() else "float32") if requested == "auto" else requested
    keras.config.set_dtype_policy(policy)
    return policy


def pick_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, MirroredStrategy with
    several GPUs, else the default strategy (one device)."""
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster")
    if cluster and sum(len(v) for v in cluster.values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus()) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def set_seed(seed):
    """Seeds Python, numpy and TensorFlow (and so Keras initialisers)."""
    import keras

    keras.utils.set_random_seed(int(seed))


def versions():
    """Library versions written next to every run's outputs."""
    import keras
    import numpy
    import tensorflow as tf

    found = {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
             "numpy": numpy.__version__}
    for name in ("segmentation_models", "numba", "pydicom", "nibabel", "SimpleITK"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", getattr(module, "Version", "?"))
        except Exception:  # Optional for the record; never fatal.
            found[name] = None
    return found
