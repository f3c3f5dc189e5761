"""The pretraining learning rate: a linear warm-up to the peak, then ReduceLROnPlateau.

Models Genesis trains with SGD at learning rate 1.0 (momentum 0.9) from the first step.
At 224x224 and batch 32 that start throws the U-Net's sigmoid output into saturation
within 8 steps and it never comes back (`benchmarks/pretrain_defaults.py`); ramping the
rate up linearly over the first steps, as large-rate SGD is usually started (Goyal et al.
2017, "Accurate, large minibatch SGD"), keeps the same peak and trains.
"""

import keras


def make_optimizer(name, lr, momentum=0.9, clipnorm=None):
    """SGD with momentum (Models Genesis) or Adam, the gradients' global norm clipped to `clipnorm` (None: not)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum, global_clipnorm=clipnorm)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr, global_clipnorm=clipnorm)
    raise ValueError(f"optimizer must be 'sgd' or 'adam'. Received: optimizer={name!r}")


def warmup_rate(step, peak, steps):
    """The learning rate of optimizer step `step` (0-based): peak * (step + 1) / steps during the warm-up, then peak."""
    return peak if step >= steps else peak * (step + 1) / steps


class LinearWarmUp(keras.callbacks.Callback):
    """Sets the learning rate of each of the first `steps` optimizer steps to `warmup_rate`.

    It reads the optimizer's own step count, so a resumed run ramps exactly as one that
    never stopped. After the warm-up it leaves the rate alone (ReduceLROnPlateau's).

    Args:
        peak: float. The rate the ramp ends at (--lr).
        steps: int. Warm-up steps; 0 leaves every rate alone.
    """

    def __init__(self, peak, steps):
        super().__init__()
        self.peak, self.steps = float(peak), int(steps)

    def on_train_batch_begin(self, batch, logs=None):
        if not self.steps:
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step < self.steps:  # The ramp's last step is at the peak; after it the rate is the plateau's.
            self.model.optimizer.learning_rate = warmup_rate(step, self.peak, self.steps)


class PlateauAfterWarmUp(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that only watches once the warm-up is over (a rising rate is not lowered).

    During the warm-up it keeps the best value seen, without counting epochs towards its patience.
    """

    def __init__(self, warmup_steps=0, **kwargs):
        super().__init__(**kwargs)
        self.warmup_steps = int(warmup_steps)

    def on_epoch_end(self, epoch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step >= self.warmup_steps:
            return super().on_epoch_end(epoch, logs)
        if self.monitor_op is None:
            self._set_monitor_op()
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        current = (logs or {}).get(self.monitor)
        if current is not None and self._is_improvement(current, self.best):
            self.best = current
        self.wait = 0
