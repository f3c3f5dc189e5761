"""Is the pretraining learning? Stop a run that broke, and measure restoration against doing nothing.

A run can fail without a NaN (as the tests' tiny settings did at learning rate 1.0):
the encoder's features grow to ~1e14 while the sigmoid output saturates to one
value, and the loss stays finite. Such a run must not export its encoder. `health_guard`
stops it with one line. `restoration_baselines` gives the bars a restoration must
clear to have learned anything: the loss of returning the distorted slice unchanged
(identity) and that of the best constant output (the targets' variance).

A constant output seen through the moving BatchNorm statistics is not always a lost run:
in the first hundreds of steps those statistics (momentum 0.99) still lag weights that
move fast, while the same weights with the batch's own statistics restore the slices.
The guard tells the two apart: it stops only when the output is constant with the
batch's statistics too (`batch_statistics_output`), and says once that it saw the lag.
"""

import contextlib

import numpy as np

from plumbing.errors import InputError

ACTIVATION_LIMIT = 1e6  # Encoder features after BatchNorm are O(1-100) when healthy; broken runs reached 1e13-1e14.
COLLAPSE_RATIO = 1e-3  # Restored samples whose spread is under 0.1% of the targets' are one constant.
LOSS_GROWTH = 10.0  # A running training loss 10x its first value has exploded.


def restoration_baselines(pairs, steps=None):
    """(identity, constant): the losses to beat, over `steps` batches of (distorted, target) `pairs`.

    identity: the mean squared error of returning each distorted slice unchanged.
    constant: that of the best constant output (every pixel the targets' mean): their variance.
    Weighted like Keras's validation loss (every pixel of every slice counts alike), so they compare.
    """
    total, count, sums, squares = 0.0, 0, 0.0, 0.0
    for distorted, target in pairs.take(steps if steps else -1):
        if isinstance(target, dict):  # Restoration beside contrast: its targets.
            from genesis2d.contrastive import RESTORED

            target = target[RESTORED]
        distorted, target = np.asarray(distorted, np.float64), np.asarray(target, np.float64)
        total += float(np.sum((distorted - target) ** 2))
        sums, squares, count = sums + float(np.sum(target)), squares + float(np.sum(target**2)), count + target.size
    count = max(count, 1)
    return total / count, max(squares / count - (sums / count) ** 2, 0.0)


@contextlib.contextmanager
def _restored(variables):
    """Puts `variables` back to their values on entry when the block ends."""
    import keras

    kept = [(variable, keras.ops.convert_to_numpy(variable)) for variable in variables]
    try:
        yield
    finally:
        for variable, value in kept:
            variable.assign(value)


def output_keeping_metrics(model, inputs):
    """The model's outputs (inference mode), the epoch's metrics left as they were: a layer that tracks its own
    (a queue's `embedding_loss`, `genesis2d.contrastive.MomentumContrast`) would count these samples in the epoch's."""
    with _restored(getattr(model, "metrics_variables", [])):
        return model(inputs, training=False)


def batch_statistics_output(model, inputs):
    """The model's outputs with BatchNorm using the batch's own statistics, the moving ones left as they were."""
    # The moving statistics, a queue of keys (`genesis2d.contrastive.MomentumContrast`) and the epoch's metrics.
    with _restored([*model.non_trainable_variables, *getattr(model, "metrics_variables", [])]):
        return model(inputs, training=True)


def collapsed(restored, targets):
    """Whether the restored slices are one constant: their spread under COLLAPSE_RATIO of the targets'."""
    wanted = float(np.std(targets))
    return wanted > 0 and float(np.std(restored)) < COLLAPSE_RATIO * wanted


def embedding_spread(embeddings):
    """The mean over dimensions of the embeddings' standard deviation across the batch, times sqrt(dimensions).

    About 1 for L2-normalised embeddings spread over the sphere, 0 when every view maps to
    one point (the collapse a contrastive loss can fall into).
    """
    embeddings = np.asarray(embeddings, np.float64)
    return float(np.mean(np.std(embeddings, axis=0)) * np.sqrt(embeddings.shape[-1]))


def check_health(features, restored, targets, embeddings=None):
    """None if the encoder's features, the restored slices and the embeddings look healthy, else what went wrong."""
    largest = float(np.max(np.abs(features))) if np.size(features) else 0.0
    if not np.isfinite(largest) or largest > ACTIVATION_LIMIT:
        return (
            f"the encoder's activations blew up (largest {largest:.3g}, healthy ones stay under {ACTIVATION_LIMIT:g})"
        )
    if restored is not None and collapsed(restored, targets):
        return (
            f"the restored slices collapsed to a constant (their spread {float(np.std(restored)):.3g} against "
            f"the targets' {float(np.std(targets)):.3g})"
        )
    if embeddings is not None and embedding_spread(embeddings) < COLLAPSE_RATIO:
        return (
            f"the embeddings collapsed to one point (spread {embedding_spread(embeddings):.3g}, about 1 when "
            "spread over the sphere)"
        )
    return None


def output_collapsed(objective, outputs, targets):
    """Whether a model's outputs (restored slices or embeddings) are one constant."""
    from genesis2d.contrastive import outputs_of

    restored, embeddings = outputs_of(objective, outputs)
    return (restored is not None and collapsed(restored, targets)) or (
        embeddings is not None and embedding_spread(embeddings) < COLLAPSE_RATIO
    )


def health_guard(sample_pair, lr, every_steps=0, objective="genesis"):
    """A Keras callback stopping a run whose loss explodes, whose encoder blows up or whose output is constant.

    Args:
        sample_pair: (distorted, target) numpy arrays of a few validation slices, run
            through the model at every check.
        lr: float. The run's --lr, named in the advice.
        every_steps: int. Steps between checks of the activations and the output (0:
            epoch ends only); the loss is checked every step. Epoch ends are always
            checked, before the best model is exported (the guard comes first).
        objective: str. The pretraining's objective: its outputs are restored slices,
            embeddings (whose collapse to one point stops the run too) or both.

    A constant output through the moving BatchNorm statistics stops the run only when the
    output with the batch's statistics is constant too; otherwise the guard says once that
    the moving statistics lag and lets the run go on. The error names the step (the
    optimizer's count, so a resumed run counts on).
    """
    import keras

    from genesis2d.unet import encoder_of

    inputs, targets = sample_pair
    advice = f"lower --lr (now {lr:g}), e.g. to {lr / 10:g}, or check the inputs"

    class HealthGuard(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.first_loss = None
            self.lag_said = False
            self.encoder = encoder_of(self.model)

        def step(self):
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

        def stop(self, what):
            raise InputError("training", f"{what} at step {self.step()}; {advice}")

        def check(self):
            from genesis2d.contrastive import outputs_of

            features = keras.ops.convert_to_numpy(self.encoder(inputs, training=False))
            restored, embeddings = outputs_of(objective, output_keeping_metrics(self.model, inputs))
            problem = check_health(features, restored, targets, embeddings)
            if problem and "blew up" not in problem:  # Only a constant output: lost, or statistics that lag?
                if output_collapsed(objective, batch_statistics_output(self.model, inputs), targets):
                    self.stop(f"{problem} even with the batch's own BatchNorm statistics")
                if not self.lag_said:
                    print(
                        f"note: step {self.step()}: the outputs are constant through the moving BatchNorm "
                        "statistics but not with the batch's own: the statistics still lag the weights (the "
                        "validation loss shows it until they catch up); going on.",
                        flush=True,
                    )
                    self.lag_said = True
            elif problem:
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
