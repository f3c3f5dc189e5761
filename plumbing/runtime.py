"""Pick precision by the hardware found; determinism; derive seeds; stop a diverging run; record runs."""

import os
import platform
import sys
from pathlib import Path

# Independent random streams derived from one --seed (see `derive_seed`); a named
# stream per use, so no two uses share numbers by accident.
STREAM_TRAIN_DISTORTIONS = 1  # Pretraining: the first training batch's distortion seed.
STREAM_VAL_DISTORTIONS = 2  # Pretraining: the validation batches' distortion seeds.
STREAM_FOLD = 3  # Downstream: one stream per cross-validation fold or repeat.
STREAM_WORKER_DATA = 4  # Pretraining on several machines: each worker's data order and crops.


def gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BFLOAT16_FROM = 8  # GPU compute capability (A100, H100, H200) that runs bfloat16 at float16's speed.


def auto_precision():
    """What 'auto' picks: `mixed_bfloat16` on a GPU of compute capability 8.0 or more (float16's speed, float32's
    range, so no loss scaling), `mixed_float16` on an older GPU (tensor cores), `float32` on a CPU (where the
    measured gain of bfloat16 depends on the CPU; ask for it with --precision mixed_bfloat16)."""
    import tensorflow as tf

    found = gpus()
    if not found:
        return "float32"
    capability = tf.config.experimental.get_device_details(found[0]).get("compute_capability") or (0, 0)
    return "mixed_bfloat16" if capability[0] >= BFLOAT16_FROM else "mixed_float16"


def pick_precision(requested="auto"):
    """Sets and returns the Keras dtype policy: `requested`, or for 'auto' `auto_precision()`'s choice."""
    import keras

    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={requested!r}")
    policy = auto_precision() if requested == "auto" else requested
    keras.config.set_dtype_policy(policy)
    return policy


def configure_determinism(requested=None):
    """Turns TensorFlow's op determinism on or off for this process; returns whether it is on.

    None (the default of every command's --deterministic) means on without a GPU and off
    with one, where deterministic kernels cost speed. With it on, the same seed gives
    bit-identical weights and predictions (tf.data's parallel maps and stateful random
    ops included). Once on, it stays on for the process.
    """
    import tensorflow as tf

    deterministic = (not gpus()) if requested is None else bool(requested)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return deterministic


def divergence_guard():
    """A Keras callback that stops training at the first non-finite loss with one clear sentence.

    The sentence names the epoch and what to try; `plumbing.cli.run_command` prints it
    as one line, where Keras would go on and hand NaN probabilities to the metrics.
    """
    import keras
    import numpy as np

    from plumbing.errors import InputError

    class DivergenceGuard(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                raise InputError(
                    "training",
                    f"diverged at epoch {getattr(self, 'epoch', 0) + 1}: the loss is "
                    f"{float(loss)}; lower --lr (or check the inputs)",
                )

    return DivergenceGuard()


def set_seed(seed):
    """Seeds Python, numpy and TensorFlow (and so Keras initialisers)."""
    import keras

    keras.utils.set_random_seed(int(seed))


def derive_seed(seed, *keys):
    """A 31-bit seed derived from `seed` and integer `keys` (numpy's SeedSequence).

    Derived seeds of different keys are independent streams, unlike `seed + k`,
    where run seed 0's fold 1 would equal run seed 1's fold 0.
    """
    import numpy as np

    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0] >> 1)


def write_run_record(out, settings, extra=None):
    """Writes run.json beside a run's outputs: resolved settings (a dict or namespace), command, library versions."""
    from plumbing.atomic import write_json

    settings = settings if isinstance(settings, dict) else vars(settings)
    record = {"args": settings, "command": " ".join(sys.argv), "versions": versions()}
    record.update(extra or {})
    write_json(Path(out) / "run.json", record)
    return record


DISTRIBUTIONS = (
    "tensorflow",
    "keras",
    "numpy",
    "segmentation-models",
    "image-classifiers",
    "keras-applications",
    "efficientnet",
    "numba",
    "pydicom",
    "nibabel",
    "SimpleITK",
    "opencv-python-headless",
    "scikit-learn",
    "scipy",
    "pandas",
    "h5py",
    "PyYAML",
)


# The vector instruction sets that decide which CPU kernels (oneDNN's, Eigen's) TensorFlow runs, and so the
# last bits of float results, as /proc/cpuinfo names them: x86's, then Arm's.
VECTOR_ISA = tuple(
    "sse4_2 avx avx2 fma f16c avx_vnni avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_tile "
    "amx_int8 amx_bf16 asimd sve sve2".split()
)
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"  # TensorFlow's switch for its oneDNN CPU kernels (on by default on x86).


def cpu(cpuinfo="/proc/cpuinfo"):
    """The CPU a run ran on: its model, its vector instruction sets and the oneDNN switch.

    Reads `cpuinfo` (Linux); elsewhere, or where it cannot be read, the model is
    `platform.processor()` and the instruction sets None (not known, unlike [], none).
    """
    model, flags = None, None
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "features") and flags is None:  # x86, Arm.
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model or platform.processor() or platform.machine() or None,
        "isa": None if flags is None else [name for name in VECTOR_ISA if name in flags],
        ONEDNN_VARIABLE: os.environ.get(ONEDNN_VARIABLE),
    }


def versions():
    """Versions of Python and of every library a run depends on, and the CPU, written next to its outputs."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # Optional for the record; never fatal.
            found[name] = None
    found["cpu"] = cpu()
    return found
