"""Checkpoints that let a killed training run resume where it stopped.

`ResumableCheckpoint` saves the model's weights together with the optimizer's
state (moments, iteration count, learning rate) every N steps and at every epoch
end, and a `state.json` naming that file with the epoch, the step within it and
the state of the callbacks that count epochs (ReduceLROnPlateau, EarlyStopping).
Each write is atomic and `state.json` is replaced last, so a run killed at any
moment resumes from the newest complete checkpoint and loses at most the steps
since it.
"""

import json
from pathlib import Path

import keras
import numpy as np

from plumbing.atomic import atomic_path, write_json

STATE_FILE = "state.json"
_TRACKED = {  # Callback attributes that must survive a restart.
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch"),
}


def load_state(directory):
    """The saved state dict, or None when the folder holds no checkpoint."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state every `every_steps` steps and at each epoch end.

    Args:
        directory: str or Path. Folder of the checkpoints (only this callback writes there).
        steps_per_epoch: int. Full length of an epoch, to number the steps.
        every_steps: int. Steps between mid-epoch checkpoints; 0 for epoch ends only.
        start_step: int. Steps of the current epoch already done before this `fit`
            (when resuming mid-epoch).
        restore: dict or None. A state from `load_state` to load at the start of training.
        extra_state: callable returning a JSON-able dict saved with each checkpoint.
        tracked: the run's other callbacks; the counters of those that count epochs
            (ReduceLROnPlateau, EarlyStopping) are saved and restored with the weights.
        write: bool. False on the workers of a multi-machine run other than the chief,
            which keep count but write nothing.
        keep_metrics: bool. Keep the model's metric sums mid-epoch (`fit` computes the logs from them); False where
            a loop of its own keeps its sums (`extra_state`).
    """

    def __init__(
        self,
        directory,
        steps_per_epoch,
        every_steps=500,
        start_step=0,
        restore=None,
        extra_state=None,
        tracked=(),
        write=True,
        keep_metrics=True,
    ):
        super().__init__()
        self.write = write
        self.keep_metrics = keep_metrics
        self.tracked = [cb for cb in tracked if _tracked_attributes(cb)]
        self.directory = Path(directory)
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_steps = int(every_steps)
        self.start_step = int(start_step)
        self.restore = restore
        # Mid-epoch, the running sums of the epoch's metrics (the loss among them) at the checkpoint: restored, the
        # resumed epoch's logged means cover all its steps, as the uninterrupted run's do, not only the resumed ones.
        self.epoch_metrics = (restore or {}).get("metrics") if self.start_step else None
        self.extra_state = extra_state or (lambda: {})
        self.epoch = 0

    def on_train_begin(self, logs=None):
        # Runs after the other callbacks' own on_train_begin (which reset them), so the restored values stick.
        if self.restore:
            if self.restore.get("weights"):
                if self.model.optimizer is not None and not self.model.optimizer.built:
                    self.model.optimizer.build(self.model.trainable_variables)
                self.model.load_weights(self.directory / self.restore["weights"])
            restore_counters(self.tracked, self.restore.get("callbacks"))
            self.restore = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch_metrics:  # The first step of a resumed partial epoch: its metrics now built and updated.
            add_metric_values(self.model, self.epoch_metrics)
            self.epoch_metrics = None
        step = self.start_step + batch + 1
        if self.every_steps and step % self.every_steps == 0 and step < self.steps_per_epoch:
            self.save(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self.start_step = 0
        self.save(epoch + 1, 0)

    def save(self, epoch, step):
        """Writes `ckpt-E{epoch}-S{step}.weights.h5`, then state.json, then drops older files."""
        if not self.write:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-E{epoch:04d}-S{step:07d}.weights.h5"
        with atomic_path(self.directory / name) as tmp:
            self.model.save_weights(tmp)
        callbacks = _snapshot(self.tracked)
        write_json(
            self.directory / STATE_FILE,
            {
                "epoch": epoch,
                "step": step,
                "weights": name,
                "steps_per_epoch": self.steps_per_epoch,
                "callbacks": callbacks,
                "metrics": metric_values(self.model) if step and self.keep_metrics else None,
                **self.extra_state(),
            },
        )
        for old in self.directory.glob("ckpt-*.weights.h5"):
            if old.name != name:
                old.unlink()


def metric_values(model):
    """The values of the model's metric variables (each metric's running total and count), as JSON lists."""
    return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for m in model.metrics for v in m.variables]


def add_metric_values(model, values):
    """Adds what `metric_values` saved to the metrics' variables, in the same order.

    Keras builds a model's compiled metrics in its first traced step, so a resumed epoch's sums are added after its
    first step rather than set before it. Keras's metrics keep sums (a mean's total and count, a curve's confusion
    counts), and float addition commutes, so the sums equal the uninterrupted run's bit for bit.
    """
    variables = [v for m in model.metrics for v in m.variables]
    if len(variables) != len(values):
        raise ValueError(f"the checkpoint holds {len(values)} metric values, the model has {len(variables)}")
    for variable, value in zip(variables, values):
        variable.assign(variable + np.asarray(value, dtype=variable.dtype))


def restore_counters(callbacks, saved):
    """Sets the counters that `_snapshot` saved back on the callbacks that count epochs."""
    for callback, values in zip([cb for cb in callbacks if _tracked_attributes(cb)], saved or []):
        for name, value in values.items():
            setattr(callback, name, value)


def mark_finished(checkpoint_dir, settings=None):
    """Marks the last checkpoint as a finished run's, with the `settings` that made it.

    `plumbing.fingerprint.finished_with` then reads it as it reads a downstream unit's
    record: the run is reused under the same settings; --resume with more epochs continues it.
    """
    final = load_state(checkpoint_dir)
    if final is not None:
        extra = {} if settings is None else {"settings": json.loads(json.dumps(settings, default=str))}
        write_json(Path(checkpoint_dir) / STATE_FILE, {**final, **extra, "finished": True})


def _snapshot(callbacks):
    return [
        {attr: _jsonable(getattr(cb, attr, None)) for attr in _tracked_attributes(cb)}
        for cb in callbacks
        if _tracked_attributes(cb)
    ]


def _tracked_attributes(callback):
    """The attributes of `callback` that a checkpoint keeps (its class's or a parent's in _TRACKED), else ()."""
    return next((attrs for kind, attrs in _TRACKED.items() if isinstance(callback, kind)), ())


def _jsonable(value):
    if isinstance(value, (bool, int, np.integer)):
        return int(value)
    try:
        return float(value) if hasattr(value, "__float__") else value
    except (TypeError, ValueError):
        return None


def fit_resumable(
    model,
    data,
    epochs,
    steps_per_epoch,
    callbacks,
    checkpoint_dir,
    every_steps=500,
    resume=False,
    extra_state=None,
    **fit_kwargs,
):
    """`model.fit` that checkpoints as it goes and, with `resume=True`, continues a killed run.

    A run killed mid-epoch resumes with the remaining steps of that epoch, then
    goes on with full epochs; the epoch count, optimizer state, learning rate and
    the plateau/early-stopping counters carry over. `data` is a dataset, or a callable
    giving the stream that starts at a given step of the run (`data(first_step)`): each
    `fit` then reads the batches an uninterrupted run would read, so the resumed run ends
    where it would have.

    Returns:
        (list of keras History objects, the state resumed from or None).
    """
    state = load_state(checkpoint_dir) if resume else None
    epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    if state and state.get("steps_per_epoch") != steps_per_epoch:
        step = 0  # Different epoch length: restart the interrupted epoch rather than guess.
    histories = []
    restore = state
    while epoch < epochs:
        steps = steps_per_epoch - step
        checkpoint = ResumableCheckpoint(
            checkpoint_dir,
            steps_per_epoch,
            every_steps,
            start_step=step,
            restore=restore,
            extra_state=extra_state,
            tracked=callbacks,
        )
        last = epoch + 1 if step else epochs  # A partial epoch is fitted on its own, then full ones.
        stream = data(epoch * steps_per_epoch + step) if callable(data) else data
        history = model.fit(
            stream,
            initial_epoch=epoch,
            epochs=last,
            steps_per_epoch=steps,
            callbacks=[*callbacks, checkpoint],
            **fit_kwargs,
        )
        histories.append(history)
        # The next fit resets the callbacks in on_train_begin: carry their counters over.
        restore, step = {"callbacks": _snapshot(callbacks)}, 0
        epoch = last
        if model.stop_training:
            break
    return histories, state
