"""Models Genesis pretraining in 2D: restore distorted slices with a U-Net (thesis 4.1.1).

The command is `python genesis2d/train.py`; this module is the library behind it.

Optimizer defaults come from the public Models Genesis Keras configuration:
SGD with learning rate 1.0 and momentum 0.9 on the mean squared error, early
stopping after 50 epochs without a better validation loss, and the learning rate
halved after 10 such epochs, down to 1e-6.
"""

import argparse
import dataclasses
import os
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from genesis2d.backbones import BACKBONES, image_size
from genesis2d.strategy import CLUSTER_TIMEOUT, REPORT_EVERY
from plumbing.runtime import STREAM_TRAIN_DISTORTIONS, STREAM_VAL_DISTORTIONS, derive_seed
from plumbing.atomic import atomic_path, remove_temporaries, write_csv, write_json, write_text
from plumbing.cli import ArgumentParser, default_verbosity
from plumbing.errors import ImageReadError, InputError, UsageError
from plumbing.figures import pyplot, save_figure
from preprocessing.geometry import CROP_SIZE, IMAGE_SIZE
from preprocessing.normalize import HU_MAX, HU_MIN

CONFIG_DIR = Path(__file__).with_name("configs")
DEMO_CONFIG = CONFIG_DIR / "demo_pretrain.yaml"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CROP_RULE = ("a square of side min(crop_size, height, width), at a random position in training and centred in "
             "validation, resized to the input size; small slices are never padded")
NORMALISATION = {
    "CT": f"clip HU to [{HU_MIN:g}, {HU_MAX:g}], scale to [0, 1]",
    "MR": "divide each slice by its maximum",
    "XR": "divide by 2**bit_depth - 1",
}


def build_parser():
    parser = ArgumentParser(
        prog="python genesis2d/train.py",
        description="Models Genesis pretraining of a 2D U-Net on CT, MRI and X-ray slices. With no "
        "--manifest or --shards, trains on the built-in demo corpus (generated on first use) with the "
        "small settings of genesis2d/configs/demo_pretrain.yaml.",
    )
    parser.add_argument("--config", help="YAML file of option defaults (keys are option names); flags override it.")
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", help="manifest CSV from `python -m preprocessing.manifest`.")
    data.add_argument("--shards", help="folder of TFRecord shards from `python -m preprocessing.shards` (faster).")
    data.add_argument("--crop-size", type=int, default=CROP_SIZE, help="random crop side before resizing. Default: 448.")
    data.add_argument("--image-size", type=image_size, default=IMAGE_SIZE,
                      help="network input side, a multiple of 32. Default: 224.")
    data.add_argument("--shuffle-buffer", type=int, default=512, help="slices held for shuffling. Default: 512.")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES), help="encoder. Default: resnet50.")
    model.add_argument("--norm", default="batch", choices=("batch", "instance", "none"),
                       help="decoder normalisation (thesis 3.1.11). Default: batch.")
    model.add_argument("--bn-momentum", type=float, default=0.99,
                       help="BatchNormalization momentum of the moving statistics. Lower it (e.g. 0.9) for short runs, "
                       "whose statistics would otherwise lag the weights. Default: 0.99 (Keras).")
    model.add_argument("--encoder-weights", default=None, choices=(None, "imagenet"), type=lambda v: None if v in ("none", "None") else v,
                       help="start the encoder from ImageNet instead of random weights. Default: none.")
    train = parser.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=32, help="global batch size. Default: 32.")
    train.add_argument("--epochs", type=int, default=100, help="maximum epochs. Default: 100.")
    train.add_argument("--steps-per-epoch", type=int, default=None,
                       help="training steps per epoch. Default: one pass over the training slices.")
    train.add_argument("--validation-steps", type=int, default=None,
                       help="validation batches per epoch. Default: the whole validation split.")
    train.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                       help="Default: sgd (Models Genesis). With adam, a CPU run is not bit-for-bit repeatable (Keras's "
                       "Adam under TensorFlow: two runs of one seed drift apart from the first epoch's 5th significant digit).")
    train.add_argument("--lr", type=float, default=1.0, help="initial learning rate. Default: 1.0 (Models Genesis, with SGD).")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum. Default: 0.9.")
    train.add_argument("--lr-factor", type=float, default=0.5, help="ReduceLROnPlateau factor. Default: 0.5.")
    train.add_argument("--lr-patience", type=int, default=10,
                       help="epochs without improvement before reducing. Default: 10 (Models Genesis).")
    train.add_argument("--min-lr", type=float, default=1e-6, help="lowest learning rate. Default: 1e-6 (Models Genesis).")
    train.add_argument("--early-stopping-patience", type=int, default=50, help="Default: 50 (Models Genesis).")
    train.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_float16"),
                       help="auto: mixed_float16 on GPU, float32 on CPU. Default: auto.")
    train.add_argument("--seed", type=int, default=0, help="seeds weights, data order and distortions. Default: 0.")
    train.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                       help="deterministic ops, so the same --seed gives bit-identical weights. Default: on without a "
                       "GPU; off on a GPU, where deterministic kernels are slower.")
    train.add_argument("--cluster", default="auto", choices=("auto", "slurm"),
                       help="where the workers of a multi-machine run are listed: auto reads TF_CONFIG (several tasks "
                       "there: train on all of them), slurm reads the allocation of `srun`. Each worker reads its own "
                       "share of the data; --batch-size stays the global batch; worker 0 writes the outputs. "
                       "Default: auto (one machine without TF_CONFIG).")
    train.add_argument("--cluster-timeout", type=float, default=CLUSTER_TIMEOUT,
                       help="seconds a worker of a multi-machine run waits for the others (naming the missing ones "
                       f"every {REPORT_EVERY} s) before it stops. Default: {CLUSTER_TIMEOUT}.")
    distort = parser.add_argument_group("distortions (Models Genesis rates)")
    distort.add_argument("--flip-rate", type=float, default=0.4, help="Default: 0.4.")
    distort.add_argument("--local-rate", type=float, default=0.5, help="local pixel shuffling. Default: 0.5.")
    distort.add_argument("--nonlinear-rate", type=float, default=0.9, help="Default: 0.9.")
    distort.add_argument("--paint-rate", type=float, default=0.9, help="Default: 0.9.")
    distort.add_argument("--inpaint-rate", type=float, default=0.2, help="share of painting that is in-painting. Default: 0.2.")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="output folder. Default: weights/genesis2d_<backbone>_<norm>/ "
                        "(runs/demo_genesis2d_<backbone>_<norm>/ for the demo corpus).")
    output.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint.")
    output.add_argument("--overwrite", action="store_true", help="replace a finished run in --out. Default: a finished "
                        "run is never replaced; the command stops and says so.")
    output.add_argument("--checkpoint-every", type=int, default=500, help="steps between mid-epoch checkpoints. Default: 500.")
    output.add_argument("--samples", type=int, default=4, help="validation samples drawn in each epoch's PNG grid. Default: 4.")
    output.add_argument("--verbose", type=int, default=default_verbosity(), choices=(0, 1, 2),
                        help="Keras progress: 0 none, 1 bar, 2 one line per epoch. Default: 1 on a terminal, 2 when "
                        "the output goes to a file.")
    return parser


@dataclasses.dataclass(frozen=True)
class DistortionRates:
    """The Models Genesis distortion rates (see `genesis2d.transforms.make_pair`)."""

    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run, resolved; one field per option of `build_parser`."""

    out: str
    manifest: str | None = None
    shards: str | None = None
    crop_size: int = CROP_SIZE
    image_size: int = IMAGE_SIZE
    shuffle_buffer: int = 512
    backbone: str = "resnet50"
    norm: str = "batch"
    bn_momentum: float = 0.99
    encoder_weights: str | None = None
    batch_size: int = 32
    epochs: int = 100
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    optimizer: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    lr_factor: float = 0.5
    lr_patience: int = 10
    min_lr: float = 1e-6
    early_stopping_patience: int = 50
    precision: str = "auto"
    seed: int = 0
    deterministic: bool | None = None
    cluster: str = "auto"
    cluster_timeout: float = CLUSTER_TIMEOUT
    distortions: DistortionRates = DistortionRates()
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 500
    samples: int = 4
    verbose: int = 1

    @classmethod
    def from_args(cls, args):
        options = vars(args).copy()
        rates = {field.name: options.pop(field.name) for field in dataclasses.fields(DistortionRates)}
        options.pop("config", None)
        return cls(**options, distortions=DistortionRates(**rates))

    def record(self):
        """A JSON-able dict of the settings, written to run.json."""
        return dataclasses.asdict(self)


def parse_args(argv=None):
    """The resolved PretrainConfig; without a data source, the demo corpus and its config (unless --config)."""
    from plumbing.cli import parse_with_demo_default

    args = parse_with_demo_default(build_parser(), argv, DEMO_CONFIG, ("--manifest", "--shards"))
    if args.manifest and args.shards:
        raise UsageError("--manifest/--shards", "give one of them, not both")
    if args.out is None:  # Demo encoders go under runs/, so weights/ holds only encoders of real data.
        demo = not (args.manifest or args.shards)
        args.out = str(PROJECT_ROOT / ("runs" if demo else "weights") / f"{'demo_' if demo else ''}genesis2d_"
                       f"{args.backbone}_{args.norm}")
    return PretrainConfig.from_args(args)


def demo_manifest():
    """The demo corpus's manifest, writing the corpus and the manifest on first use."""
    from preprocessing.demo import default_demo_dir, ensure_pretraining_corpus
    from preprocessing.manifest import main as manifest_main

    corpus = ensure_pretraining_corpus(default_demo_dir())
    manifest = corpus / "manifest.csv"  # Inside the corpus folder: rewritten with it.
    if not manifest.exists():
        # Few demo patients per dataset: 60/20/20 so that val and test are not empty.
        manifest_main(["--config", str(corpus / "datasets.yaml"), "--root", str(corpus),
                       "--out", str(manifest), "--fractions", "0.6", "0.2", "0.2"])
    return manifest


def data_source(manifest=None, shards=None):
    """(source path, {split: number of slices}, content hash) of the training data (the demo's without either)."""
    if shards:
        index_path = Path(shards) / "index.json"
        if not index_path.exists():
            raise InputError(shards, "has no index.json; write shards with `python -m preprocessing.shards`")
        counts = {split: entry["slices"] for split, entry in json.loads(index_path.read_text()).items()}
        return Path(shards), counts, hashlib.sha256(index_path.read_bytes()).hexdigest()[:16]
    import pandas as pd

    from preprocessing.manifest import manifest_hash

    manifest = Path(manifest) if manifest else demo_manifest()
    if not manifest.is_file():
        raise InputError(manifest, "manifest does not exist")
    from preprocessing.pipeline import load_manifest

    frame = load_manifest(manifest)
    files = pd.Series(frame["path"].unique())
    missing = files[~files.map(lambda p: Path(p).exists())]
    if len(missing) == len(files):
        raise InputError(manifest, f"none of its {len(files)} files exist (e.g. {missing.iloc[0]}); was it written "
                             "for another machine or folder?")
    if len(missing):
        print(f"warning: {manifest}: {len(missing)} of its {len(files)} files do not exist (e.g. {missing.iloc[0]}); "
              "their slices are skipped.", file=sys.stderr)
    counts = frame["split"].value_counts().to_dict()
    return manifest, counts, manifest_hash(manifest)


def pairs(source, split, config, training, first_seed, batch_size=None, share=None, first_batch=0):
    """(distorted, target) batches of a PretrainConfig's data; batch i is distorted with seed first_seed + i.

    `batch_size` defaults to config.batch_size; with a `share` (index, count) only worker
    `index`'s share of the data is read, in an order and crops seeded for that worker.
    `first_batch` starts the stream at that batch: the batches before it are read and
    dropped (not distorted), so the file order, the crops and the shuffle buffer are those
    of a run that never stopped (a resumed run continues the very same stream).
    """
    import tensorflow as tf

    from plumbing.runtime import STREAM_WORKER_DATA
    from genesis2d.transforms import tf_make_pair
    from preprocessing.pipeline import make_dataset, ordered

    seed = config.seed if share is None else derive_seed(config.seed, STREAM_WORKER_DATA, share[0])
    images = make_dataset(source, split, batch_size or config.batch_size, config.crop_size, config.image_size,
                          training=training, shuffle_buffer=config.shuffle_buffer, seed=seed, drop_remainder=training,
                          share=share)
    rates = dataclasses.asdict(config.distortions)
    if first_batch:
        images = images.skip(first_batch)
    return images.enumerate(start=first_batch).map(
        lambda i, x: tf_make_pair(x, tf.cast(first_seed, tf.int64) + i, **rates),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered(training),
    ).prefetch(tf.data.AUTOTUNE)


def make_optimizer(name, lr, momentum=0.9):
    """SGD with momentum (Models Genesis) or Adam."""
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam'. Received: optimizer={name!r}")


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
    with atomic_path(Path(out) / "encoder.h5") as tmp, _quiet_absl():
        encoder.save(tmp)  # Legacy HDF5 on purpose: the format other Keras projects load.
        make_portable(tmp)  # Its config in the schema Keras 2 reads too.
    with atomic_path(Path(out) / "encoder.weights.h5") as tmp:
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
    import pandas as pd

    plt = pyplot()
    history = pd.read_csv(history_csv).drop_duplicates("epoch", keep="last")
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for column, label in (("loss", "train"), ("val_loss", "validation")):
        if column in history:
            axis.plot(history["epoch"] + 1, history[column], marker="o", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("MSE")
    axis.set_yscale("log")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    save_figure(path, figure, dpi=100)


BEST_FILES = ("unet.keras", "encoder.weights.h5", "encoder.h5", "MODEL_CARD.md", "card.json")  # One unit; card last.
STAGING = ".best-staging"


def export_best(model, backbone, out, card):
    """Writes the best model's files as one unit: all into a staging folder, then moved into place.

    The card is written last into the staging folder, so a complete staging folder is one
    that holds it; `commit_export` then moves the files (and repairs a kill during the moves).
    """
    import shutil

    from genesis2d.card import card_markdown
    from plumbing.fingerprint import file_sha256

    staging = Path(out) / STAGING
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        model.save(staging / "unet.keras")
        export_encoder(model, backbone, staging)
        card["files"] = {name: file_sha256(staging / name) for name in BEST_FILES[:3]}
        write_text(staging / "MODEL_CARD.md", card_markdown(card))
        write_json(staging / "card.json", card)
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
    complete = (staging / "card.json").exists()
    if complete:
        for name in BEST_FILES:
            if (staging / name).exists():
                os.replace(staging / name, Path(out) / name)
    shutil.rmtree(staging)
    return complete


def make_reporter(model, out, backbone, sample_pair, card):
    """A callback that, each epoch, draws samples and loss curves and exports the best model into `out`."""
    import keras

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
                tf.summary.image("input | restored | target", np.clip(strip, 0, 1), step=epoch + 1,
                                 max_outputs=len(strip))
            self.writer.flush()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            inputs, targets = sample_pair
            restored = np.asarray(model(inputs, training=False))
            plot_samples(out / f"samples_epoch{epoch + 1:03d}.png", inputs, restored, targets,
                         f"epoch {epoch + 1}: input / restored / target")
            self.log_images(epoch, inputs, restored, targets)
            if (out / "history.csv").exists():
                plot_losses(out / "loss_curves.png", out / "history.csv")
            val_loss = logs.get("val_loss")
            card["epochs"] = epoch + 1
            card["last_val_loss"] = None if val_loss is None else float(val_loss)
            if val_loss is not None and np.isfinite(val_loss) and (self.best is None or val_loss < self.best):
                self.best = float(val_loss)
                card["best_val_loss"], card["best_epoch"] = self.best, epoch + 1
                export_best(model, backbone, out, card)
            else:
                write_json(out / "card.json", card)

    return Reporter()


def clear_outputs(out):
    """Removes what a finished run wrote into `out` (for --overwrite)."""
    import shutil

    out = Path(out)
    for name in (*BEST_FILES, "history.csv", "loss_curves.png", "run.json"):
        (out / name).unlink(missing_ok=True)
    for path in out.glob("samples_epoch*.png"):
        path.unlink()
    for folder in ("checkpoint", "logs", STAGING):
        shutil.rmtree(out / folder, ignore_errors=True)


def trim_history(path, epochs):
    """Keeps the rows of history.csv for the first `epochs` epochs (a resumed run writes the rest again)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        return
    if not epochs:
        path.unlink()
        return
    history = pd.read_csv(path)
    write_csv(path, history[history["epoch"] < epochs].drop_duplicates("epoch", keep="last"))


MODEL_SETTINGS = ("backbone", "norm", "image_size", "optimizer")  # A checkpoint holds variables of these shapes.


def prepare_out(config):
    """Checks --out against --resume/--overwrite and returns the checkpoint state to resume from (or None).

    A run is finished when its checkpoint says so (`mark_finished`, written after the last
    card): outputs without any checkpoint are those of a run killed before its first one,
    which is started again from step 0 (the same run, bit for bit, on a CPU).
    """
    from genesis2d.checkpoint import load_state

    out = Path(config.out)
    commit_export(out)  # A run killed while exporting its best model: finish or drop that export.
    previous = load_state(out / "checkpoint")
    if previous and previous.get("finished") and not config.resume:
        if not config.overwrite:
            raise UsageError(out, "holds a finished run; pass --overwrite to replace it, --resume with more --epochs "
                             "to continue it, or choose another --out")
        clear_outputs(out)
        return None
    if previous and not config.resume:
        raise UsageError(out, "holds an unfinished run; pass --resume to continue it or choose another --out")
    if previous:
        check_same_model(out, config)
        return previous
    if any((out / name).exists() for name in (*BEST_FILES, "history.csv")):
        print(f"{out}: a run stopped before its first checkpoint; starting it again from step 0.", file=sys.stderr)
        clear_outputs(out)
    elif config.resume:
        raise UsageError(out, "has no checkpoint to resume from")
    return None


def check_same_model(out, config):
    """A UsageError naming the first of MODEL_SETTINGS in which --resume differs from the run in `out`."""
    record = Path(out) / "run.json"
    saved = json.loads(record.read_text()).get("args", {}) if record.exists() else {}
    for name in MODEL_SETTINGS:
        if name in saved and saved[name] != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(flag, f"{out} was trained with {flag} {saved[name]}, not {getattr(config, name)}; resume "
                             f"it with {flag} {saved[name]} or choose another --out")


def prepare_out_on_chief(config, strategy, chief):
    """`prepare_out` on the chief of a multi-machine run, its answer (state or error) given to every worker."""
    from genesis2d.distributed import broadcast_json

    answer = {}
    if chief:
        try:
            answer = {"state": prepare_out(config)}
        except UsageError as error:
            answer = {"error": [error.path, error.problem]}
    answer = broadcast_json(strategy, answer)
    if "error" in answer:
        raise UsageError(*answer["error"])
    return answer["state"]


def run(config, strategy=None, extra_callbacks=()):
    """Pretrains as a PretrainConfig says and writes every output into config.out; returns the model card (dict).

    On several machines (see `genesis2d.distributed`) every worker calls it; the chief
    (worker 0) writes the outputs and the others return None.
    """
    from genesis2d.strategy import pick_strategy, worker_role

    data = checked_data(config)  # Before waiting for other machines, and before --overwrite clears anything.
    strategy = strategy or pick_strategy(config.cluster, config.cluster_timeout)  # A multi-worker strategy must precede other TF work.
    worker, workers, chief = worker_role(strategy)
    state = prepare_out(config) if workers == 1 else prepare_out_on_chief(config, strategy, chief)
    card = _train(config, strategy, state, chief, worker, workers, data, extra_callbacks)
    if workers > 1:  # Every worker waits for the chief's last writes, so none leaves the group early.
        from genesis2d.distributed import broadcast_json

        broadcast_json(strategy, {})
    return card


def checked_data(config):
    """(source, {split: slices}, content hash) of the run's data, once it holds a training batch and a val split."""
    source, counts, data_hash = data_source(config.manifest, config.shards)
    if counts.get("train", 0) < config.batch_size:
        raise InputError(source, f"has {counts.get('train', 0)} training slices, fewer than one batch of {config.batch_size}")
    if not counts.get("val", 0):
        raise InputError(source, "has no validation slices, on which the best epoch is chosen; give it a val split "
                             "(`python -m preprocessing.manifest --fractions`)")
    return source, counts, data_hash


def _train(config, strategy, state, chief, worker, workers, data, extra_callbacks):
    import keras
    import tensorflow as tf

    from genesis2d.card import encoder_card
    from genesis2d.checkpoint import fit_resumable, mark_finished
    from genesis2d.health import health_guard, identity_loss
    from preprocessing.pipeline import NO_SLICE_LEFT
    from plumbing.runtime import (configure_determinism, divergence_guard, pick_precision, set_seed, versions,
                                  write_run_record)
    from genesis2d.unet import build_unet

    out = Path(config.out)
    checkpoint_dir = out / "checkpoint"
    source, counts, data_hash = data
    if config.batch_size % strategy.num_replicas_in_sync:
        raise UsageError("--batch-size", f"{config.batch_size} is not a multiple of the {strategy.num_replicas_in_sync} "
                         "replicas that share it")
    if chief:
        out.mkdir(parents=True, exist_ok=True)  # Only once every check has passed: a refused run leaves no folder.
        for folder in (out, checkpoint_dir):
            remove_temporaries(folder)
    deterministic = configure_determinism(config.deterministic)
    set_seed(config.seed)
    precision = pick_precision(config.precision)
    steps = config.steps_per_epoch or max(1, counts["train"] // config.batch_size)
    if chief:
        print(f"data: {source} ({counts.get('train', 0)} train / {counts.get('val', 0)} val slices); "
              f"precision {precision}; {strategy.num_replicas_in_sync} replica(s) on {workers} machine(s); "
              f"{steps} steps per epoch", flush=True)
    first_step = (state["epoch"] * steps + state["step"]) if state else 0
    validation_steps = -(-counts["val"] // config.batch_size)
    if config.validation_steps:
        validation_steps = min(validation_steps, config.validation_steps)
    if workers == 1:
        # Batch i of the run is batch i of one stream (files, crops, shuffles, distortion seed first + i),
        # whichever step a resumed run starts from.
        def train(first_batch):
            return pairs(source, "train", config, training=True,
                         first_seed=derive_seed(config.seed, STREAM_TRAIN_DISTORTIONS), first_batch=first_batch)

        # Every validation slice counts, the last batch smaller when it must be, so validation never vanishes.
        val = pairs(source, "val", config, training=False, first_seed=derive_seed(config.seed, STREAM_VAL_DISTORTIONS))
        sample_batch = val
    else:
        train, val, sample_batch = worker_datasets(source, config, strategy, first_step, worker, workers)
    sample_inputs, sample_targets = next(iter(sample_batch.take(1)))
    sample_pair = (sample_inputs.numpy()[: config.samples], sample_targets.numpy()[: config.samples])
    # The bar restoration must clear: the validation loss of returning the distorted slices unchanged.
    identity = identity_loss(pairs(source, "val", config, training=False,
                                   first_seed=derive_seed(config.seed, STREAM_VAL_DISTORTIONS)), validation_steps)

    with strategy.scope():
        model = build_unet(config.backbone, (config.image_size, config.image_size, 1), config.norm, config.encoder_weights)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
        model.compile(optimizer=make_optimizer(config.optimizer, config.lr, config.momentum), loss="mse")
        if workers > 1:
            from genesis2d.distributed import synchronize_batch_norm

            synchronize_batch_norm(model)
            model.optimizer.build(model.trainable_variables)

    card_path = out / "card.json"
    card = json.loads(card_path.read_text()) if (state and card_path.exists()) else {}
    card.update({
        "backbone": config.backbone, "norm": config.norm, "input_size": [config.image_size, config.image_size, 1],
        "crop_size": config.crop_size, "crop": CROP_RULE, "normalisation": NORMALISATION,
        "data": os.path.relpath(source, out), "data_hash": data_hash,  # Relative to the run folder: cards are published.
        "precision": precision, "versions": versions(), "encoder_output_layer": "encoder_output",
        "distortions": dataclasses.asdict(config.distortions),
        "best_epoch_chosen_on": "validation loss (MSE of restored validation slices)",
        "identity_val_loss": identity,
        **encoder_card(config.backbone, NORMALISATION),
    })
    if chief:
        write_run_record(out, config.record(), {"precision": precision, "deterministic": deterministic,
                                                "replicas": strategy.num_replicas_in_sync, "workers": workers})
        trim_history(out / "history.csv", state["epoch"] if state else 0)
    monitor = "val_loss"
    callbacks = [
        divergence_guard(),
        health_guard(sample_pair, config.lr, config.checkpoint_every),  # Before the export: none of a broken run.
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=config.lr_factor, patience=config.lr_patience,
                                          min_lr=config.min_lr, verbose=1 if chief else 0),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience,
                                      verbose=1 if chief else 0),
    ]
    if chief:  # The writers.
        callbacks += [
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
            keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False, update_freq="epoch"),
            make_reporter(model, out, config.backbone, sample_pair, card),
        ]
    callbacks += list(extra_callbacks)
    started = time.time()
    try:
        if workers == 1:
            fit_resumable(model, train, config.epochs, steps, callbacks, checkpoint_dir,
                          every_steps=config.checkpoint_every, resume=config.resume, validation_data=val,
                          validation_steps=validation_steps, verbose=config.verbose, shuffle=False)
        else:
            from genesis2d.distributed import broadcast_variables, fit_multiworker

            if chief and state and state.get("weights"):  # Only the chief reads the checkpoint; it is broadcast.
                model.load_weights(checkpoint_dir / state["weights"])
            broadcast_variables(strategy, [*model.variables, *model.optimizer.variables])
            fit_multiworker(model, strategy, train, val, config.batch_size, config.epochs, steps, callbacks,
                            checkpoint_dir, every_steps=config.checkpoint_every, state=state, chief=chief,
                            validation_steps=validation_steps, verbose=config.verbose)
    except tf.errors.OpError as error:
        if NO_SLICE_LEFT in str(error):  # Raised inside the input pipeline; said here as one line.
            raise ImageReadError(source, "no file of a split can be read (see the warnings above)") from None
        raise
    if not chief:
        return None
    card["training_seconds"] = round(card.get("training_seconds", 0) + time.time() - started, 1)
    if "best_val_loss" not in card:  # No finite validation loss at all: still leave a usable encoder.
        export_best(model, config.backbone, out, card)
    write_json(card_path, card)
    mark_finished(checkpoint_dir)  # Last: a run is finished once its card is complete.
    print(f"encoder: {out / 'encoder.h5'} (best validation loss {card.get('best_val_loss')}, epoch {card.get('best_epoch')})")
    return card


def worker_datasets(source, config, strategy, first_step, worker, workers):
    """(train, val, samples) on one worker of several: distributed training and validation data of its own share.

    Worker k's batch i is distorted with seed derive_seed(seed, stream, k) + i; `val` is a
    callable giving a fresh pass over the validation split; `samples` is this worker's
    first validation batch (the chief draws it in the epoch figures).
    """
    import tensorflow as tf

    def share(context):
        return context.input_pipeline_id, context.num_input_pipelines

    def train_fn(context):
        seed = derive_seed(config.seed, STREAM_TRAIN_DISTORTIONS, context.input_pipeline_id)
        return pairs(source, "train", config, True, seed, context.get_per_replica_batch_size(config.batch_size),
                     share(context), first_batch=first_step)

    def val_fn(context):
        seed = derive_seed(config.seed, STREAM_VAL_DISTORTIONS, context.input_pipeline_id)
        return pairs(source, "val", config, False, seed, context.get_per_replica_batch_size(config.batch_size),
                     share(context))

    train = strategy.distribute_datasets_from_function(train_fn)
    samples = val_fn(tf.distribute.InputContext(workers, worker, strategy.num_replicas_in_sync))
    return train, lambda: strategy.distribute_datasets_from_function(val_fn), samples


def main(argv=None):
    from plumbing.cli import run_command

    def interrupted(config):
        return f"continue with `python genesis2d/train.py --resume --out {config.out}` (and the same options)."

    return run_command(parse_args, run, argv, interrupted=interrupted, tensorflow=True)
