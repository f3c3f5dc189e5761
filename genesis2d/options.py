"""The settings of a pretraining run: one frozen dataclass whose fields are the options, with their defaults.

Declared as every command's options are (`plumbing.options`): each default is written
once, as a field below, with its source (the distortion rates are `genesis2d.transforms`'s
constants, where the distortions are); the parser, `--help`, the YAML `--config` and the
settings that decide whether a finished run is reused are read off the fields.

Optimizer defaults come from the public Models Genesis Keras configuration (SGD with
learning rate 1.0 and momentum 0.9 on the mean squared error, early stopping after 50
epochs without a better validation loss, the learning rate halved after 10 such epochs,
down to 1e-6), started with a linear warm-up that Models Genesis does not have: at 224 px
and batch 32 its cold start at 1.0 collapses within 8 steps (`genesis2d.schedule`,
`benchmarks/pretrain_defaults.py`).
"""

import dataclasses
from pathlib import Path

from genesis2d import objectives, transforms
from genesis2d.backbones import BACKBONES, image_size
from genesis2d.strategy import CLUSTER_TIMEOUT, REPORT_EVERY
from plumbing.cli import count_type
from plumbing.errors import UsageError
from plumbing.options import Options, option, parse_options, runtime
from plumbing.options import build_parser as build_options_parser
from preprocessing.geometry import CROP_SIZE, IMAGE_SIZE

CONFIG_DIR = Path(__file__).with_name("configs")
DEMO_CONFIG = CONFIG_DIR / "demo_pretrain.yaml"
# The contrastive objectives' demo: the same settings at their own learning rate (tests/test_contrastive.py checks).
DEMO_CONTRASTIVE_CONFIG = CONFIG_DIR / "demo_pretrain_contrastive.yaml"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MG = "Models Genesis"
DATA, MODEL, OBJECTIVE, TRAINING, DISTORT, OUTPUT = (
    "data",
    "model",
    "objective (see genesis2d/contrastive.py)",
    "training",
    "distortions (public Models Genesis code's rates)",
    "output",
)
WARMUP_SOURCE = (
    "this project's choice, measured with benchmarks/pretrain_defaults.py: it keeps Models Genesis's "
    "peak and eases the moving BatchNorm statistics in"
)
BN_SOURCE = (
    "this project's choice: PyTorch's default (momentum=0.1 there), which the public Models Genesis PyTorch "
    "code keeps (its BatchNorm always uses the batch's statistics); Keras's 0.99 lags weights trained at "
    "learning rate 1.0 for hundreds of steps, so the validation output reads as a constant "
    "(benchmarks/pretrain_defaults.py)"
)


GENESIS_LR = 1.0  # Models Genesis's SGD rate.
CONTRASTIVE_LR = 0.03  # MoCo v2's (and DiRA's) SGD rate at batch 256.


def default_lr(objective, batch_size):
    """The default peak learning rate of an objective at a batch size."""
    return GENESIS_LR if objective == "genesis" else CONTRASTIVE_LR * batch_size / 256


@dataclasses.dataclass(frozen=True)
class DistortionRates:
    """The Models Genesis distortions (see `genesis2d.transforms.make_pair`), public-code defaults."""

    flip_rate: float = transforms.FLIP_RATE
    local_rate: float = transforms.LOCAL_RATE
    nonlinear_rate: float = transforms.NONLINEAR_RATE
    paint_rate: float = transforms.PAINT_RATE
    inpaint_rate: float = transforms.INPAINT_RATE
    local_blocks: int = transforms.N_BLOCKS

    def make_pair_kwargs(self):
        """The keyword arguments of `make_pair` / `tf_make_pair`."""
        rates = dataclasses.asdict(self)
        rates["n_blocks"] = rates.pop("local_blocks")
        return rates


def _encoder_weights(text):
    return None if text in ("none", "None") else text


def _local_blocks_help():
    n, size = transforms.N_BLOCKS, IMAGE_SIZE
    return (
        f"blocks shuffled by local pixel shuffling, each of sides 1..size/10. Default: {n:,} (the public Models "
        f"Genesis code's count for 64x64x32 cubes, where ~{transforms.blocks_per_pixel(n, 64, 32):.1f} blocks "
        f"cover a voxel; at {size}x{size} ~{transforms.blocks_per_pixel(n, size):.0f} cover each pixel, so the "
        "whole slice is shuffled when it fires; see docs/distortions_224.png)."
    )


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Options):
    """Every setting of a pretraining run, resolved; one field per option of `python genesis2d/train.py`."""

    manifest: str = option(None, "manifest CSV from `python -m preprocessing.manifest`.", group=DATA, reuse=False)
    shards: str = option(
        None, "folder of TFRecord shards from `python -m preprocessing.shards` (faster).", group=DATA, reuse=False
    )
    crop_size: int = option(CROP_SIZE, "random crop side before resizing.", source="thesis 3.1.8", group=DATA, type=int)
    image_size: int = option(
        IMAGE_SIZE, "network input side, a multiple of 32.", source="thesis 3.1.8", group=DATA, type=image_size
    )
    shuffle_buffer: int = option(512, "slices held for shuffling.", group=DATA, type=int)
    backbone: str = option("resnet50", "encoder.", group=MODEL, choices=sorted(BACKBONES))
    norm: str = option(
        "batch",
        "decoder normalisation.",
        source="this project's choice: thesis 3.1.11 compares batch and instance normalisation and 'also implements "
        "instance normalization' without saying where (docs/deviations.md)",
        group=MODEL,
        choices=("batch", "instance", "none"),
    )
    bn_momentum: float = option(
        0.9,
        "BatchNormalization momentum of the moving statistics (used for validation and in the exported encoder).",
        source=BN_SOURCE,
        group=MODEL,
        type=float,
    )
    encoder_weights: str = option(
        None,
        "start the encoder from ImageNet instead of random weights. Default: none.",
        group=MODEL,
        choices=(None, "imagenet"),
        type=_encoder_weights,
    )
    objective: str = option(
        "genesis",
        "what the encoder learns: genesis restores distorted slices (Models Genesis, the thesis); contrastive tells "
        "two views of each slice apart from the batch's other slices (InfoNCE, SimCLR's in-batch negatives); "
        "genesis+contrastive does both on one encoder (DiRA without its adversarial part). Downstream, "
        "--init takes the same names.",
        source="the thesis (genesis)",
        group=OBJECTIVE,
        choices=objectives.OBJECTIVES,
    )
    temperature: float = option(
        objectives.TEMPERATURE, "InfoNCE temperature.", source="MoCo v2", group=OBJECTIVE, type=float
    )
    projection_dim: int = option(
        objectives.PROJECTION_DIM,
        "output size of the projection head (MLP on the pooled encoder features).",
        source="MoCo v2",
        group=OBJECTIVE,
        type=int,
    )
    restoration_weight: float = option(
        objectives.RESTORATION_WEIGHT,
        "genesis+contrastive: weight of the restoration loss (MSE), the contrastive loss's being 1.",
        source="DiRA's public code",
        group=OBJECTIVE,
        type=float,
    )
    negatives: str = option(
        "batch",
        "the contrastive objectives' negatives: batch contrasts each view with the batch's other slices' views "
        "(SimCLR; any number of GPUs or machines); queue with the keys of the last --queue-size views from a "
        "momentum encoder (MoCo v2; many negatives at any batch, one GPU). Why batch is the default: "
        "genesis2d/contrastive.py.",
        source="this project's choice",
        group=OBJECTIVE,
        choices=objectives.NEGATIVES,
    )
    queue_size: int = option(
        objectives.QUEUE_SIZE,
        "--negatives queue: keys kept as negatives (two a slice); at most the views of one epoch (steps x batch) "
        "and a tenth of the training slices' views, so that a slice seldom meets its own earlier key as a negative.",
        source="MoCo v2",
        group=OBJECTIVE,
        type=int,
    )
    key_momentum: float = option(
        objectives.KEY_MOMENTUM,
        "--negatives queue: momentum m of the key encoder, key <- m key + (1 - m) encoder after each step "
        "(short runs learn faster at 0.99).",
        source="MoCo v2",
        group=OBJECTIVE,
        type=float,
    )
    batch_size: int = option(
        32,
        "global batch size: images through the encoder per step (the contrastive objectives: two views of each of "
        "batch/2 slices, so every objective does the same encoder work per step).",
        source="this project's choice; Models Genesis: 6 cubes",
        group=TRAINING,
        type=int,
    )
    epochs: int = option(
        100,
        "maximum epochs.",
        source="this project's choice; Models Genesis: 10,000 under early stopping",
        group=TRAINING,
        type=int,
    )
    steps_per_epoch: int = option(
        None, "training steps per epoch. Default: one pass over the training slices.", group=TRAINING, type=int
    )
    validation_steps: int = option(
        None, "validation batches per epoch. Default: the whole validation split.", group=TRAINING, type=int
    )
    optimizer: str = option(
        "sgd",
        "with adam, a CPU run is not bit-for-bit repeatable (Keras's Adam under "
        "TensorFlow: two runs of one seed drift apart from the first epoch's 5th significant "
        "digit).",
        source=MG,
        group=TRAINING,
        choices=("sgd", "adam"),
    )
    lr: float = option(
        None,
        "peak learning rate, reached at the end of the warm-up. A run whose encoder blows up or "
        "whose output stays constant stops and says so: lower it then.",
        default_text=(
            f"{GENESIS_LR:g} for --objective genesis ({MG}, with SGD); {CONTRASTIVE_LR:g} x batch/256 for the "
            "contrastive objectives (MoCo v2's and DiRA's rate at their batch of 256, scaled linearly as theirs)"
        ),
        group=TRAINING,
        type=float,
    )
    momentum: float = option(0.9, "SGD momentum.", source=MG, group=TRAINING, type=float)
    warmup_steps: int = option(
        32,
        "steps over which the learning rate rises linearly from --lr/N to --lr; "
        "ReduceLROnPlateau waits for its end. 0: --lr from the first step (as Models Genesis).",
        source=WARMUP_SOURCE,
        group=TRAINING,
        type=int,
    )
    clipnorm: float = option(
        None, "clip the gradients' global norm to this. Default: no clipping.", group=TRAINING, type=float
    )
    lr_factor: float = option(0.5, "ReduceLROnPlateau factor.", source=MG, group=TRAINING, type=float)
    lr_patience: int = option(10, "epochs without improvement before reducing.", source=MG, group=TRAINING, type=int)
    min_lr: float = option(1e-6, "lowest learning rate.", source=MG, group=TRAINING, type=float)
    early_stopping_patience: int = option(
        50, "epochs without a better validation loss before stopping.", source=MG, group=TRAINING, type=int
    )
    cluster: str = option(
        "auto",
        "where the workers of a multi-machine run are listed: auto reads TF_CONFIG (several tasks there: "
        "train on all of them), slurm reads the allocation of `srun`. Each worker reads its own share of the data; "
        "--batch-size stays the global batch; worker 0 writes the outputs. TensorFlow's channel between workers "
        "listens on every interface, unauthenticated: use a private network. Default: auto (one machine without "
        "TF_CONFIG).",
        group=TRAINING,
        reuse=False,
        choices=("auto", "slurm"),
    )
    cluster_timeout: float = option(
        CLUSTER_TIMEOUT,
        "seconds a worker of a multi-machine run waits for the others (naming the missing ones "
        f"every {REPORT_EVERY} s) before it stops.",
        source="this project's choice",
        group=TRAINING,
        reuse=False,
        type=float,
    )
    precision: str = runtime("precision", group=TRAINING)
    seed: int = runtime("seed", group=TRAINING)
    deterministic: bool = runtime("deterministic", reuse=False, group=TRAINING)
    verbose: int = runtime("verbose", reuse=False, group=TRAINING)
    flip_rate: float = option(transforms.FLIP_RATE, "", group=DISTORT, type=float)
    local_rate: float = option(transforms.LOCAL_RATE, "local pixel shuffling.", group=DISTORT, type=float)
    local_blocks: int = option(transforms.N_BLOCKS, _local_blocks_help(), group=DISTORT, type=int)
    nonlinear_rate: float = option(transforms.NONLINEAR_RATE, "", group=DISTORT, type=float)
    paint_rate: float = option(transforms.PAINT_RATE, "", group=DISTORT, type=float)
    inpaint_rate: float = option(
        transforms.INPAINT_RATE, "share of painting that is in-painting.", group=DISTORT, type=float
    )
    out: str = option(
        None,
        "output folder. Default: weights/genesis2d_<backbone>_<norm>/ (contrastive2d_<backbone>/, "
        "genesis2d+contrastive_<backbone>_<norm>/ for the other objectives, with a _queue suffix for --negatives "
        "queue; under runs/ with a demo_ prefix for the demo corpus).",
        group=OUTPUT,
        reuse=False,
    )
    resume: bool = option(
        False,
        "continue the unfinished run in --out from its last checkpoint, bit for bit the run "
        "that was never stopped (on a CPU); with more --epochs, continue a finished one.",
        group=OUTPUT,
        reuse=False,
        action="store_true",
    )
    overwrite: bool = option(
        False,
        "replace the run in --out (finished with other settings or data, or unfinished). Default: a "
        "finished run with the same settings and data is kept and reused; with others the "
        "command stops, naming what changed.",
        group=OUTPUT,
        reuse=False,
        action="store_true",
    )
    checkpoint_every: int = option(
        500,
        "steps between mid-epoch checkpoints (and health checks of the encoder and its output).",
        group=OUTPUT,
        reuse=False,
        type=int,
    )
    samples: int = option(
        4, "validation samples drawn in each epoch's PNG grid.", group=OUTPUT, reuse=False, type=count_type(1)
    )

    def __post_init__(self):
        if self.lr is None:  # The objective's rate (a frozen dataclass: set once, here).
            object.__setattr__(self, "lr", default_lr(self.objective, self.batch_size))
        super().__post_init__()

    @property
    def distortions(self):
        """The distortion rates of this run, as `make_pair` takes them (`DistortionRates`)."""
        return DistortionRates(**{item.name: getattr(self, item.name) for item in dataclasses.fields(DistortionRates)})

    @property
    def two_views(self):
        """Whether the objective contrasts two views of each slice (its batches hold batch_size / 2 slices)."""
        return self.objective != "genesis"

    @property
    def slices_per_batch(self):
        """Slices read per batch: batch_size, or half of it where each slice gives two views."""
        return self.batch_size // 2 if self.two_views else self.batch_size

    def record(self):
        """A JSON-able dict of the settings, written to run.json."""
        return dataclasses.asdict(self)


DEFAULTS = PretrainConfig()
RATES = DistortionRates()


def build_parser():
    """The parser of `python genesis2d/train.py`, read off PretrainConfig's fields."""
    return build_options_parser(
        PretrainConfig,
        "python genesis2d/train.py",
        "Models Genesis pretraining of a 2D U-Net on CT, MRI and X-ray slices. With no --manifest or --shards, trains "
        "on the built-in demo corpus (generated on first use) with the small settings of "
        "genesis2d/configs/demo_pretrain.yaml.",
        seeds="weights, data order, crops and distortions",
    )


def resolve(config):
    """`config` checked, with its default output folder filled in."""
    if config.manifest and config.shards:
        raise UsageError("--manifest/--shards", "give one of them, not both")
    if config.two_views and (config.batch_size < 4 or config.batch_size % 2):
        raise UsageError(
            "--batch-size",
            f"{config.batch_size} is not an even number of at least 4: --objective {config.objective} feeds two "
            "views of each of batch/2 slices, and each view needs another slice's views as negatives",
        )
    if config.negatives == "queue":
        if not config.two_views:
            raise UsageError(
                "--negatives", "queue is for the contrastive objectives; --objective genesis has no negatives"
            )
        if config.queue_size < 1:
            raise UsageError("--queue-size", f"{config.queue_size} is not a positive number of keys")
        if not 0 <= config.key_momentum < 1:
            raise UsageError("--key-momentum", f"{config.key_momentum} is not in [0, 1)")
    if config.out:
        return config
    demo = not (config.manifest or config.shards)  # Demo encoders go under runs/: weights/ holds real data's only.
    name = {"genesis": "genesis2d", "contrastive": "contrastive2d", "genesis+contrastive": "genesis2d+contrastive"}
    norm = "" if config.objective == "contrastive" else f"_{config.norm}"  # No decoder, so no decoder norm.
    queue = "_queue" if config.negatives == "queue" else ""
    out = (
        PROJECT_ROOT
        / ("runs" if demo else "weights")
        / f"{'demo_' if demo else ''}{name[config.objective]}_{config.backbone}{norm}{queue}"
    )
    return dataclasses.replace(config, out=str(out))


def parse_args(argv=None):
    """The resolved PretrainConfig; without a data source, the demo corpus and its config (unless --config)."""
    parser = build_parser()
    objective = parser.parse_known_args(argv)[0].objective  # The demo's settings depend on it.
    demo = DEMO_CONFIG if objective in (None, "genesis") else DEMO_CONTRASTIVE_CONFIG
    return resolve(parse_options(PretrainConfig, parser, argv, demo, ("--manifest", "--shards")))
