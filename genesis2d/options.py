"""The settings of a pretraining run: one frozen dataclass whose fields are the defaults, and its parser.

Every default is written once, as a field below (the distortion rates in
`genesis2d.transforms`, where the distortions are); `build_parser` reads each option's
default and the `Default:` of its help from there, and a test checks that every field
has its option.

Optimizer defaults come from the public Models Genesis Keras configuration:
SGD with learning rate 1.0 and momentum 0.9 on the mean squared error, early
stopping after 50 epochs without a better validation loss, and the learning rate
halved after 10 such epochs, down to 1e-6.
"""

import dataclasses
from pathlib import Path

from genesis2d import transforms
from genesis2d.backbones import BACKBONES, image_size
from genesis2d.strategy import CLUSTER_TIMEOUT, REPORT_EVERY
from plumbing.cli import ArgumentParser, add_runtime_arguments
from plumbing.errors import UsageError
from preprocessing.geometry import CROP_SIZE, IMAGE_SIZE

CONFIG_DIR = Path(__file__).with_name("configs")
DEMO_CONFIG = CONFIG_DIR / "demo_pretrain.yaml"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run, resolved; one field per option of `build_parser`."""

    out: str
    manifest: str | None = None
    shards: str | None = None
    crop_size: int = CROP_SIZE  # Thesis 3.1.8.
    image_size: int = IMAGE_SIZE
    shuffle_buffer: int = 512
    backbone: str = "resnet50"
    norm: str = "batch"  # Thesis 3.1.11.
    bn_momentum: float = 0.99  # Keras.
    encoder_weights: str | None = None
    batch_size: int = 32
    epochs: int = 100
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    optimizer: str = "sgd"  # Models Genesis.
    lr: float = 1.0  # Models Genesis, with SGD.
    momentum: float = 0.9  # Models Genesis.
    lr_factor: float = 0.5  # Models Genesis.
    lr_patience: int = 10  # Models Genesis.
    min_lr: float = 1e-6  # Models Genesis.
    early_stopping_patience: int = 50  # Models Genesis.
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
    def from_args(cls, args, **resolved):
        """The config of a parsed namespace (left as it is); `resolved` overrides fields (e.g. out)."""
        options = {**vars(args), **resolved}
        rates = {field.name: options.pop(field.name) for field in dataclasses.fields(DistortionRates)}
        options.pop("config", None)
        return cls(**options, distortions=DistortionRates(**rates))

    def record(self):
        """A JSON-able dict of the settings, written to run.json."""
        return dataclasses.asdict(self)


DEFAULTS = PretrainConfig(out="")
RATES = DistortionRates()


def build_parser():
    """The parser of `python genesis2d/train.py`; every default read from PretrainConfig / DistortionRates."""
    d, r = DEFAULTS, RATES
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
    data.add_argument("--crop-size", type=int, default=d.crop_size,
                      help=f"random crop side before resizing (thesis 3.1.8). Default: {d.crop_size}.")
    data.add_argument("--image-size", type=image_size, default=d.image_size,
                      help=f"network input side, a multiple of 32. Default: {d.image_size}.")
    data.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                      help=f"slices held for shuffling. Default: {d.shuffle_buffer}.")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=d.backbone, choices=sorted(BACKBONES), help=f"encoder. Default: {d.backbone}.")
    model.add_argument("--norm", default=d.norm, choices=("batch", "instance", "none"),
                       help=f"decoder normalisation (thesis 3.1.11). Default: {d.norm}.")
    model.add_argument("--bn-momentum", type=float, default=d.bn_momentum,
                       help="BatchNormalization momentum of the moving statistics. Lower it (e.g. 0.9) for short runs, "
                       f"whose statistics would otherwise lag the weights. Default: {d.bn_momentum} (Keras).")
    model.add_argument("--encoder-weights", default=d.encoder_weights, choices=(None, "imagenet"),
                       type=lambda v: None if v in ("none", "None") else v,
                       help="start the encoder from ImageNet instead of random weights. Default: none.")
    train = parser.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch size. Default: {d.batch_size}.")
    train.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs. Default: {d.epochs}.")
    train.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                       help="training steps per epoch. Default: one pass over the training slices.")
    train.add_argument("--validation-steps", type=int, default=d.validation_steps,
                       help="validation batches per epoch. Default: the whole validation split.")
    train.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adam"),
                       help=f"Default: {d.optimizer} (Models Genesis). With adam, a CPU run is not bit-for-bit repeatable "
                       "(Keras's Adam under TensorFlow: two runs of one seed drift apart from the first epoch's 5th "
                       "significant digit).")
    train.add_argument("--lr", type=float, default=d.lr,
                       help=f"initial learning rate. Default: {d.lr} (Models Genesis, with SGD). A run whose encoder "
                       "blows up or whose output turns constant stops and says so: lower it then.")
    train.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum. Default: {d.momentum} "
                       "(Models Genesis).")
    train.add_argument("--lr-factor", type=float, default=d.lr_factor,
                       help=f"ReduceLROnPlateau factor. Default: {d.lr_factor} (Models Genesis).")
    train.add_argument("--lr-patience", type=int, default=d.lr_patience,
                       help=f"epochs without improvement before reducing. Default: {d.lr_patience} (Models Genesis).")
    train.add_argument("--min-lr", type=float, default=d.min_lr,
                       help=f"lowest learning rate. Default: {d.min_lr:g} (Models Genesis).")
    train.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience,
                       help=f"Default: {d.early_stopping_patience} (Models Genesis).")
    train.add_argument("--cluster", default=d.cluster, choices=("auto", "slurm"),
                       help="where the workers of a multi-machine run are listed: auto reads TF_CONFIG (several tasks "
                       "there: train on all of them), slurm reads the allocation of `srun`. Each worker reads its own "
                       "share of the data; --batch-size stays the global batch; worker 0 writes the outputs. TensorFlow's "
                       "channel between workers listens on every interface, unauthenticated: use a private network. "
                       f"Default: {d.cluster} (one machine without TF_CONFIG).")
    train.add_argument("--cluster-timeout", type=float, default=d.cluster_timeout,
                       help="seconds a worker of a multi-machine run waits for the others (naming the missing ones "
                       f"every {REPORT_EVERY} s) before it stops. Default: {d.cluster_timeout:g} (this project's choice).")
    add_runtime_arguments(parser, seeds="weights, data order, crops and distortions", group=train)
    distort = parser.add_argument_group("distortions (public Models Genesis code's rates)")
    distort.add_argument("--flip-rate", type=float, default=r.flip_rate, help=f"Default: {r.flip_rate}.")
    distort.add_argument("--local-rate", type=float, default=r.local_rate,
                         help=f"local pixel shuffling. Default: {r.local_rate}.")
    distort.add_argument("--local-blocks", type=int, default=r.local_blocks,
                         help="blocks shuffled by local pixel shuffling, each of sides 1..size/10. Default: "
                         f"{r.local_blocks:,} (the public Models Genesis code's count for 64x64x32 cubes, where "
                         f"~{transforms.blocks_per_pixel(r.local_blocks, 64, 32):.1f} blocks cover a voxel; at "
                         f"{d.image_size}x{d.image_size} ~{transforms.blocks_per_pixel(r.local_blocks, d.image_size):.0f} "
                         "cover each pixel, so the whole slice is shuffled when it fires; see "
                         "docs/distortions_224.png).")
    distort.add_argument("--nonlinear-rate", type=float, default=r.nonlinear_rate, help=f"Default: {r.nonlinear_rate}.")
    distort.add_argument("--paint-rate", type=float, default=r.paint_rate, help=f"Default: {r.paint_rate}.")
    distort.add_argument("--inpaint-rate", type=float, default=r.inpaint_rate,
                         help=f"share of painting that is in-painting. Default: {r.inpaint_rate}.")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="output folder. Default: weights/genesis2d_<backbone>_<norm>/ "
                        "(runs/demo_genesis2d_<backbone>_<norm>/ for the demo corpus).")
    output.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, "
                        "bit for bit the run that was never stopped (on a CPU).")
    output.add_argument("--overwrite", action="store_true", help="replace a finished run in --out. Default: a finished "
                        "run is never replaced; the command stops and says so.")
    output.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                        help="steps between mid-epoch checkpoints (and health checks of the encoder and its output). "
                        f"Default: {d.checkpoint_every}.")
    output.add_argument("--samples", type=int, default=d.samples,
                        help=f"validation samples drawn in each epoch's PNG grid. Default: {d.samples}.")
    return parser


def parse_args(argv=None):
    """The resolved PretrainConfig; without a data source, the demo corpus and its config (unless --config)."""
    from plumbing.cli import parse_with_demo_default

    args = parse_with_demo_default(build_parser(), argv, DEMO_CONFIG, ("--manifest", "--shards"))
    if args.manifest and args.shards:
        raise UsageError("--manifest/--shards", "give one of them, not both")
    out = args.out
    if out is None:  # Demo encoders go under runs/, so weights/ holds only encoders of real data.
        demo = not (args.manifest or args.shards)
        out = str(PROJECT_ROOT / ("runs" if demo else "weights") / f"{'demo_' if demo else ''}genesis2d_"
                  f"{args.backbone}_{args.norm}")
    return PretrainConfig.from_args(args, out=out)
