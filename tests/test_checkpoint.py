"""`genesis2d.checkpoint.fit_resumable` on a model small enough to train in a second: a run stopped mid-epoch and
resumed logs what the uninterrupted run logs, its interrupted epoch's mean loss and metrics included."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from genesis2d.checkpoint import fit_resumable, load_state

X = (np.arange(48, dtype="float32").reshape(16, 3) % 7) / 7
Y = (X @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")) + 0.25


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    return model


def _stream(first_step):
    """The batches of the run from its step `first_step` on, as `fit_resumable` asks."""
    return tf.data.Dataset.from_tensor_slices((X, Y)).batch(2).repeat().skip(first_step)


class _Stop(keras.callbacks.Callback):
    """Stops the run (as a kill would) before its step `at_step`, counted over the whole run from 0."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.seen = at_step, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.seen == self.at_step:
            raise KeyboardInterrupt
        self.seen += 1


class _Epochs(keras.callbacks.Callback):
    """Every epoch's logs as `fit` gives them to callbacks (what CSVLogger writes to history.csv)."""

    def __init__(self, rows, steps=None):
        super().__init__()
        self.rows, self.steps = rows, steps

    def on_train_batch_end(self, batch, logs=None):
        if self.steps is not None:
            self.steps.append(logs["loss"])

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append((epoch, dict(logs)))


@pytest.mark.parametrize("stop_at", [3, 7])  # Steps 3 of epochs 0 and 1, each after a checkpoint at step 2.
def test_a_resumed_epoch_logs_the_mean_of_all_its_steps(tmp_path, stop_at):
    whole, steps = [], []
    fit_resumable(_model(), _stream, 3, 4, [_Epochs(whole, steps)], tmp_path / "whole", every_steps=2, verbose=0)
    stopped, rows = tmp_path / "stopped", []
    with pytest.raises(KeyboardInterrupt):
        fit_resumable(_model(), _stream, 3, 4, [_Epochs(rows), _Stop(stop_at)], stopped, every_steps=2, verbose=0)
    assert (load_state(stopped)["epoch"], load_state(stopped)["step"]) == (stop_at // 4, 2)
    fit_resumable(_model(), _stream, 3, 4, [_Epochs(rows)], stopped, every_steps=2, resume=True, verbose=0)
    assert [epoch for epoch, _ in rows] == [0, 1, 2]
    assert rows == whole  # Bit for bit: loss, mae, every epoch.
    # Independently: the interrupted epoch's loss is the mean of its four steps' losses (Keras logs each step's
    # running mean, so step k's loss is recovered as k * mean_k - (k - 1) * mean_(k-1)).
    epoch = stop_at // 4
    means = np.array(steps[4 * epoch : 4 * epoch + 4], dtype="float64")
    each = means * np.arange(1, 5) - np.concatenate([[0.0], means[:-1] * np.arange(1, 4)])
    assert rows[epoch][1]["loss"] == pytest.approx(each.mean(), rel=1e-5)
    assert rows[epoch][1]["loss"] != pytest.approx(each[2:].mean(), rel=1e-3)  # What the resume used to log.
