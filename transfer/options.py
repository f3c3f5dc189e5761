"""The command-line options every downstream command shares, and their resolution into typed settings."""

import argparse

from genesis2d.backbones import BACKBONES, RADIMAGENET_SOURCE
from plumbing.cli import default_verbosity
from transfer.encoders import INITS, EncoderSpec
from transfer.finetune import Head, Schedule
from transfer.schedules import SCHEDULE_FIELDS, schedule_row


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
                       "(transfer/probe.py). Results go to <default out>_probe.")
    group.add_argument("--gallery", type=int, default=4, metavar="K",
                       help="Grad-CAM gallery (saliency.png in each run or fold folder): the K most confident true "
                       "positives, false positives and false negatives of the test set, the map over each view. 0 "
                       "skips it. A linear probe's maps are its class activation maps (transfer/probe.py). Default: 4.")
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
