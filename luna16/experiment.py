"""Five-fold cross-validation over LUNA16 subset pairs (thesis 4.2.1-4.2.3); the library behind
`python luna16/cross_validate.py`.

Fold k tests on subsets (2k, 2k+1) and trains on the other eight; a validation
part (whole series) is held out of the training subsets for early model
selection. Training subsets keep 10% of their negatives and gain 7 augmented
copies of each positive; validation and test candidates are never subsampled
or augmented. Each view of a candidate is one sample; a candidate's probability
is the mean over its three views.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from genesis2d.metrics import binary_metrics, plot_histories, plot_roc
from genesis2d.transfer import add_transfer_arguments, build_classifier, load_encoder, train_two_phase
from luna16.data import FOLD_PAIRS, Subset, evaluation_arrays, extract_subsets, fold_subsets, training_arrays, validation_series
from preprocessing.atomic import write_csv, write_json, write_text

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
PREDICTION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class", "probability"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python luna16/cross_validate.py",
        description="LUNA16 false-positive reduction as 2D patch classification: 5-fold cross-validation over "
        "subset pairs 0-1 .. 8-9 with a scratch, genesis or ImageNet encoder. With no --data, runs on the "
        "built-in demo LUNA16 tree with the small settings of luna16/configs/demo.yaml.",
    )
    parser.add_argument("--config", help="YAML file of option defaults; flags override it.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="LUNA16 folder: subset0..subset9 with .mhd/.raw scans and candidates_V2.csv.")
    data.add_argument("--patches", help="folder for extracted patches (shared by runs). Default: beside --out.")
    data.add_argument("--patch-size", type=int, default=64, help="patch side in pixels. Default: 64 (thesis).")
    data.add_argument("--pixel-mm", type=float, default=None, help="patch sampling step in mm. Default: in-plane spacing.")
    data.add_argument("--method", default="planes", choices=("planes", "cube"), help="thesis patch method 1 or 2. Default: planes.")
    data.add_argument("--image-size", type=int, default=None, help="network input side. Default: the patch size.")
    data.add_argument("--negative-fraction", type=float, default=0.1, help="negatives kept per training subset. Default: 0.1 (thesis).")
    data.add_argument("--positive-copies", type=int, default=8, help="copies of each training positive. Default: 8 (thesis).")
    data.add_argument("--validation-fraction", type=float, default=0.1, help="share of training series held out for validation. Default: 0.1.")
    data.add_argument("--train-fraction", type=float, default=1.0,
                      help="share of training series used, sampled per fold (label-efficiency studies). Default: 1.0.")
    data.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="folds to run, 1-5 (fold k tests subsets 2k-2, 2k-1). Default: all.")
    add_transfer_arguments(parser, epochs=13, warmup_epochs=2, batch_size=32, lr_factor=None, lr_patience=3)
    parser.add_argument("--out", help="output folder. Default: runs/luna16_<backbone>_<init>/.")
    return parser


def parse_args(argv=None):
    from genesis2d.cli import parse_with_demo_default

    args = parse_with_demo_default(build_parser(), argv, DEMO_CONFIG, ("--data",))
    if args.lr_factor is None:  # Thesis 4.2.2 and 4.2.3.
        args.lr_factor = 0.01 if args.backbone.startswith("vgg") else 0.1
    args.image_size = args.image_size or args.patch_size
    if args.out is None:
        args.out = str(PROJECT_ROOT / "runs" / f"luna16_{args.backbone}_{args.init}")
    bad = [k for k in args.folds if k not in range(1, 6)]
    if bad:
        sys.exit(f"error: --folds takes 1 to 5. Received: {bad}")
    if not 0 < args.train_fraction <= 1:
        sys.exit(f"error: --train-fraction must be in (0, 1]. Received: {args.train_fraction}")
    return args


def data_dirs(args):
    """(LUNA16 folder, patches folder), the demo tree written on first use when --data is absent."""
    if args.data:
        data = Path(args.data)
    else:
        from preprocessing.demo import default_demo_dir, ensure_demo

        data = ensure_demo(default_demo_dir()) / "LUNA16"
    patches = Path(args.patches) if args.patches else Path(args.out).parent / f"luna16_patches_{args.patch_size}_{args.method}"
    return data, patches


def _dataset(images, labels, batch_size, image_size, shuffle_seed=None):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)

    def prepare(x, y):
        x = tf.cast(x, tf.float32)
        if x.shape[1] != image_size:
            x = tf.image.resize(x, (image_size, image_size))
        return x, y

    return dataset.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def run_fold(fold, patches_dir, args):
    """Trains and tests one fold; returns its predictions (one row per test candidate)."""
    import keras

    test_pair = FOLD_PAIRS[fold - 1]
    fold_dir = Path(args.out) / f"fold{fold}_subsets{test_pair[0]}-{test_pair[1]}"
    if (fold_dir / "predictions.csv").exists():
        print(f"fold {fold}: done earlier, kept ({fold_dir / 'predictions.csv'})")
        return pd.read_csv(fold_dir / "predictions.csv")
    train_ids, test_ids = fold_subsets(test_pair)
    rng = np.random.default_rng([args.seed, fold])
    train_subsets = [Subset(Path(patches_dir) / f"subset{s}") for s in train_ids]
    test_subsets = [Subset(Path(patches_dir) / f"subset{s}") for s in test_ids]
    held_out = validation_series(train_subsets, args.validation_fraction, rng)
    unused = set()
    if args.train_fraction < 1.0:  # Label efficiency: train on a share of the series, whole series only.
        remaining = sorted({uid for s in train_subsets for uid in s.candidates["seriesuid"]} - held_out)
        keep = max(1, int(round(args.train_fraction * len(remaining))))
        unused = set(remaining) - set(rng.choice(remaining, size=keep, replace=False))
    x_train, y_train = training_arrays(train_subsets, held_out | unused, args.negative_fraction, rng,
                                       use_augmented=args.positive_copies > 1)
    x_val, y_val, _ = evaluation_arrays(train_subsets, held_out)
    x_test, y_test, table = evaluation_arrays(test_subsets)
    print(f"fold {fold}: test subsets {test_pair}; {len(y_train) // 3} training candidates "
          f"({int(y_train.sum()) // 3} positive after augmentation), {len(held_out)} validation series, "
          f"{len(table)} test candidates", flush=True)
    keras.utils.set_random_seed(args.seed + fold)
    encoder = load_encoder(args.init, args.backbone, (args.image_size, args.image_size, 1), args.encoder,
                           args.imagenet_weights)
    model = build_classifier(encoder, args.units, args.l2, args.dropout)
    train = _dataset(x_train, y_train, args.batch_size, args.image_size, shuffle_seed=args.seed + fold)
    validation = _dataset(x_val, y_val, args.batch_size, args.image_size)
    history = train_two_phase(model, encoder, train, validation, args, fold_dir)
    test_images = _dataset(x_test, y_test, 256, args.image_size).map(lambda x, y: x)
    views = model.predict(test_images, verbose=0).ravel().reshape(-1, 3)
    predictions = table.assign(probability=views.mean(axis=1))[PREDICTION_COLUMNS]
    metrics = binary_metrics(predictions["class"], predictions["probability"])
    write_json(fold_dir / "metrics.json", {"fold": fold, "test_subsets": list(test_pair), **metrics,
                                           "epochs_trained": len(history)})
    write_csv(fold_dir / "predictions.csv", predictions)  # Last: marks the fold done.
    print(f"fold {fold}: test AUC {metrics['auc']:.4f}", flush=True)
    return predictions


def summarize(out, folds, predictions_by_fold, args):
    """summary.csv / summary.md (thesis Fig. 4.12), predictions.csv, roc_folds.png, loss_curves.png."""
    out = Path(out)
    rows, curves, histories = [], {}, {}
    for fold, predictions in zip(folds, predictions_by_fold):
        a, b = FOLD_PAIRS[fold - 1]
        metrics = binary_metrics(predictions["class"], predictions["probability"])
        rows.append({"fold": fold, "test_subsets": f"{a}-{b}", **metrics})
        curves[f"subset{a}-{b}"] = (predictions["class"], predictions["probability"])
        history = Path(out) / f"fold{fold}_subsets{a}-{b}" / "history.csv"
        if history.exists():
            histories[f"subset{a}-{b}"] = pd.read_csv(history)
    table = pd.DataFrame(rows)
    mean = table[["auc", "accuracy", "sensitivity", "specificity"]].mean()
    std = table[["auc"]].std(ddof=1)
    write_csv(out / "summary.csv", table)
    lines = [f"# LUNA16 {args.backbone}, init {args.init}", "", "| test subsets | AUC | accuracy | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['test_subsets']} | {r['auc']:.4f} | {r['accuracy']:.4f} | {r['sensitivity']:.4f} | {r['specificity']:.4f} |"
              for r in rows]
    lines.append(f"| **mean** | **{mean['auc']:.4f}**" + (f" (sd {std['auc']:.4f})" if len(rows) > 1 else "")
                 + f" | {mean['accuracy']:.4f} | {mean['sensitivity']:.4f} | {mean['specificity']:.4f} |")
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    everything = pd.concat(predictions_by_fold, ignore_index=True)
    write_csv(out / "predictions.csv", everything)
    plot_roc(curves, out / "roc_folds.png", title=f"LUNA16 {args.backbone} {args.init}: ROC per fold")
    if histories:
        plot_histories(histories, out / "loss_curves.png", title=f"LUNA16 {args.backbone} {args.init}: loss per fold")
    write_json(out / "metrics.json", {"task": "luna16", "mean_auc": float(mean["auc"]), "folds": rows, "init": args.init,
                                      "backbone": args.backbone, "candidates": int(len(everything)),
                                      "train_fraction": args.train_fraction})
    return table


def run(args):
    from genesis2d.cli import write_run_record
    from genesis2d.runtime import pick_precision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = pick_precision(args.precision)
    data, patches = data_dirs(args)
    print(f"LUNA16: {data}; patches: {patches}; init {args.init}, backbone {args.backbone}, {precision}", flush=True)
    extract_subsets(data, patches, args.patch_size, args.pixel_mm, args.method, args.positive_copies, args.seed)
    write_run_record(out, args, {"precision": precision, "data": str(data), "patches": str(patches)})
    predictions = [run_fold(fold, patches, args) for fold in args.folds]
    table = summarize(out, args.folds, predictions, args)
    print((out / "summary.md").read_text())
    print(f"results in {out}")
    return table


def main(argv=None):
    from genesis2d.cli import run_command

    run_command(parse_args, run, argv)
