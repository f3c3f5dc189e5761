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
import json
from pathlib import Path

import numpy as np
import pandas as pd

from genesis2d.backbones import BACKBONES, image_size
from transfer.probe import probe_encoder
from transfer.saliency import grad_cam, saliency_block
from transfer.statistics import binary_metrics
from transfer.plots import plot_histories, plot_roc
from plumbing.fingerprint import finished_with, fingerprint
from transfer.results import score_rows, write_results
from plumbing.runtime import STREAM_FOLD, derive_seed, set_seed
from transfer.schedules import ThesisSchedule, schedule_table_text
from transfer.options import add_transfer_arguments, resolve_schedule, transfer_settings
from transfer.finetune import fine_tune, predict
from transfer.encoders import resolve_encoder_files
from transfer.saliency import saliency_gallery
from luna16.patches import PLANES
from luna16.data import (FOLD_PAIRS, Subset, evaluation_arrays, extract_subsets, fold_subsets, read_candidates,
                         scans_by_subset, training_arrays, validation_series)
from plumbing.atomic import write_csv, write_json, write_text
from plumbing.cli import ArgumentParser, fraction_type
from plumbing.errors import UsageError
from preprocessing.split import hold_out_groups

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
PREDICTION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class", "probability"]
# The thesis's LUNA16 schedules (SGD 1e-3, momentum 0.9, 64x64 patches): VGG16 from Fig. 4.9 (4.2.2),
# ResNet50 from 4.2.3. Where the thesis is silent: no warm-up (its LUNA16 tables list none, where the MURA
# table of Fig. 4.33 lists one), and patience 3 for VGG16 (4.2.3 gives 3 for ResNet50; 4.2.2 gives none).
THESIS_SCHEDULES = {
    ("vgg16", "scratch"): ThesisSchedule(epochs=18, warmup_epochs=0, batch_size=32, lr_factor=0.01, lr_patience=3),
    ("vgg16", "genesis"): ThesisSchedule(epochs=13, warmup_epochs=0, batch_size=32, lr_factor=0.01, lr_patience=3),
    ("vgg16", "imagenet"): ThesisSchedule(epochs=13, warmup_epochs=0, batch_size=32, lr_factor=0.01, lr_patience=3),
    ("resnet50", "scratch"): ThesisSchedule(epochs=10, warmup_epochs=0, batch_size=32, lr_factor=0.1, lr_patience=3),
    ("resnet50", "genesis"): ThesisSchedule(epochs=10, warmup_epochs=0, batch_size=32, lr_factor=0.1, lr_patience=3),
    ("resnet50", "imagenet"): ThesisSchedule(epochs=10, warmup_epochs=0, batch_size=32, lr_factor=0.1, lr_patience=3),
}
VIEWS = 3
# The results contract's levels: the candidate (its views' mean) first, as the thesis counts candidates.
LEVELS = [
    {"name": "candidate", "description": "candidates of the test folds (mean of 3 views), mean of folds",
     "group": "scan", "metrics": ["auc"]},
    {"name": "patch", "description": "patches of the test folds (each view alone), mean of folds",
     "group": "scan", "metrics": ["auc"]},
]


def build_parser():
    parser = ArgumentParser(
        prog="python luna16/cross_validate.py",
        description="LUNA16 false-positive reduction as 2D patch classification: 5-fold cross-validation over "
        "subset pairs 0-1 .. 8-9 with a scratch, genesis or ImageNet encoder. With no --data, runs on the "
        "built-in demo LUNA16 tree with the small settings of luna16/configs/demo.yaml.",
        epilog=schedule_table_text(THESIS_SCHEDULES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of option defaults; flags override it.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="LUNA16 folder: subset0..subset9 with .mhd/.raw scans and candidates_V2.csv.")
    data.add_argument("--patches", help="folder for extracted patches (shared by runs). Default: beside --out.")
    data.add_argument("--patch-size", type=int, default=64, help="patch side in pixels. Default: 64 (thesis).")
    data.add_argument("--pixel-mm", type=float, default=None, help="patch sampling step in mm. Default: in-plane spacing.")
    data.add_argument("--method", default="planes", choices=("planes", "cube"), help="thesis patch method 1 or 2. Default: planes.")
    data.add_argument("--image-size", type=image_size, default=None,
                      help="network input side, a multiple of 32. Default: the patch size.")
    data.add_argument("--negative-fraction", type=fraction_type(), default=0.1,
                      help="negatives kept per training subset. Default: 0.1 (thesis).")
    data.add_argument("--positive-copies", type=int, default=8, help="copies of each training positive. Default: 8 (thesis).")
    data.add_argument("--validation-fraction", type=fraction_type(), default=0.1,
                      help="share of training series held out for validation. Default: 0.1.")
    data.add_argument("--train-fraction", type=fraction_type(), default=1.0,
                      help="share of training series used, sampled per fold (label-efficiency studies). Default: 1.0.")
    data.add_argument("--folds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="folds to run, 1-5 (fold k tests subsets 2k-2, 2k-1). Default: all.")
    add_transfer_arguments(parser)
    parser.add_argument("--out", help="output folder. Default: runs/luna16_<backbone>_<init>/.")
    return parser


def parse_args(argv=None):
    from plumbing.cli import parse_with_demo_default

    args = parse_with_demo_default(build_parser(), argv, DEMO_CONFIG, ("--data",))
    resolve_schedule(args, THESIS_SCHEDULES)
    resolve_encoder_files(args)  # Before hours of patch extraction, not after.
    args.image_size = args.image_size or args.patch_size
    if args.image_size % 32:
        raise UsageError("--image-size", f"(the patch size unless given) must be a multiple of 32. Received: "
                         f"{args.image_size}")
    if args.out is None:
        args.out = str(PROJECT_ROOT / "runs" / f"luna16_{args.backbone}_{args.init}{'_probe' if args.probe else ''}")
    bad = [k for k in args.folds if k not in range(1, 6)]
    if bad:
        raise UsageError("--folds", f"takes 1 to 5. Received: {bad}")
    return args


def training_settings(args):
    """Every option that changes what a fold's model learns (recorded as the run's fingerprint)."""
    keys = ("data", "patch_size", "pixel_mm", "method", "image_size", "negative_fraction", "positive_copies",
            "validation_fraction", "train_fraction", "init", "backbone", "encoder", "encoder_sha256", "imagenet_weights", "radimagenet_weights", "epochs",
            "warmup_epochs", "batch_size", "steps_per_epoch", "lr", "momentum", "lr_factor", "lr_patience", "bn_momentum", "units",
            "l2", "dropout", "precision", "seed", "probe")
    return {key: getattr(args, key) for key in keys}


def data_dirs(args):
    """(LUNA16 folder, patches folder), the demo tree written on first use when --data is absent."""
    if args.data:
        data = Path(args.data)
    else:
        from luna16.demo import ensure_demo

        data = ensure_demo()
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


def fold_dir(out, fold):
    a, b = FOLD_PAIRS[fold - 1]
    return Path(out) / f"fold{fold}_subsets{a}-{b}"


def run_fold(fold, patches_dir, args):
    """Trains and tests one fold; returns its predictions (one row per test candidate and view)."""
    test_pair = FOLD_PAIRS[fold - 1]
    out = fold_dir(args.out, fold)
    settings = {**training_settings(args), "fold": fold}
    if (out / "predictions.csv").exists() and finished_with(out / "metrics.json", settings, args.overwrite):
        print(f"fold {fold}: done earlier with these settings, kept ({out / 'predictions.csv'})")
        return pd.read_csv(out / "predictions.csv")
    train_ids, test_ids = fold_subsets(test_pair)
    seed = derive_seed(args.seed, STREAM_FOLD, fold)
    set_seed(seed)  # Before any dataset: TensorFlow derives op seeds from the global one.
    rng = np.random.default_rng(seed)
    train_subsets = [Subset(Path(patches_dir) / f"subset{s}") for s in train_ids]
    test_subsets = [Subset(Path(patches_dir) / f"subset{s}") for s in test_ids]
    held_out = validation_series(train_subsets, args.validation_fraction, rng)
    unused = set()
    if args.train_fraction < 1.0:  # Label efficiency: train on a share of the series, whole series only.
        remaining = {uid for s in train_subsets for uid in s.candidates["seriesuid"]} - held_out
        unused = remaining - hold_out_groups(remaining, args.train_fraction, rng, minimum=1)
    x_train, y_train, train_series = training_arrays(train_subsets, held_out | unused, args.negative_fraction, rng,
                                                     use_augmented=args.positive_copies > 1, with_series=True)
    x_val, y_val, _ = evaluation_arrays(train_subsets, held_out)
    x_test, y_test, table = evaluation_arrays(test_subsets)
    dropped = sum(s.record.get("dropped_candidates", 0) for s in test_subsets)
    print(f"fold {fold}: test subsets {test_pair}; {len(y_train) // VIEWS} training candidates "
          f"({int(y_train.sum()) // VIEWS} positive after augmentation), {len(held_out)} validation series, "
          f"{len(table)} test candidates" + (f" ({dropped} dropped: outside their scan or without coordinates)"
                                             if dropped else ""), flush=True)
    encoder, head, schedule = transfer_settings(args)
    input_shape = (args.image_size, args.image_size, 1)
    extra = {}
    if args.probe:  # Frozen encoder; C chosen by cross-validation over the training scans.
        probe = probe_encoder(encoder, input_shape, _dataset(x_train, y_train, 256, args.image_size), y_train,
                              train_series, seed)
        predictor, cam, extra["probe"], history = probe.predict, probe.saliency, probe.record, []
    else:
        train = _dataset(x_train, y_train, args.batch_size, args.image_size, shuffle_seed=seed)
        validation = _dataset(x_val, y_val, args.batch_size, args.image_size)
        model, history = fine_tune(encoder, head, schedule, input_shape, train, validation, out, seed, args.verbose)

        def predictor(data):
            return predict(model, data)

        block = saliency_block(BACKBONES[args.backbone]["skips"], args.image_size)

        def cam(images):
            return grad_cam(model, images, block)
    views = predictor(_dataset(x_test, y_test, 256, args.image_size)).reshape(-1, VIEWS)
    predictions = table.assign(probability=views.mean(axis=1))[PREDICTION_COLUMNS]
    predictions[[f"view{v}" for v in range(VIEWS)]] = views
    metrics = binary_metrics(predictions["class"], predictions["probability"])
    if args.gallery:
        saliency_gallery(cam, x_test.reshape(-1, VIEWS, *x_test.shape[1:]), predictions["class"],
                         predictions["probability"], out / "saliency.png", args.gallery,
                         f"LUNA16 {args.backbone} {args.init}{' probe' if args.probe else ''}, fold {fold}: "
                         + ("class activation maps" if args.probe else f"Grad-CAM at {block or 'the last block'}"), args.image_size, PLANES)
    write_json(out / "metrics.json", {"fold": fold, "test_subsets": list(test_pair), **metrics,
                                      "patch_auc": binary_metrics(np.repeat(predictions["class"], VIEWS), views.ravel())["auc"],
                                      "epochs_trained": len(history), "dropped_test_candidates": dropped,
                                      "settings": settings, **extra})
    write_csv(out / "predictions.csv", predictions)  # Last: marks the fold done.
    chosen = (f" (linear probe: C {extra['probe']['C']:g}, cross-validated training AUC "
              f"{extra['probe']['cv_auc']:.4f})" if args.probe else "")
    print(f"fold {fold}: test AUC {metrics['auc']:.4f}{chosen}", flush=True)
    return predictions


def candidate_keys(predictions):
    """A candidate's id: its scan and world coordinates (to 1 micrometre), and #k for the k-th repeat of both."""
    coords = predictions[["coordX", "coordY", "coordZ"]].round(3).astype(str).agg(",".join, axis=1)
    keys = predictions["seriesuid"] + ":" + coords
    return keys + "#" + keys.groupby(keys).cumcount().astype(str)


def test_scores(folds, predictions_by_fold):
    """The results contract's rows: each candidate (mean of views) and each patch, grouped by scan, per fold."""
    parts = []
    for fold, predictions in zip(folds, predictions_by_fold):
        keys = candidate_keys(predictions)
        parts.append(score_rows("candidate", keys, predictions["class"], predictions["probability"],
                                predictions["seriesuid"], stratum=fold))
        for v in range(VIEWS):
            parts.append(score_rows("patch", keys + f":view{v}", predictions["class"], predictions[f"view{v}"],
                                    predictions["seriesuid"], stratum=fold))
    return pd.concat(parts, ignore_index=True)


def summarize(out, folds, predictions_by_fold, args):
    """summary.csv / summary.md (thesis Fig. 4.12), predictions.csv, figures, and the results contract."""
    out = Path(out)
    rows, curves, histories = [], {}, {}
    for fold, predictions in zip(folds, predictions_by_fold):
        a, b = FOLD_PAIRS[fold - 1]
        metrics = binary_metrics(predictions["class"], predictions["probability"])
        views = predictions[[f"view{v}" for v in range(VIEWS)]].to_numpy().ravel()
        patch_auc = binary_metrics(np.repeat(predictions["class"].to_numpy(), VIEWS), views)["auc"]
        record = fold_dir(out, fold) / "metrics.json"
        dropped = json.loads(record.read_text()).get("dropped_test_candidates", 0) if record.exists() else 0
        rows.append({"fold": fold, "test_subsets": f"{a}-{b}", **metrics, "patch_auc": patch_auc,
                     "dropped_candidates": dropped})
        curves[f"subset{a}-{b}"] = (predictions["class"], predictions["probability"])
        history = fold_dir(out, fold) / "history.csv"
        if history.exists():
            histories[f"subset{a}-{b}"] = pd.read_csv(history)
    table = pd.DataFrame(rows)
    mean = table[["auc", "patch_auc", "accuracy", "sensitivity", "specificity"]].mean()
    std = table[["auc", "patch_auc"]].std(ddof=1)
    write_csv(out / "summary.csv", table)
    arm = f"{args.init} {'linear probe' if args.probe else 'fine-tuned'}"
    lines = [f"# LUNA16 {args.backbone}, init {arm}", "",
             "Candidate AUC: each test candidate scored by the mean probability of its three views (axial, coronal, "
             "sagittal). Patch AUC: each view scored alone. Accuracy, sensitivity and specificity of candidates at 0.5.",
             "", "| test subsets | candidate AUC | patch AUC | accuracy | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['test_subsets']} | {r['auc']:.4f} | {r['patch_auc']:.4f} | {r['accuracy']:.4f} | "
              f"{r['sensitivity']:.4f} | {r['specificity']:.4f} |" for r in rows]
    spread = (lambda k: f" (sd {std[k]:.4f})") if len(rows) > 1 else (lambda k: "")
    lines.append(f"| **mean** | **{mean['auc']:.4f}**{spread('auc')} | {mean['patch_auc']:.4f}{spread('patch_auc')} | "
                 f"{mean['accuracy']:.4f} | {mean['sensitivity']:.4f} | {mean['specificity']:.4f} |")
    if table["dropped_candidates"].sum():
        lines += ["", f"{int(table['dropped_candidates'].sum())} test candidates were dropped before testing: "
                  "outside their scan or without finite coordinates."]
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    everything = pd.concat(predictions_by_fold, ignore_index=True)
    write_csv(out / "predictions.csv", everything[PREDICTION_COLUMNS])
    plot_roc(curves, out / "roc_folds.png", title=f"LUNA16 {args.backbone} {arm}: ROC per fold")
    if histories:
        plot_histories(histories, out / "loss_curves.png", title=f"LUNA16 {args.backbone} {args.init}: loss per fold")
    write_results(out, test_scores(folds, predictions_by_fold), {
        "task": "luna16", "backbone": args.backbone, "init": args.init, "train_fraction": args.train_fraction,
        "method": "linear probe" if args.probe else "fine-tune",
        "levels": LEVELS, "settings": {**training_settings(args), "folds": list(folds)},
        "fingerprint": fingerprint(training_settings(args)), "candidates": int(len(everything)),
        "candidate_auc_mean": float(mean["auc"]), "patch_auc_mean": float(mean["patch_auc"]), "folds": rows,
    })
    return table


def run(args):
    from plumbing.runtime import configure_determinism, pick_precision, write_run_record

    out = Path(args.out)
    data, patches = data_dirs(args)
    read_candidates(data), scans_by_subset(data)  # The data tree checked before anything is written.
    out.mkdir(parents=True, exist_ok=True)
    deterministic = configure_determinism(args.deterministic)
    precision = pick_precision(args.precision)
    print(f"LUNA16: {data}; patches: {patches}; init {args.init}, backbone {args.backbone}, {precision}", flush=True)
    extract_subsets(data, patches, args.patch_size, args.pixel_mm, args.method, args.positive_copies, args.seed)
    write_run_record(out, args, {"precision": precision, "deterministic": deterministic, "data": str(data),
                                 "patches": str(patches)})
    predictions = [run_fold(fold, patches, args) for fold in args.folds]
    table = summarize(out, args.folds, predictions, args)
    print((out / "summary.md").read_text())
    print(f"results in {out}")
    return table


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv, tensorflow=True)
