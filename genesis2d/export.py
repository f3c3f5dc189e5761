"""What a pretraining run leaves for people: the best model exported as one unit, sample grids, loss curves.

`export_best` writes the U-Net, the encoder (HDF5 that Keras 2 and 3 load, and Keras 3
weights) and the card into a staging folder, card last, then moves them into place;
`commit_export` finishes or drops an export a kill interrupted.
"""

from pathlib import Path

import numpy as np

from genesis2d.card import (
    CARD_FILE,
    ENCODER_FILE,
    ENCODER_WEIGHTS_FILE,
    MODEL_CARD_FILE,
    PRESET_FILES,
    UNET_FILE,
    card_markdown,
)
from plumbing.atomic import atomic_path, write_json, write_text
from plumbing.figures import plot_histories, pyplot, save_figure


def export_encoder(model, backbone, out):
    """Writes encoder.h5 (loads with plain `load_model` in Keras 3 and Keras 2) and encoder.weights.h5 (Keras 3).

    The encoder is rebuilt in float32 with a free input size (any multiple of 32),
    so it loads on a CPU and at another image size, e.g. 64x64 LUNA16 patches.
    """
    import keras

    from genesis2d.portable import make_portable
    from genesis2d.unet import build_encoder, encoder_of

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        encoder = build_encoder(backbone, (None, None, 1))
    finally:
        keras.config.set_dtype_policy(previous)
    encoder.set_weights(encoder_of(model).get_weights())
    with atomic_path(Path(out) / ENCODER_FILE) as tmp, _quiet_absl():
        encoder.save(tmp)  # Legacy HDF5 on purpose: the format other Keras projects load.
        make_portable(tmp)  # Its config in the schema Keras 2 reads too.
    with atomic_path(Path(out) / ENCODER_WEIGHTS_FILE) as tmp:
        encoder.save_weights(tmp)
    return encoder


class _quiet_absl:
    """Silences Keras's 'HDF5 is legacy' warning for the one save that wants HDF5."""

    def __enter__(self):
        from absl import logging as absl_logging

        self.level = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)

    def __exit__(self, *exc):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(self.level)


def plot_samples(path, inputs, restored, targets, title):
    plt = pyplot()
    rows = len(inputs)
    figure, axes = plt.subplots(rows, 3, figsize=(6.6, 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c, (name, images) in enumerate((("input", inputs), ("restored", restored), ("target", targets))):
            axes[r, c].imshow(images[r, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(path, figure, dpi=90)


def plot_losses(path, history_csv, title="restoration loss (MSE)"):
    """The run's loss curves (`plumbing.figures.plot_histories`), from its history.csv."""
    import pandas as pd

    history = pd.read_csv(history_csv).drop_duplicates("epoch", keep="last")
    plot_histories({"": history}, path, title=title, ylabel="loss", log_scale=True)


BEST_FILES = PRESET_FILES  # One unit; card last.
STAGING = ".best-staging"


def export_best(model, backbone, out, card):
    """Writes the best model's files as one unit: all into a staging folder, then moved into place.

    The card is written last into the staging folder, so a complete staging folder is one
    that holds it; `commit_export` then moves the files (and repairs a kill during the moves).
    """
    import shutil

    from plumbing.fingerprint import file_sha256

    staging = Path(out) / STAGING
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        model.save(staging / UNET_FILE)
        export_encoder(model, backbone, staging)
        card["files"] = {name: file_sha256(staging / name) for name in BEST_FILES[:3]}
        write_text(staging / MODEL_CARD_FILE, card_markdown(card))
        write_json(staging / CARD_FILE, card)
    except OSError as error:  # A full disk: no partial file stays, and the message names the file, not the staging.
        shutil.rmtree(staging, ignore_errors=True)
        real = _exported_name(Path(error.filename).name) if error.filename else BEST_FILES[0]
        raise OSError(error.errno, error.strerror or str(error), str(Path(out) / real)) from None
    commit_export(out)


def _exported_name(name):
    """The export file that `name` is, or is the temporary of (`plumbing.atomic`: .tmp-<stem>.<random><suffix>)."""
    for real in sorted(BEST_FILES, key=len, reverse=True):  # encoder.weights.h5 before encoder.h5.
        if name == real or name.startswith(f".tmp-{Path(real).stem}."):
            return real
    return name


def commit_export(out):
    """Finishes an export whose staging folder is complete; drops an incomplete one. Returns True if it moved files."""
    import os
    import shutil

    staging = Path(out) / STAGING
    if not staging.exists():
        return False
    complete = (staging / CARD_FILE).exists()
    if complete:
        for name in BEST_FILES:
            if (staging / name).exists():
                os.replace(staging / name, Path(out) / name)
    shutil.rmtree(staging)
    return complete


def plot_views(path, views, title):
    """Each slice's two views side by side, a row per slice."""
    plt = pyplot()
    rows = len(views) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(4.4, 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c in range(2):
            axes[r, c].imshow(views[2 * r + c, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(f"view {c + 1}")
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(path, figure, dpi=90)


LOSS_TITLES = {
    "genesis": "restoration loss (MSE)",
    "contrastive": "contrastive loss (InfoNCE)",
    "genesis+contrastive": "restoration weight x MSE + InfoNCE",
}


def make_reporter(model, out, backbone, sample_pair, card, objective="genesis"):
    """A callback that, each epoch, draws samples and loss curves and exports the best model into `out`."""
    import keras

    from genesis2d.contrastive import outputs_of

    out = Path(out)

    class Reporter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = card.get("best_val_loss")
            self.writer = None

        def log_images(self, epoch, inputs, restored, targets):
            """The samples in TensorBoard too: input | restored | target, side by side."""
            import tensorflow as tf

            if self.writer is None:
                self.writer = tf.summary.create_file_writer(str(out / "logs" / "samples"))
            strip = np.concatenate([inputs, restored.astype(np.float32), targets], axis=2)
            with self.writer.as_default():
                tf.summary.image(
                    "input | restored | target", np.clip(strip, 0, 1), step=epoch + 1, max_outputs=len(strip)
                )
            self.writer.flush()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            inputs, targets = sample_pair
            restored, _ = outputs_of(objective, model(inputs, training=False))
            samples = out / f"samples_epoch{epoch + 1:03d}.png"
            if restored is None:  # Contrast alone restores nothing: its samples are the views it tells apart.
                plot_views(samples, inputs, f"epoch {epoch + 1}: the two views of each slice")
            else:
                plot_samples(samples, inputs, restored, targets, f"epoch {epoch + 1}: input / restored / target")
                self.log_images(epoch, inputs, restored, targets)
            if (out / "history.csv").exists():
                plot_losses(out / "loss_curves.png", out / "history.csv", LOSS_TITLES[objective])
            val_loss = logs.get("val_loss")
            card["epochs"] = epoch + 1
            card["last_val_loss"] = None if val_loss is None else float(val_loss)
            for part in ("val_restored_loss", "val_embedding_loss"):  # The joined objective's two terms.
                if logs.get(part) is not None:
                    card[f"last_{part}"] = float(logs[part])
            if val_loss is not None and np.isfinite(val_loss) and (self.best is None or val_loss < self.best):
                self.best = float(val_loss)
                card["best_val_loss"], card["best_epoch"] = self.best, epoch + 1
                export_best(model, backbone, out, card)
            else:
                write_json(out / CARD_FILE, card)

    return Reporter()
