"""The thesis's head and two-phase fine-tuning (thesis 4.2), written once for every downstream task.

The head is thesis Fig. 4.8: encoder, GlobalAveragePooling2D, Flatten,
Dropout(0.5), Dense(relu, L2), Dropout(0.5), Dense(1, sigmoid). Training has two
phases (thesis 4.2.2): warm-up epochs with the encoder frozen, then all layers
fine-tuned; SGD on binary cross-entropy, ReduceLROnPlateau, AUC every epoch, and
the best epoch by validation AUC kept.
"""

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from plumbing.atomic import atomic_path


def build_classifier(encoder, units=256, l2=1e-4, dropout=0.5):
    """Thesis Fig. 4.8: the encoder, then GAP, Flatten, Dropout, Dense(relu, L2), Dropout, Dense(1, sigmoid).

    Args:
        encoder: keras.Model ending in `encoder_output`; nested, so freezing it is one switch.
        units: int. Hidden units. Defaults to 256.
        l2: float. L2 penalty on the hidden layer's kernel. Defaults to 1e-4.
        dropout: float. Both dropout rates (thesis 4.2.1.6). Defaults to 0.5.
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


@dataclass(frozen=True)
class Head:
    """The classification head of thesis Fig. 4.8 (see `build_classifier`)."""

    units: int = 256
    l2: float = 1e-4
    dropout: float = 0.5  # Thesis 4.2.1.6.


@dataclass(frozen=True)
class Schedule:
    """Two-phase training (thesis 4.2.2): warm-up with the encoder frozen, then fine-tuning.

    Attributes:
        epochs: fine-tuning epochs after the warm-up.
        warmup_epochs: epochs with the encoder frozen (0 skips the phase).
        batch_size: images per batch.
        lr, momentum: SGD (thesis: 1e-3, 0.9).
        lr_factor, lr_patience: ReduceLROnPlateau on the validation loss.
        steps_per_epoch: batches per epoch, the data repeated as needed; None for one pass.
        bn_momentum: momentum of the BatchNormalization moving statistics while fine-tuning;
            None keeps the layers' own (Keras: 0.99).
    """

    epochs: int
    warmup_epochs: int
    batch_size: int
    lr: float = 1e-3
    momentum: float = 0.9
    lr_factor: float = 0.1
    lr_patience: int = 3
    steps_per_epoch: int | None = None
    bn_momentum: float | None = None


def _compile(model, schedule):
    import keras

    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule.lr, momentum=schedule.momentum),
                  loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")])


def train_two_phase(model, encoder, train, validation, schedule, out, verbose=1):
    """Warm-up with the encoder frozen, then fine-tuning of all layers; keeps the best epoch.

    Args:
        model: the classifier of `build_classifier(encoder)`.
        encoder: the nested encoder model, frozen during the warm-up.
        train, validation: tf.data datasets of (image, label) batches; `train` is repeated
            when `schedule.steps_per_epoch` is set.
        schedule: Schedule.
        out: folder for `history.csv` and `best.weights.h5`.
        verbose: Keras progress, 0, 1 or 2.

    Returns:
        pandas.DataFrame of the per-epoch history (both phases). The model holds the
        weights of the epoch with the best validation AUC.
    """
    import keras
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "history.csv"
    if history_path.exists():
        history_path.unlink()
    from plumbing.runtime import divergence_guard

    best, guard = KeepBest(), divergence_guard()
    logger = keras.callbacks.CSVLogger(str(history_path), append=True)
    board = keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False, update_freq="epoch")
    if schedule.steps_per_epoch:
        train = train.repeat()
    fit = dict(validation_data=validation, steps_per_epoch=schedule.steps_per_epoch, verbose=verbose, shuffle=False)
    warmup = schedule.warmup_epochs
    if warmup:
        encoder.trainable = False  # Phase 1: train the new head only (thesis 4.2.2, 'warm up').
        _compile(model, schedule)
        model.fit(train, epochs=warmup, callbacks=[guard, best, logger, board], **fit)
    encoder.trainable = True  # Phase 2: fine-tune every layer; a new optimizer for the new variables.
    _compile(model, schedule)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=schedule.lr_factor,
                                                patience=schedule.lr_patience, verbose=1 if verbose else 0)
    model.fit(train, initial_epoch=warmup, epochs=warmup + schedule.epochs, callbacks=[guard, best, logger, plateau, board], **fit)
    best.restore(model)
    with atomic_path(out / "best.weights.h5") as tmp:
        model.save_weights(tmp)
    return pd.read_csv(history_path)


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
        (model with the best epoch's weights, per-epoch history DataFrame).
    """
    import keras

    from transfer.encoders import load_encoder

    keras.utils.set_random_seed(seed)
    encoder = load_encoder(encoder_spec.init, encoder_spec.backbone, input_shape, encoder_spec.encoder_path,
                           encoder_spec.imagenet_weights, encoder_spec.radimagenet_weights)
    if schedule.bn_momentum is not None:
        for layer in encoder.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = schedule.bn_momentum
    model = build_classifier(encoder, head.units, head.l2, head.dropout)
    history = train_two_phase(model, encoder, train, validation, schedule, out, verbose)
    return model, history


class KeepBest(keras.callbacks.Callback):
    """Holds the weights of the epoch with the highest validation AUC, across both phases."""

    def __init__(self, monitor="val_auc"):
        super().__init__()
        self.monitor, self.best, self.weights, self.epoch = monitor, -np.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value) and value > self.best:
            self.best, self.weights, self.epoch = float(value), self.model.get_weights(), epoch

    def restore(self, model):
        if self.weights is not None:
            model.set_weights(self.weights)


def predict(model, data):
    """Probabilities (N,) for a tf.data dataset of image batches, or of (image, label) batches, in order."""
    if isinstance(data.element_spec, tuple):
        data = data.map(lambda x, *rest: x)
    return model.predict(data, verbose=0).ravel().astype(float)


