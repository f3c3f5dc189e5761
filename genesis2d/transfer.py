"""Transfer to a downstream classification task: encoder initialisation, head, two-phase training.

Written once and used by `luna16/` and `mura/` (thesis 4.2):

- `--init scratch`: the same encoder with random weights;
- `--init genesis`: a genesis2d encoder (`encoder.h5` or `encoder.weights.h5`);
- `--init imagenet`: the backbone's ImageNet weights, as Keras downloads them;
- `--init radimagenet`: RadImageNet's supervised medical weights (Mei et al., Radiology: AI
  2022), a file the user downloads (`--radimagenet-weights`), for the backbones that have one.

The head is thesis Fig. 4.8: encoder, GlobalAveragePooling2D, Flatten,
Dropout(0.5), Dense(relu, L2), Dropout(0.5), Dense(1, sigmoid). Training has two
phases (thesis 4.2.2): warm-up epochs with the encoder frozen, then all layers
fine-tuned; SGD with learning rate 1e-3 and momentum 0.9 on binary
cross-entropy, ReduceLROnPlateau, AUC every epoch, and the best epoch by
validation AUC kept.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from genesis2d.backbones import BACKBONES, RADIMAGENET_SOURCE
from preprocessing.atomic import atomic_path
from preprocessing.cli import default_verbosity
from preprocessing.errors import InputError, UsageError

INITS = ("scratch", "genesis", "imagenet", "radimagenet")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class InitError(InputError):
    """An encoder that cannot be initialised as asked; the message says what to do."""


def keras_cache_dir():
    """Where Keras looks for (and downloads) weights: $KERAS_HOME/models or ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def default_genesis_encoder(backbone, root=None):
    """The one `weights/genesis2d_<backbone>_*/encoder.h5`; none or several stop with a line that lists them."""
    root = Path(root) if root else PROJECT_ROOT / "weights"
    found = sorted(root.glob(f"genesis2d_{backbone}_*/encoder.h5"))
    if not found:
        raise InitError(root, f"holds no genesis2d_{backbone}_*/encoder.h5; pretrain with "
                        f"`python genesis2d/train.py --backbone {backbone}` or pass --encoder PATH")
    if len(found) > 1:
        raise InitError(root, f"holds {len(found)} {backbone} encoders ({', '.join(str(p.parent.name) for p in found)}); "
                        "choose one with --encoder PATH")
    print(f"genesis encoder: {found[0]} (the only {backbone} encoder under {root})")
    return found[0]


def resolve_encoder_files(args):
    """Checks the encoder files an init needs before any data is read; records the resolved path and sha256.

    Sets `args.encoder` (genesis: --encoder, or the one encoder under weights/) and
    `args.encoder_sha256`; checks that --imagenet-weights exists when given.
    """
    from genesis2d.runtime import file_sha256

    args.encoder_sha256 = None
    if args.init == "genesis":
        path = Path(args.encoder) if args.encoder else default_genesis_encoder(args.backbone)
        if not path.is_file():
            raise InitError(path, "encoder file does not exist (--encoder)")
        args.encoder, args.encoder_sha256 = str(path), file_sha256(path)
    if args.imagenet_weights and not Path(args.imagenet_weights).is_file():
        raise InitError(args.imagenet_weights, "ImageNet weights file does not exist (--imagenet-weights)")
    if args.init == "radimagenet":
        path = radimagenet_file(args.backbone, args.radimagenet_weights)
        args.radimagenet_weights, args.encoder_sha256 = str(path), file_sha256(path)
    return args


def radimagenet_file(backbone, explicit=None):
    """The RadImageNet weights file of a backbone: `explicit`, else the one in Keras's cache; one line if neither."""
    name = BACKBONES[backbone].get("radimagenet_file")
    if not name:
        having = sorted(b for b, entry in BACKBONES.items() if entry.get("radimagenet_file"))
        raise UsageError("--backbone", f"RadImageNet publishes no {backbone} weights in this layout; use "
                         f"--backbone {' or '.join(having)} with --init radimagenet")
    path = Path(explicit) if explicit else keras_cache_dir() / name
    if not path.is_file():
        raise InitError(path, f"does not exist: --init radimagenet needs {name}, which cannot be downloaded "
                        f"automatically; get it from {RADIMAGENET_SOURCE} and pass --radimagenet-weights PATH")
    return path


def _load_genesis(encoder, path):
    import keras

    path = Path(path)
    if not path.is_file():
        raise InitError(path, "encoder file does not exist")
    try:
        if path.name.endswith(".weights.h5"):
            encoder.load_weights(path)
            return encoder
        saved = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise InitError(path, f"cannot be loaded as an encoder ({type(error).__name__}: {str(error)[:200]})") from error
    weights = saved.get_weights()
    if len(weights) != len(encoder.weights) or any(a.shape != b.shape for a, b in zip(weights, encoder.get_weights())):
        raise InitError(path, f"encoder does not match backbone '{encoder.name}' "
                        f"({len(weights)} weight arrays, expected {len(encoder.weights)}); check --backbone")
    encoder.set_weights(weights)
    return encoder


def _load_imagenet(backbone, input_shape, explicit=None):
    from genesis2d.unet import build_encoder

    name = BACKBONES[backbone]["imagenet_file"]
    path = Path(explicit) if explicit else keras_cache_dir() / name
    if explicit and not path.is_file():
        raise InitError(path, "ImageNet weights file does not exist")
    if path.is_file():
        encoder = build_encoder(backbone, input_shape, weights=None)
        try:
            encoder.load_weights(path)  # Keras-2 HDF5, loaded layer by layer in order.
        except Exception as error:
            raise InitError(path, f"not the {backbone} ImageNet weights ({type(error).__name__}: {str(error)[:160]})") from error
        return encoder
    try:  # The real download path: segmentation_models asks Keras to fetch the file.
        return build_encoder(backbone, input_shape, weights="imagenet")
    except Exception as error:
        raise InitError(keras_cache_dir() / name, f"ImageNet weights for {backbone} are not there and could not be "
                        f"downloaded ({type(error).__name__}); place the file there or pass --imagenet-weights PATH") from error


def _load_radimagenet(backbone, input_shape, path):
    from genesis2d.unet import build_encoder

    path = radimagenet_file(backbone, path)
    encoder = build_encoder(backbone, input_shape, weights=None)
    try:
        encoder.load_weights(path)  # The Keras HDF5 weights of keras.applications' architecture, layer by layer.
    except Exception as error:
        raise InitError(path, f"not RadImageNet's {backbone} weights ({type(error).__name__}: "
                        f"{str(error)[:160]})") from error
    return encoder


def load_encoder(init, backbone, input_shape, encoder_path=None, imagenet_weights=None, radimagenet_weights=None):
    """An encoder (input -> `encoder_output`) initialised as asked.

    Args:
        init: str. 'scratch', 'genesis', 'imagenet' or 'radimagenet'.
        backbone: str. A key of `genesis2d.backbones.BACKBONES`.
        input_shape: (H, W, 1).
        encoder_path: for 'genesis', an encoder.h5 / encoder.weights.h5. Defaults to the
            one under weights/ with this backbone.
        imagenet_weights: for 'imagenet', a weights file to use instead of Keras's cache.
        radimagenet_weights: for 'radimagenet', the RadImageNet weights file. Defaults to
            its name in Keras's cache.
    """
    from genesis2d.unet import build_encoder

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}. Received: init={init!r}")
    if init == "imagenet":
        return _load_imagenet(backbone, input_shape, imagenet_weights)
    if init == "radimagenet":
        return _load_radimagenet(backbone, input_shape, radimagenet_weights)
    encoder = build_encoder(backbone, input_shape, weights=None)
    if init == "genesis":
        _load_genesis(encoder, encoder_path or default_genesis_encoder(backbone))
    return encoder


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
class EncoderSpec:
    """Which encoder to start from (see `load_encoder`)."""

    init: str
    backbone: str
    encoder_path: str | None = None
    imagenet_weights: str | None = None
    radimagenet_weights: str | None = None


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


@dataclass(frozen=True)
class ThesisSchedule:
    """One row of a task's schedule table: the thesis's training settings for a backbone and init."""

    epochs: int  # Fine-tuning epochs, after the warm-up.
    warmup_epochs: int
    batch_size: int
    lr_factor: float
    lr_patience: int


SCHEDULE_FIELDS = ("epochs", "warmup_epochs", "batch_size", "lr_factor", "lr_patience")
BACKBONE_FAMILIES = {"vgg": "vgg16", "resnet": "resnet50"}  # The thesis used VGG16 and ResNet50 only.
# The thesis did not train RadImageNet encoders: they take the schedule of the other supervised start, ImageNet.
INIT_FALLBACKS = {"radimagenet": "imagenet"}


def schedule_row(table, backbone, init):
    """(row, note): the table's row for (backbone, init), or its family's (and for radimagenet, imagenet's) with a
    note saying so.

    Args:
        table: {(backbone, init): ThesisSchedule}, a task's table.
    """
    if (backbone, init) in table:
        return table[(backbone, init)], None
    family = next((row for prefix, row in BACKBONE_FAMILIES.items() if backbone.startswith(prefix)), None)
    for name, start in ((family, init), (backbone, INIT_FALLBACKS.get(init)), (family, INIT_FALLBACKS.get(init))):
        if (name, start) in table:
            untrained = [backbone] if name != backbone else []
            untrained += [f"--init {init}"] if start != init else []
            return table[(name, start)], (f"note: the thesis did not train {' with '.join(untrained)}; using its "
                                          f"{name} schedule for --init {start}.")
    raise UsageError("--backbone", f"the schedule table has no row for {backbone} or its family with --init {init}")


def schedule_table_text(table):
    """The table as text for --help: one line per (backbone, init)."""
    lines = ["thesis schedules (fine-tuning epochs, warm-up epochs, batch size, ReduceLROnPlateau factor, patience):"]
    for (backbone, init), row in table.items():
        lines.append(f"  {backbone:<9} {init:<9} epochs {row.epochs:>2}  warm-up {row.warmup_epochs}  batch "
                     f"{row.batch_size:>2}  factor {row.lr_factor:<5g} patience {row.lr_patience}")
    lines.append("Other backbones take the row of their family (vgg*: vgg16, resnet*: resnet50); --init radimagenet "
                 "takes the imagenet row.")
    return "\n".join(lines)


def add_transfer_arguments(parser):
    """The options every downstream command shares.

    The schedule options (epochs, warm-up, batch size, plateau factor and patience) default
    to None, resolved after parsing from the task's thesis table by `resolve_schedule`.
    """
    thesis = "the thesis's value for --backbone and --init (table below)"
    group = parser.add_argument_group("initialisation and training (shared by the downstream tasks)")
    group.add_argument("--init", default="genesis", choices=INITS, help="encoder initialisation. Default: genesis.")
    group.add_argument("--backbone", default="vgg16", choices=sorted(BACKBONES), help="encoder backbone. Default: vgg16.")
    group.add_argument("--encoder", help="genesis encoder (.h5 or .weights.h5). Default: the one "
                       "weights/genesis2d_<backbone>_*/encoder.h5 (with none or several, the command stops and lists them).")
    group.add_argument("--imagenet-weights", help="ImageNet weights file. Default: Keras's cache (~/.keras/models), "
                       "downloaded on first use.")
    group.add_argument("--radimagenet-weights", help="RadImageNet weights file for --init radimagenet (e.g. "
                       "RadImageNet-ResNet50_notop.h5 with --backbone resnet50_keras; not downloadable automatically: "
                       f"{RADIMAGENET_SOURCE}). Default: that file in Keras's cache (~/.keras/models).")
    group.add_argument("--probe", action="store_true",
                       help="linear probe instead of fine-tuning: the encoder frozen, a logistic regression on its "
                       "pooled features, its C chosen by cross-validation within the training split "
                       "(genesis2d/probe.py). Results go to <default out>_probe.")
    group.add_argument("--gallery", type=int, default=4, metavar="K",
                       help="Grad-CAM gallery (saliency.png in each run or fold folder): the K most confident true "
                       "positives, false positives and false negatives of the test set, the map over each view. 0 "
                       "skips it. A linear probe's maps are its class activation maps (genesis2d/probe.py). Default: 4.")
    group.add_argument("--epochs", type=int, default=None, help=f"fine-tuning epochs. Default: {thesis}.")
    group.add_argument("--warmup-epochs", type=int, default=None,
                       help=f"epochs with the encoder frozen, before fine-tuning. Default: {thesis}.")
    group.add_argument("--batch-size", type=int, default=None, help=f"Default: {thesis}.")
    group.add_argument("--steps-per-epoch", type=int, default=None,
                       help="training batches per epoch (the data repeat as needed). Default: one pass over the data.")
    group.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate. Default: 1e-3 (thesis).")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum. Default: 0.9 (thesis).")
    group.add_argument("--lr-factor", type=float, default=None, help=f"ReduceLROnPlateau factor. Default: {thesis}.")
    group.add_argument("--lr-patience", type=int, default=None, help=f"ReduceLROnPlateau patience. Default: {thesis}.")
    group.add_argument("--bn-momentum", type=float, default=None,
                       help="BatchNormalization momentum of the encoder's moving statistics while fine-tuning. Lower it "
                       "(e.g. 0.9) for runs of a few dozen steps, whose statistics would otherwise lag the weights and "
                       "spoil inference. Default: the layers' own (Keras: 0.99).")
    group.add_argument("--units", type=int, default=256, help="hidden units of the head. Default: 256.")
    group.add_argument("--l2", type=float, default=1e-4, help="L2 penalty of the head's hidden layer. Default: 1e-4.")
    group.add_argument("--dropout", type=float, default=0.5, help="dropout rate of the head. Default: 0.5 (thesis).")
    group.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_float16"),
                       help="auto: mixed_float16 on GPU, float32 on CPU. Default: auto.")
    group.add_argument("--seed", type=int, default=0, help="seeds weights, sampling and augmentation. Default: 0.")
    group.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                       help="deterministic ops, so the same --seed gives bit-identical results. Default: on without "
                       "a GPU; off on a GPU, where deterministic kernels are slower.")
    group.add_argument("--verbose", type=int, default=default_verbosity(), choices=(0, 1, 2),
                       help="Keras progress: 0 none, 1 bar, 2 one line per epoch. Default: 1 on a terminal, 2 when "
                       "the output goes to a file.")
    group.add_argument("--overwrite", action="store_true", help="redo finished results in --out made with other "
                       "settings. Default: such results are kept and the command stops, saying what changed.")
    return group


def resolve_schedule(args, table):
    """Fills the schedule options left at None from the task's thesis table; prints a note on a fallback."""
    row, note = schedule_row(table, args.backbone, args.init)
    if note and any(getattr(args, field) is None for field in SCHEDULE_FIELDS):
        print(note)
    for field in SCHEDULE_FIELDS:
        if getattr(args, field) is None:
            setattr(args, field, getattr(row, field))
    return args


def transfer_settings(args):
    """(EncoderSpec, Head, Schedule) from the options of `add_transfer_arguments`, once the task resolved them."""
    encoder = EncoderSpec(args.init, args.backbone, args.encoder, args.imagenet_weights, args.radimagenet_weights)
    head = Head(args.units, args.l2, args.dropout)
    schedule = Schedule(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr,
                        momentum=args.momentum, lr_factor=args.lr_factor, lr_patience=args.lr_patience,
                        steps_per_epoch=args.steps_per_epoch, bn_momentum=args.bn_momentum)
    return encoder, head, schedule


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
    from genesis2d.runtime import divergence_guard

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


def saliency_gallery(cam, images, labels, probabilities, path, k, title, image_size, view_names=None):
    """Maps of a test set's k most confident TP, FP and FN cases, drawn to `path` (see `genesis2d.saliency`).

    Args:
        cam: images (n, S, S, 1) -> maps (n, S, S): `genesis2d.saliency.grad_cam` of a
            fine-tuned classifier, or a linear probe's `saliency`.
        images: (N, V, S, S, 1) or a callable giving those of a list of case indices (to load only those drawn).
        labels, probabilities: (N,) per case.
        image_size: the network's input side (images are resized to it).
    """
    import tensorflow as tf

    from genesis2d.saliency import confident_cases, gallery

    chosen = np.concatenate(list(confident_cases(labels, probabilities, k).values())).astype(int)
    if not len(chosen):
        return None
    cases = np.asarray(images(chosen) if callable(images) else np.asarray(images)[chosen], dtype=np.float32)
    if cases.ndim == 4:
        cases = cases[:, None]
    n, views = cases.shape[:2]
    flat = cases.reshape(n * views, *cases.shape[2:])
    if flat.shape[1] != image_size:
        flat = tf.image.resize(flat, (image_size, image_size)).numpy()
    maps = cam(flat).reshape(n, views, image_size, image_size)
    gallery(path, flat[..., 0].reshape(n, views, image_size, image_size), maps, np.asarray(labels)[chosen],
            np.asarray(probabilities)[chosen], k, title, view_names)
    return path
