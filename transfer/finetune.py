"""The thesis's head and two-phase fine-tuning (thesis 4.2), written once for every downstream task.

The head is thesis Fig. 4.8: encoder, GlobalAveragePooling2D, Flatten,
Dropout(0.5), Dense(relu, L2), Dropout(0.5), Dense(1, sigmoid). Training has two
phases (thesis 4.2.2): warm-up epochs with the encoder frozen, then all layers
fine-tuned; SGD on binary cross-entropy, ReduceLROnPlateau, AUC every epoch, and
the best epoch by validation AUC kept.
"""

from pathlib import Path

import keras
import numpy as np

from plumbing.atomic import atomic_path, writable_folder
from transfer.schedules import SELECTIONS, Head, Schedule  # noqa: F401  The recipe's types, keras-free, used here.


def build_classifier(encoder, units, dropout, l2=0.0):
    """Thesis Fig. 4.8: the encoder, then GAP, Flatten, Dropout, Dense(relu, L2), Dropout, Dense(1, sigmoid).

    The downstream commands' values (256 units, L2 1e-4, dropout 0.5) are
    `transfer.options.TransferOptions`'s defaults, with their sources.

    Args:
        encoder: keras.Model ending in `encoder_output`; nested, so freezing it is one switch.
        units: int. Hidden units.
        dropout: float. Both dropout rates.
        l2: float. L2 penalty on the hidden layer's kernel. Defaults to 0 (none).
    """
    import keras
    from keras import layers

    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    image = keras.Input(encoder.input_shape[1:], name="image")
    x = encoder(image)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout1")(x)
    x = layers.Dense(units, activation="relu", kernel_regularizer=keras.regularizers.L2(l2), name="hidden")(x)
    x = layers.Dropout(dropout, name="dropout2")(x)
    output = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(image, output, name="classifier")


def _compile(model, schedule):
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule.lr, momentum=schedule.momentum),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def train_two_phase(model, encoder, train, validation, schedule, out, verbose=1):
    """Warm-up with the encoder frozen, then fine-tuning of all layers; keeps the epoch the selection rule picks.

    Args:
        model: the classifier of `build_classifier(encoder)`.
        encoder: the nested encoder model, frozen during the warm-up.
        train, validation: tf.data datasets of (image, label) batches; `train` is repeated
            when `schedule.steps_per_epoch` is set. `validation` is None with
            `schedule.selection == 'last'`.
        schedule: Schedule.
        out: folder for `history.csv` and `best.weights.h5`.
        verbose: Keras progress, 0, 1 or 2.

    Returns:
        (history DataFrame of both phases, index of the epoch kept). The model holds that
        epoch's weights: the best validation AUC (ties to the later epoch with the lower
        validation loss), or the last epoch with `selection == 'last'`.
    """
    import keras
    import pandas as pd

    from plumbing.runtime import divergence_guard

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "history.csv"
    if history_path.exists():
        history_path.unlink()
    last = schedule.selection == "last"
    best, guard = KeepBest(), divergence_guard()
    logger = keras.callbacks.CSVLogger(str(history_path), append=True)
    board = keras.callbacks.TensorBoard(
        log_dir=str(writable_folder(out / "logs")), write_graph=False, update_freq="epoch"
    )
    callbacks = [guard, logger, board] if last else [guard, best, logger, board]
    if schedule.steps_per_epoch:
        train = train.repeat()
    fit = dict(
        validation_data=None if last else validation,
        steps_per_epoch=schedule.steps_per_epoch,
        verbose=verbose,
        shuffle=False,
    )
    warmup = schedule.warmup_epochs
    if warmup:
        encoder.trainable = False  # Phase 1: train the new head only (thesis 4.2.2, 'warm up').
        _compile(model, schedule)
        model.fit(train, epochs=warmup, callbacks=callbacks, **fit)
    encoder.trainable = True  # Phase 2: fine-tune every layer; a new optimizer for the new variables.
    _compile(model, schedule)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss" if last else "val_loss",
        factor=schedule.lr_factor,
        patience=schedule.lr_patience,
        verbose=1 if verbose else 0,
    )
    model.fit(train, initial_epoch=warmup, epochs=warmup + schedule.epochs, callbacks=[*callbacks, plateau], **fit)
    kept = warmup + schedule.epochs - 1
    if not last:
        best.restore(model)
        kept = best.epoch if best.epoch is not None else kept
    with atomic_path(out / "best.weights.h5") as tmp:
        model.save_weights(tmp)
    return pd.read_csv(history_path), kept


def fine_tune(encoder_spec, head, schedule, input_shape, train, validation, out, seed, verbose=1):
    """The downstream recipe, once for every task: seed, load the encoder, add the head, train two phases.

    Args:
        encoder_spec: EncoderSpec.
        head: Head.
        schedule: Schedule.
        input_shape: (H, W, 1).
        train, validation: tf.data datasets of (image, label) batches.
        out: folder for the run's history and best weights.
        seed: int. Seeds the head's and (for scratch) the encoder's initial weights and dropout.

    Returns:
        (model with the kept epoch's weights, per-epoch history DataFrame, index of the kept epoch).
    """
    import keras

    keras.utils.set_random_seed(seed)
    encoder = encoder_spec.load(input_shape)
    if schedule.bn_momentum is not None:
        for layer in encoder.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = schedule.bn_momentum
    model = build_classifier(encoder, head.units, head.dropout, head.l2)
    history, kept = train_two_phase(model, encoder, train, validation, schedule, out, verbose)
    return model, history, kept


class KeepBest(keras.callbacks.Callback):
    """Holds the weights of the epoch with the highest validation AUC, across both phases.

    A tie of the AUC (common on small validation sets, where it saturates at 1.0) goes to
    the later epoch when its validation loss is lower: a tie never keeps a less trained
    model that fits the validation data worse.
    """

    def __init__(self, monitor="val_auc", tie_breaker="val_loss"):
        super().__init__()
        self.monitor, self.tie_breaker = monitor, tie_breaker
        self.best, self.best_loss, self.weights, self.epoch = -np.inf, np.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value, loss = logs.get(self.monitor), logs.get(self.tie_breaker, np.inf)
        if value is None or not np.isfinite(value):
            return
        if value > self.best or (value == self.best and np.isfinite(loss) and loss < self.best_loss):
            self.best, self.best_loss = float(value), float(loss)
            self.weights, self.epoch = self.model.get_weights(), epoch

    def restore(self, model):
        if self.weights is not None:
            model.set_weights(self.weights)


def predict(model, data):
    """Probabilities (N,) for a tf.data dataset of image batches, or of (image, label) batches, in order."""
    return predicted(model, data).ravel().astype(float)


def predicted(model, data):
    """`model.predict` over a tf.data dataset of image batches, or of (image, label) batches, in order, read to its
    end without Keras's warning that the input ran out of data."""
    import warnings

    if isinstance(data.element_spec, tuple):
        data = data.map(lambda x, *rest: x)
    with warnings.catch_warnings():
        # Keras warns at the end of a dataset whose length it was not told (a streamed test fold) as if training
        # had been cut short; a prediction reads to the end by design.
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        return model.predict(data, verbose=0)
