"""Seconds per training step of the study's models, measured on this machine at the sizes they will run at.

The study's plan (`study.experiment`) projects each step's time from these figures, and
`benchmarks/thesis_rehearsal.py` prints them at the thesis's sizes: one measurement, two uses.
A step is one `train_on_batch` of random data of the real input size, batch and precision,
after one untimed step (tracing and kernel selection); the median of `steps` timed steps.
A fine-tuning cell is measured with its encoder trainable (its second phase, the longer and
slower one); the warm-up epochs, with the encoder frozen, take less, so its projection is an
upper bound.
"""

import functools
import resource
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StepTime:
    """What one model costs here: seconds per training step and per inference batch, and the process's peak memory."""

    model: str
    image_size: int
    batch_size: int
    precision: str
    train_seconds: float
    predict_seconds: float
    peak_rss_gb: float
    device: str
    parameters: int
    setup_seconds: float  # Building, compiling and the first (traced) step: paid once per run of the model.


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB.


def _timed(call, steps):
    call()  # Traced and warmed, not among the timed steps.
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device():
    from plumbing.runtime import gpus

    found = gpus()
    return f"{len(found)} GPU(s)" if found else "CPU"


def time_model(model, loss, name, image_size, batch_size, precision, steps=3, seed=0, started=None):
    """A StepTime of a compiled-here Keras `model` taking (batch, size, size, 1) input; `started`: when its
    building began (perf_counter), for the setup time."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, image_size, image_size, 1), dtype=np.float32)
    y = rng.random((batch_size, *model.output_shape[1:]), dtype=np.float32)
    if loss == "binary_crossentropy":
        y = (y > 0.5).astype(np.float32)
    started = time.perf_counter() if started is None else started
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss)
    model.train_on_batch(x, y)
    setup = time.perf_counter() - started
    train = _timed(lambda: model.train_on_batch(x, y), steps)
    predict = _timed(lambda: model.predict_on_batch(x), steps)
    peak = _peak_rss_gb()
    parameters = model.count_params()
    return StepTime(name, image_size, batch_size, precision, train, predict, peak, _device(), parameters, setup)


def pretraining_step(backbone, image_size, batch_size, precision="auto", norm="batch", steps=3):
    """The StepTime of the restoration U-Net of `backbone` (genesis2d.unet), as pretraining builds it."""
    import keras

    from genesis2d.unet import build_unet
    from plumbing.runtime import pick_precision

    policy = pick_precision(precision)
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    model = build_unet(backbone, (image_size, image_size, 1), norm=norm)
    name = f"U-Net {backbone} (pretraining)"
    result = time_model(model, "mse", name, image_size, batch_size, policy, steps, started=started)
    keras.backend.clear_session()
    return result


def classifier_step(backbone, image_size, batch_size, precision="auto", units=256, dropout=0.5, l2=1e-4, steps=3):
    """The StepTime of the thesis's classifier (transfer.finetune) on a `backbone` encoder, fine-tuned whole."""
    import keras

    from genesis2d.unet import build_encoder
    from plumbing.runtime import pick_precision
    from transfer.finetune import build_classifier

    policy = pick_precision(precision)
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    encoder = build_encoder(backbone, (image_size, image_size, 1))
    model = build_classifier(encoder, units, dropout, l2)
    name = f"classifier {backbone} (fine-tuning)"
    result = time_model(model, "binary_crossentropy", name, image_size, batch_size, policy, steps, started=started)
    keras.backend.clear_session()
    return result


PARAMETER_PROBE_SIZE = 32  # The smallest side every backbone takes: a model's weights do not depend on its input size.


@functools.cache
def parameters(kind, backbone, norm="batch", units=256):
    """The weights (count) of the model a `kind` step trains ('pretraining': the restoration U-Net; otherwise the
    thesis's classifier on the encoder), built without timing it: a step's disk is known when its time is not
    measured (--measure-steps 0). Both models are fully convolutional before global pooling, so the count is the
    one at any input size."""
    import keras

    from genesis2d.unet import build_encoder, build_unet
    from transfer.finetune import build_classifier

    shape = (PARAMETER_PROBE_SIZE, PARAMETER_PROBE_SIZE, 1)
    if kind == "pretraining":
        model = build_unet(backbone, shape, norm=norm)
    else:
        model = build_classifier(build_encoder(backbone, shape), units, 0.5, 1e-4)
    count = model.count_params()
    keras.backend.clear_session()
    return count
