"""The downstream commands' options: each written once, as a dataclass field, with its default and its source.

A task's options are a frozen dataclass that extends `TransferOptions` with the task's
own fields (`luna16.experiment.Luna16Options`, `mura.experiment.MuraOptions`), declared
as every command's are (`plumbing.options`: the parser, the YAML config and the settings
that decide reuse are read off the fields). `resolve` fills what the task's schedule
table and the encoder's card decide, as a new object (nothing is mutated).
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from genesis2d.backbones import BACKBONES, RADIMAGENET_SOURCE, image_size
from plumbing.cli import default_verbosity, fraction_type
from plumbing.errors import UsageError
from plumbing.options import Options, build_parser, derived, from_config, parse_options, reuse_settings, runtime
from plumbing.options import option as plumbing_option
from transfer.encoders import (
    IMAGENET_INITS,
    INITS,
    PRETRAINED_INITS,
    EncoderSpec,
    InitError,
    check_finished,
    genesis_card,
    radimagenet_file,
)
from transfer.schedules import SCHEDULE_FIELDS, SELECTIONS, Head, Schedule, schedule_row

THESIS_TABLE = "the thesis's value for --backbone and --init (table below)"
SHARED = "initialisation and training (shared by the downstream tasks)"
DEFAULT_BACKBONE = "vgg16"  # The thesis's first downstream backbone (4.2.2).


def option(default, help, *, group=SHARED, **kwargs):
    """`plumbing.options.option`, in the shared group unless told otherwise."""
    return plumbing_option(default, help, group=group, **kwargs)


@dataclass(frozen=True)
class TransferOptions(Options):
    """What every downstream command shares: the encoder, the head, the schedule, the run.

    The schedule fields left at None are the thesis's for the task, --backbone and --init
    (`resolve`); every other default is written here once, with its source.
    """

    init: str = option("genesis", "encoder initialisation.", choices=INITS)
    backbone: str = option(
        None,
        "encoder backbone.",
        choices=sorted(BACKBONES),
        default_text=f"{DEFAULT_BACKBONE}, or the backbone on the card of --encoder",
    )
    encoder: str = option(
        None,
        "encoder folder of --init genesis, contrastive or genesis+contrastive, as `python genesis2d/train.py` "
        "writes it (or a file in it: encoder.h5, encoder.weights.h5); its card.json gives the backbone and must "
        "name --init as its objective. Default: the one folder under weights/ whose card names --backbone and "
        "--init (with none or several, the command stops and lists them).",
        reuse=False,
    )
    unfinished_encoder: bool = option(
        False,
        "accept an --encoder whose pretraining was stopped before it finished (its best epoch so far); "
        "without it such a folder is refused: resume its pretraining with `python genesis2d/train.py --resume`.",
        action="store_true",
        reuse=False,
    )
    imagenet_weights: str = option(
        None, "ImageNet weights file. Default: Keras's cache (~/.keras/models), downloaded on first use.", reuse=False
    )
    radimagenet_weights: str = option(
        None,
        "RadImageNet weights file for --init radimagenet (e.g. "
        "RadImageNet-ResNet50_notop.h5 with --backbone resnet50_keras; not downloadable "
        f"automatically: {RADIMAGENET_SOURCE}). Default: that file in Keras's cache "
        "(~/.keras/models).",
        reuse=False,
    )
    imagenet_preprocessing: bool = option(
        False,
        "feed a supervised start (--init imagenet or radimagenet) the input its weights were trained on: the "
        "backbone's ImageNet convention (0-255, and caffe-style BGR mean subtraction for VGG and the "
        "keras.applications ResNet50) instead of the [0, 1] slice.",
        source="thesis 4.2.1.4 and 4.2.4.3: the [0, 1] image for every init",
        action="store_true",
    )
    probe: bool = option(
        False,
        "linear probe instead of fine-tuning: the encoder frozen, a logistic regression on "
        "its pooled features, its C chosen by cross-validation within the training split "
        "(transfer/probe.py). Results go to <default out>_probe.",
        action="store_true",
    )
    gallery: int = option(
        4,
        "Grad-CAM gallery (saliency.png in each run or fold folder): the K most confident true "
        "positives, false positives and false negatives of the test set, the map over each view. 0 "
        "skips it. A linear probe's maps are its class activation maps.",
        reuse=False,
        type=int,
        metavar="K",
    )
    selection: str = option(
        "held-out",
        "which epoch is kept. held-out: the best validation AUC on --validation-fraction of the training "
        "groups held out (ties go to the later epoch with the lower validation loss); last: train on all training "
        "data and keep the last epoch; test: the best AUC on the test data (the thesis read every epoch's AUC on its "
        "test data, 4.2.2-4.2.4.4; optimistic: the test data choose the model).",
        source="this project's choice: the test data never choose the model",
        choices=SELECTIONS,
    )
    epochs: int = option(None, "fine-tuning epochs.", type=int, default_text=THESIS_TABLE)
    warmup_epochs: int = option(
        None, "epochs with the encoder frozen, before fine-tuning.", type=int, default_text=THESIS_TABLE
    )
    batch_size: int = option(None, "images per batch.", type=int, default_text=THESIS_TABLE)
    steps_per_epoch: int = option(
        None, "training batches per epoch (the data repeat as needed). Default: one pass over the data.", type=int
    )
    lr: float = option(1e-3, "SGD learning rate.", source="thesis 4.2.2-4.2.6", type=float)
    momentum: float = option(None, "SGD momentum.", type=float, default_text=THESIS_TABLE)
    lr_factor: float = option(
        None,
        "ReduceLROnPlateau factor (it watches the validation loss, the training loss "
        "with --selection last, and starts after the warm-up).",
        type=float,
        default_text=THESIS_TABLE,
    )
    lr_patience: int = option(None, "ReduceLROnPlateau patience.", type=int, default_text=THESIS_TABLE)
    bn_momentum: float = option(
        None,
        "BatchNormalization momentum of the encoder's moving statistics while "
        "fine-tuning. Lower it (e.g. 0.9) for runs of a few dozen steps, whose statistics "
        "would otherwise lag the weights and spoil inference. Default: the layers' own "
        "(Keras: 0.99).",
        type=float,
    )
    units: int = option(
        256,
        "hidden units of the head.",
        source="this project's choice: thesis Fig. 4.8 shows a Dense layer without its width",
        type=int,
    )
    l2: float = option(
        1e-4,
        "L2 penalty of the head's hidden layer.",
        source="this project's choice: thesis 4.2.1.6 names L2 regularisation without its strength",
        type=float,
    )
    dropout: float = option(
        0.5, "dropout rate of the head.", source="thesis 4.2.1.6", type=fraction_type(allow_zero=True)
    )
    image_size: int = option(
        None, "network input side, a multiple of 32.", group="data", type=image_size, default_text="the task's"
    )
    data: str = option(
        None,
        "the dataset's folder, as distributed (the description above says what it holds). "
        "Default: the task's built-in demo tree, with the small settings of its configs/demo.yaml.",
        group="data",
        reuse=False,
    )
    allow_outside_root: bool = option(
        False,
        "read files that symlinks take outside the dataset folder, MURA csv paths leading outside MURA-v1.1, "
        "and MetaImage headers naming data outside their folder. Default: refused, so a dataset cannot have other "
        "files of this machine read.",
        group="data",
        reuse=False,
        action="store_true",
    )
    validation_fraction: float = option(
        0.1,
        "share of the training groups (LUNA16: scans, MURA: patients) held out to choose the epoch (--selection "
        "held-out); 0 trains on all training data and keeps the last epoch.",
        source="this project's choice: the thesis chose epochs on its test data",
        flag=("--validation-fraction", "--selection-fraction"),
        group="data",
        type=fraction_type(allow_zero=True),
    )
    train_fraction: float = option(
        1.0,
        "share of the training groups used, sampled by group (label-efficiency studies).",
        group="data",
        type=fraction_type(),
    )
    out: str = option(None, "output folder. Default: runs/<task>_<backbone>_<init>[_probe]/.", group="run", reuse=False)
    # --precision, --seed, --deterministic, --verbose: declared once for every command (plumbing.cli).
    precision: str = runtime("precision")
    seed: int = runtime("seed")
    deterministic: bool = runtime("deterministic", reuse=False)
    verbose: int = runtime("verbose", reuse=False)
    overwrite: bool = option(
        False,
        "redo finished results in --out made with other settings or data. Default: such "
        "results are kept and the command stops, saying what changed.",
        reuse=False,
        group="run",
        action="store_true",
    )
    encoder_sha256: str = derived()
    imagenet_sha256: str = derived()

    def encoder_spec(self):
        return EncoderSpec(
            self.init,
            self.backbone,
            self.encoder,
            self.imagenet_weights,
            self.radimagenet_weights,
            self.imagenet_preprocessing,
        )

    def head(self):
        return Head(self.units, self.l2, self.dropout)

    def schedule(self):
        return Schedule(
            epochs=self.epochs,
            warmup_epochs=self.warmup_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            lr_factor=self.lr_factor,
            lr_patience=self.lr_patience,
            steps_per_epoch=self.steps_per_epoch,
            bn_momentum=self.bn_momentum,
            selection=self.selection,
        )


def resolve(options, table):
    """`options` with the schedule table's row filled in, the encoder files checked and their checksums recorded.

    Prints a note when the row is a fallback (a backbone or init the thesis did not train).
    Checks every file an init needs before any data is read: a missing or ambiguous encoder
    stops here, not after hours of preparation.
    """
    from plumbing.fingerprint import file_sha256

    changes = {}
    if options.init in PRETRAINED_INITS:  # The encoder's card decides the backbone, before anything else reads it.
        card, backbone = genesis_card(options.encoder, options.backbone, DEFAULT_BACKBONE, options.init)
        check_finished(card, options.unfinished_encoder)
        changes.update(backbone=backbone, encoder=str(card.encoder_file), encoder_sha256=file_sha256(card.encoder_file))
    else:
        changes["backbone"] = options.backbone or DEFAULT_BACKBONE
    options = dataclasses.replace(options, **changes)
    row, note = schedule_row(table, options.backbone, options.init)
    if note and any(getattr(options, name) is None for name in SCHEDULE_FIELDS):
        print(note)
    changes = {name: getattr(row, name) for name in SCHEDULE_FIELDS if getattr(options, name) is None}
    if options.verbose is None:
        changes["verbose"] = default_verbosity()
    if options.imagenet_weights:
        if not Path(options.imagenet_weights).is_file():
            raise InitError(options.imagenet_weights, "ImageNet weights file does not exist (--imagenet-weights)")
        changes["imagenet_sha256"] = file_sha256(options.imagenet_weights)
    if options.init == "radimagenet":
        path = radimagenet_file(options.backbone, options.radimagenet_weights)
        changes.update(radimagenet_weights=str(path), encoder_sha256=file_sha256(path))
    if options.imagenet_preprocessing and options.init not in IMAGENET_INITS:
        raise UsageError(
            "--imagenet-preprocessing",
            f"applies to --init {' or '.join(IMAGENET_INITS)}, whose weights "
            f"were trained on ImageNet's input. Received: --init {options.init}",
        )
    return dataclasses.replace(options, **changes)


__all__ = [
    "SHARED",
    "TransferOptions",
    "build_parser",
    "derived",
    "from_config",
    "option",
    "parse_options",
    "resolve",
    "reuse_settings",
    "runtime",
]
