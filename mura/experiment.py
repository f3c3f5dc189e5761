"""MURA abnormality detection with a scratch, genesis or ImageNet encoder (thesis 4.2.4-4.2.6);
the library behind `python mura/train.py`.

Images are classified one by one at 224x224; a study's probability is the mean
of its images' (as in the MURA paper), scored with AUC and Cohen's kappa at 0.5.
Training follows thesis Fig. 4.33 through the shared transfer core. The best
epoch is chosen by validation AUC on patients held out of the training split
(`--selection-fraction`, 10%), so the official `valid` split, on which every
metric is reported, plays no part in training; `--selection-fraction 0` selects
on `valid` as the thesis did (and makes its numbers optimistic).

The thesis augmented the training images offline into a balanced set of about
29k per class; here the same augmentations (rotation 20 degrees, zoom 0.9-1.1,
flips) are drawn afresh for every batch, which sees more variety for the same
number of steps and needs no disk.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from genesis2d.metrics import binary_metrics, plot_histories, plot_roc
from genesis2d.transfer import add_transfer_arguments, build_classifier, load_encoder, train_two_phase
from mura.data import body_parts_of, make_dataset, read_split, split_patients, study_probabilities
from preprocessing.atomic import write_csv, write_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
# Thesis Fig. 4.33 (ResNet50, shoulder): (warm-up epochs, fine-tuning epochs, ReduceLROnPlateau factor).
THESIS_SCHEDULE = {"scratch": (0, 12, 0.01), "genesis": (2, 9, 0.1), "imagenet": (2, 3, 0.1)}
METRIC_KEYS = ("image_auc", "image_accuracy", "study_auc", "study_accuracy", "study_kappa", "study_sensitivity",
               "study_specificity")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python mura/train.py",
        description="MURA abnormality detection (shoulder by default) with a scratch, genesis or ImageNet encoder; "
        "image- and study-level evaluation on the official valid split. With no --data, runs on the built-in "
        "demo MURA tree with the small settings of mura/configs/demo.yaml.",
    )
    parser.add_argument("--config", help="YAML file of option defaults; flags override it.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="folder holding MURA-v1.1 (or MURA-v1.1 itself).")
    data.add_argument("--body-part", nargs="+", default=["XR_SHOULDER"],
                      help="one or more of XR_ELBOW .. XR_WRIST, or 'all'. Default: XR_SHOULDER (thesis 4.2.4.1).")
    data.add_argument("--image-size", type=int, default=224, help="network input side. Default: 224 (thesis).")
    data.add_argument("--selection-fraction", type=float, default=0.1,
                      help="share of training patients held out to choose the best epoch; 0 chooses on valid as the "
                      "thesis did. Default: 0.1.")
    data.add_argument("--train-fraction", type=float, default=1.0,
                      help="share of training patients used, sampled by patient (label-efficiency studies). Default: 1.0.")
    data.add_argument("--repeats", type=int, default=1, help="train N times with seeds seed..seed+N-1 and report mean "
                      "and standard deviation (the thesis averaged 2). Default: 1.")
    add_transfer_arguments(parser, epochs=None, warmup_epochs=None, batch_size=16, lr_factor=None, lr_patience=3)
    parser.add_argument("--out", help="output folder. Default: runs/mura_<backbone>_<init>/.")
    return parser


def parse_args(argv=None):
    from genesis2d.cli import parse_with_demo_default

    args = parse_with_demo_default(build_parser(), argv, DEMO_CONFIG, ("--data",))
    warmup, epochs, factor = THESIS_SCHEDULE[args.init]
    args.default_warmup = warmup
    args.epochs = epochs if args.epochs is None else args.epochs
    args.lr_factor = factor if args.lr_factor is None else args.lr_factor
    try:
        args.body_part = list(body_parts_of(args.body_part))
    except ValueError as error:
        sys.exit(f"error: {error}")
    if args.out is None:
        args.out = str(PROJECT_ROOT / "runs" / f"mura_{args.backbone}_{args.init}")
    return args


def data_root(args):
    if args.data:
        return Path(args.data)
    from preprocessing.demo import default_demo_dir, ensure_demo

    return ensure_demo(default_demo_dir())


def evaluate(images):
    """Image- and study-level metrics of a predictions table (path, study, label, probability)."""
    from sklearn.metrics import cohen_kappa_score

    studies = study_probabilities(images)
    image, study = binary_metrics(images["label"], images["probability"]), binary_metrics(studies["label"], studies["probability"])
    kappa = cohen_kappa_score(studies["label"], (studies["probability"] >= 0.5).astype(int))
    return studies, {
        "image_auc": image["auc"], "image_accuracy": image["accuracy"], "study_auc": study["auc"],
        "study_accuracy": study["accuracy"], "study_kappa": float(kappa), "study_sensitivity": study["sensitivity"],
        "study_specificity": study["specificity"], "images": image["n"], "studies": study["n"],
    }


def train_once(args, train, selection, valid, seed, out):
    """One training run; returns (image predictions on valid, history)."""
    import keras

    keras.utils.set_random_seed(seed)
    encoder = load_encoder(args.init, args.backbone, (args.image_size, args.image_size, 1), args.encoder,
                           args.imagenet_weights)
    model = build_classifier(encoder, args.units, args.l2, args.dropout)
    history = train_two_phase(model, encoder, make_dataset(train, args.batch_size, args.image_size, True, seed),
                              make_dataset(selection, args.batch_size, args.image_size), args, out)
    probability = model.predict(make_dataset(valid, 64, args.image_size).map(lambda x, y: x), verbose=0).ravel()
    return valid.assign(probability=probability)[["path", "study", "label", "probability"]], history


def run(args):
    from genesis2d.cli import write_run_record
    from genesis2d.runtime import pick_precision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = pick_precision(args.precision)
    root = data_root(args)
    train_all = read_split(root, "train", args.body_part)
    valid = read_split(root, "valid", args.body_part)
    rng = np.random.default_rng(args.seed)
    if args.selection_fraction > 0:
        train, selection = split_patients(train_all, args.selection_fraction, rng)
    else:
        train, selection = train_all, valid
    if not 0 < args.train_fraction <= 1:
        raise SystemExit(f"error: --train-fraction must be in (0, 1]. Received: {args.train_fraction}")
    if args.train_fraction < 1.0:  # Label efficiency: whole patients, seeded.
        train, _ = split_patients(train, 1.0 - args.train_fraction, rng)
    print(f"MURA {', '.join(args.body_part)}: {len(train)} training images, {len(selection)} for model selection, "
          f"{len(valid)} valid images in {valid['study'].nunique()} studies; init {args.init}, {args.backbone}, "
          f"{precision}", flush=True)
    write_run_record(out, args, {"precision": precision, "data": str(root)})
    runs, histories = [], {}
    for repeat in range(args.repeats):
        run_dir = out if args.repeats == 1 else out / f"repeat{repeat + 1}"
        images, history = train_once(args, train, selection, valid, args.seed + repeat, run_dir)
        studies, metrics = evaluate(images)
        write_csv(run_dir / "predictions_images.csv", images)
        write_csv(run_dir / "predictions_studies.csv", studies)
        write_json(run_dir / "metrics.json", metrics)
        runs.append((images, studies, metrics))
        histories[f"run {repeat + 1}"] = history
        print(f"run {repeat + 1}: image AUC {metrics['image_auc']:.4f}, study AUC {metrics['study_auc']:.4f}, "
              f"kappa {metrics['study_kappa']:.4f}", flush=True)
    summary = {key: float(np.mean([m[key] for _, _, m in runs])) for key in METRIC_KEYS}
    summary.update({f"{key}_std": float(np.std([m[key] for _, _, m in runs], ddof=1)) if len(runs) > 1 else 0.0
                    for key in METRIC_KEYS})
    summary.update({"task": "mura", "train_fraction": args.train_fraction, "repeats": [m for _, _, m in runs], "init": args.init, "backbone": args.backbone,
                    "body_parts": args.body_part, "images": int(len(valid)), "studies": int(valid["study"].nunique())})
    if args.repeats > 1:  # Top-level predictions: the repeats' mean probability.
        images = runs[0][0].assign(probability=np.mean([r[0]["probability"] for r in runs], axis=0))
        studies = study_probabilities(images)
        write_csv(out / "predictions_images.csv", images)
        write_csv(out / "predictions_studies.csv", studies)
        summary["predictions"] = "mean probability of the repeats"
    write_json(out / "metrics.json", summary)
    images, studies = pd.read_csv(out / "predictions_images.csv"), pd.read_csv(out / "predictions_studies.csv")
    plot_roc({"images": (images["label"], images["probability"]), "studies": (studies["label"], studies["probability"])},
             out / "roc.png", title=f"MURA {args.backbone} {args.init}")
    plot_histories(histories, out / "loss_curves.png", title=f"MURA {args.backbone} {args.init}: loss")
    spread = f" (sd {summary['study_auc_std']:.4f} over {args.repeats} runs)" if args.repeats > 1 else ""
    print(f"study AUC {summary['study_auc']:.4f}{spread}, kappa {summary['study_kappa']:.4f}; results in {out}")
    return summary


def main(argv=None):
    from genesis2d.cli import run_command

    run_command(parse_args, run, argv)
