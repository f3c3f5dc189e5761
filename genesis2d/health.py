"""Is the pretraining learning? Stop a run that broke, and measure restoration against doing nothing.

A run can fail without a NaN (as the tests' tiny settings did at learning rate 1.0):
the encoder's features grow to ~1e14 while the sigmoid output saturates to one
value, and the loss stays finite. Such a run must not export its encoder. `health_guard`
stops it with one line, and `identity_loss` is the loss of returning the distorted slice
unchanged, the bar a restoration must clear to have learned anything.
"""

import numpy as np

from plumbing.errors import InputError

ACTIVATION_LIMIT = 1e6  # Encoder features after BatchNorm are O(1-100) when healthy; broken runs reached 1e13-1e14.
COLLAPSE_RATIO = 1e-3  # Restored samples whose spread is under 0.1% of the targets' are one constant.
LOSS_GROWTH = 10.0  # A running training loss 10x its first value has exploded.


def identity_loss(pairs, steps=None):
    """The mean squared error of returning each distorted slice unchanged, over `steps` batches of `pairs`.

    Weighted like Keras's validation loss (every slice counts alike), so the two compare.
    """
    total, count = 0.0, 0
    for distorted, target in pairs.take(steps if steps else -1):
        distorted, target = np.asarray(distorted, np.float64), np.asarray(target, np.float64)
        total += float(np.sum((distorted - target) ** 2))
        count += target.size
    return total / max(count, 1)


def check_health(features, restored, targets):
    """None if the encoder's features and the restored slices look healthy, else what went wrong."""
    largest = float(np.max(np.abs(features))) if np.size(features) else 0.0
    if not np.isfinite(largest) or largest > ACTIVATION_LIMIT:
        return f"the encoder's activations blew up (largest {largest:.3g}, healthy ones stay under {ACTIVATION_LIMIT:g})"
    spread, wanted = float(np.std(restored)), float(np.std(targets))
    if wanted > 0 and spread < COLLAPSE_RATIO * wanted:
        return (f"the restored slices collapsed to a constant (their spread {spread:.3g} against the targets' "
                f"{wanted:.3g})")
    return None


def health_guard(sample_pair, lr, every_steps=0):
    """A Keras callback stopping a run whose loss explodes, whose encoder blows up or whose output is constant.

    Args:
        sample_pair: (distorted, target) numpy arrays of a few validation slices, run
            through the model at every check.
        lr: float. The run's --lr, named in the advice.
        every_steps: int. Steps between checks of the activations and the output (0:
            epoch ends only); the loss is checked every step. Epoch ends are always
            checked, before the best model is exported (the guard comes first).

    The error names the step (the optimizer's count, so a resumed run counts on).
    """
    import keras

    from genesis2d.unet import encoder_of

    inputs, targets = sample_pair
    advice = f"lower --lr (now {lr:g}), e.g. to {lr / 10:g}, or check the inputs"

    class HealthGuard(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.first_loss = None
            self.encoder = encoder_of(self.model)

        def step(self):
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

        def stop(self, what):
            raise InputError("training", f"{what} at step {self.step()}; {advice}")

        def check(self):
            features = keras.ops.convert_to_numpy(self.encoder(inputs, training=False))
            restored = keras.ops.convert_to_numpy(self.model(inputs, training=False))
            problem = check_health(features, restored, targets)
            if problem:
                self.stop(problem)

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and np.isfinite(float(loss)):
                self.first_loss = float(loss) if self.first_loss is None else self.first_loss
                if float(loss) > LOSS_GROWTH * self.first_loss > 0:
                    self.stop(f"the training loss exploded ({float(loss):.3g}, from {self.first_loss:.3g})")
            if every_steps and self.step() % every_steps == 0:
                self.check()

        def on_epoch_end(self, epoch, logs=None):
            self.check()

    return HealthGuard()
