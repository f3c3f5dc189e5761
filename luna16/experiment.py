"""Five-fold cross-validation over LUNA16 subset pairs (thesis 4.2.1-4.2.3); the library behind
`python luna16/cross_validate.py`.

Fold k tests on subsets (2k, 2k+1) and trains on the other eight; a validation
part (whole series) is held out of the training subsets for early model
selection. Training subsets keep 10% of their negatives and gain 7 augmented
copies of each positive; validation and test candidates are never subsampled
or augmented. Each view of a candidate is one sample; a candidate's probability
is the mean over its three views. The run itself (probe or fine-tune, predict,
gallery, results contract) is `transfer.runner`'s; this module holds what is
LUNA16's: its options, schedule table, folds and outputs.
"""

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genesis2d.backbones import image_size
from luna16.data import (
    DATA,
    FOLD_PAIRS,
    PatchSettings,
    Subset,
    candidates_path,
    evaluation_arrays,
    evaluation_batches,
    evaluation_cases,
    evaluation_labels,
    extract_subsets,
    fold_subsets,
    input_fingerprint,
    read_candidates,
    scans_by_subset,
    training_arrays,
    validation_series,
)
from luna16.patches import PLANES
from plumbing.atomic import write_csv, write_text
from plumbing.cli import fraction_type
from plumbing.errors import InputError, UsageError
from plumbing.fingerprint import file_sha256
from preprocessing.split import hold_out_groups
from transfer.options import TransferOptions, build_parser, option, parse_options, resolve
from transfer.runner import Split, Task, Unit, UnitResult, run_task
from transfer.schedules import load_table, schedule_table_text
from transfer.statistics import binary_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
PREDICTION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class", "probability"]
VIEWS = 3

# The thesis's schedules per backbone and init, with their sources: a table as data.
THESIS_SCHEDULES = load_table(Path(__file__).with_name("configs") / "schedules.yaml")
# The results contract's levels: the candidate (its views' mean) first, as the thesis counts candidates.
LEVELS = [
    {
        "name": "candidate",
        "description": "candidates of the test folds (mean of 3 views), mean of folds",
        "group": "scan",
        "metrics": ["auc"],
    },
    {
        "name": "patch",
        "description": "patches of the test folds (each view alone), mean of folds",
        "group": "scan",
        "metrics": ["auc"],
        "roc": False,
    },
]


@dataclass(frozen=True)
class Luna16Options(TransferOptions, PatchSettings):
    """LUNA16's options: the shared ones, the patches' (`luna16.data.PatchSettings`) and its data's."""

    patches: str = option(
        None, "folder for extracted patches (shared by runs). Default: beside --out.", group=DATA, reuse=False
    )
    image_size: int = option(
        None, "network input side, a multiple of 32. Default: the patch size.", group=DATA, type=image_size
    )
    negative_fraction: float = option(
        0.1, "negatives kept per training subset.", source="thesis 4.2.1.3", group=DATA, type=fraction_type()
    )
    folds: list = option(
        [1, 2, 3, 4, 5],
        "folds to run, 1-5 (fold k tests subsets 2k-2, 2k-1). Default: all.",
        group=DATA,
        reuse=False,
        type=int,
        nargs="+",
    )


def parser():
    return build_parser(
        Luna16Options,
        "python luna16/cross_validate.py",
        "LUNA16 false-positive reduction as 2D patch classification: 5-fold cross-validation over subset pairs 0-1 "
        ".. 8-9 with a scratch, genesis, ImageNet or RadImageNet encoder. With no --data, runs on the built-in demo "
        "LUNA16 tree with the small settings of luna16/configs/demo.yaml.",
        epilog=schedule_table_text(THESIS_SCHEDULES),
    )


def parse_args(argv=None):
    options = parse_options(Luna16Options, parser(), argv, DEMO_CONFIG, ("--data",))
    return resolve_options(options)


def resolve_options(options):
    """The options with the schedule, encoder files, image size, selection and output folder resolved."""
    options = resolve(options, THESIS_SCHEDULES)  # Encoders checked before hours of patch extraction, not after.
    size = options.image_size or options.patch_size
    if size % 32:
        raise UsageError("--image-size", f"(the patch size unless given) must be a multiple of 32. Received: {size}")
    bad = [k for k in options.folds if k not in range(1, 6)]
    if bad:
        raise UsageError("--folds", f"takes 1 to 5. Received: {bad}")
    selection = options.selection
    if options.validation_fraction == 0 and selection == "held-out":
        selection = "last"  # Nothing held out: train on all eight subsets and keep the last epoch.
    out = options.out or str(
        PROJECT_ROOT / "runs" / f"luna16_{options.backbone}_{options.init}{'_probe' if options.probe else ''}"
    )
    return dataclasses.replace(options, image_size=size, selection=selection, out=out)


def _prepared(image_size):
    import tensorflow as tf

    def prepare(x, y):
        x = tf.cast(x, tf.float32)
        if x.shape[1] != image_size:
            x = tf.image.resize(x, (image_size, image_size))
        return x, y

    return prepare


def _dataset(images, labels, batch_size, image_size, shuffle_seed=None):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return (
        dataset.batch(batch_size)
        .map(_prepared(image_size), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def _streamed(subsets, labels, image_size, batch_size=255):
    """The (image, label) batches of every candidate of `subsets` in evaluation order, read a batch at a time
    (`luna16.data.evaluation_batches`): a real test fold (~150k candidates x 3 views) is never in memory whole."""
    import tensorflow as tf

    side = subsets[0].patches.shape[-1]
    labels = labels.astype(np.float32)

    def batches():
        start = 0
        for images in evaluation_batches(subsets, batch_size=batch_size):
            yield images, labels[start : start + len(images)]
            start += len(images)

    signature = (tf.TensorSpec((None, side, side, 1), tf.float16), tf.TensorSpec((None,), tf.float32))
    return (
        tf.data.Dataset.from_generator(batches, output_signature=signature)
        .map(_prepared(image_size))
        .prefetch(tf.data.AUTOTUNE)
    )


def candidate_keys(predictions):
    """A candidate's id: its scan and world coordinates (to 1 micrometre), and #k for the k-th repeat of both."""
    coords = predictions[["coordX", "coordY", "coordZ"]].round(3).astype(str).agg(",".join, axis=1)
    keys = predictions["seriesuid"] + ":" + coords
    return keys + "#" + keys.groupby(keys).cumcount().astype(str)


class Luna16(Task):
    """LUNA16 for the runner: folds over subset pairs, three views per candidate."""

    name, title, levels, unit_name, unit_record, roc_file = (
        "luna16",
        "LUNA16",
        LEVELS,
        "fold",
        "metrics.json",
        "roc_folds.png",
    )

    def __init__(self, options):
        super().__init__(options)
        self.patches = (
            Path(options.patches)
            if options.patches
            else self.out.parent / f"luna16_patches_{options.patch_size}_{options.method}"
        )

    def demo_data(self):
        from luna16.demo import ensure_demo

        return ensure_demo()

    def check_data(self):
        read_candidates(self.data)
        subsets = scans_by_subset(self.data, allow_outside_root=self.options.allow_outside_root)
        scans = {uid: path for subset in subsets.values() for uid, path in subset.items()}
        return {
            candidates_path(self.data).name: file_sha256(candidates_path(self.data))[:16],
            "scans": input_fingerprint(candidates_path(self.data), scans),
        }

    def prepare(self):
        o = self.options
        print(f"LUNA16: {self.data}; patches: {self.patches}", flush=True)
        extract_subsets(
            self.data,
            self.patches,
            o.patch_size,
            o.pixel_mm,
            o.method,
            o.positive_copies,
            o.seed,
            workers=o.workers or os.cpu_count(),
            allow_outside_root=o.allow_outside_root,
        )

    def units(self):
        return [
            Unit(
                fold,
                self.out / "fold{}_subsets{}-{}".format(fold, *FOLD_PAIRS[fold - 1]),
                "subset{}-{}".format(*FOLD_PAIRS[fold - 1]),
                fold,
            )
            for fold in self.options.folds
        ]

    def split(self, unit, seed):
        o, size, fold = self.options, self.options.image_size, unit.key
        rng = np.random.default_rng(seed)
        train_ids, test_ids = fold_subsets(FOLD_PAIRS[fold - 1])
        train_subsets = [Subset(self.patches / f"subset{s}") for s in train_ids]
        test_subsets = [Subset(self.patches / f"subset{s}") for s in test_ids]
        held_out = validation_series(train_subsets, o.validation_fraction, rng) if o.selection == "held-out" else set()
        unused = set()
        if o.train_fraction < 1.0:  # Label efficiency: train on a share of the series, whole series only.
            remaining = {uid for s in train_subsets for uid in s.candidates["seriesuid"]} - held_out
            unused = remaining - hold_out_groups(remaining, o.train_fraction, rng, minimum=1)
        x_train, y_train, train_series = training_arrays(
            train_subsets,
            held_out | unused,
            o.negative_fraction,
            rng,
            use_augmented=o.positive_copies > 1,
            with_series=True,
        )
        x_val, y_val, _ = evaluation_arrays(train_subsets, held_out)
        y_test, table = evaluation_labels(test_subsets)  # The test fold's images are streamed, never held whole.
        for what, subsets, count in (("training", train_ids, len(y_train)), ("test", test_ids, len(table))):
            if not count:  # Extraction warned per scan; here the fold cannot be run.
                raise InputError(
                    self.patches,
                    f"fold {fold}: its {what} subsets {', '.join(map(str, subsets))} hold no patches (see the "
                    "extraction's warnings: scans unread, or no candidate inside its scan)",
                )
        dropped = sum(s.record.get("dropped_candidates", 0) for s in test_subsets)
        print(
            f"fold {fold}: test subsets {FOLD_PAIRS[fold - 1]}; {len(y_train) // VIEWS} training candidates "
            f"({int(y_train.sum()) // VIEWS} positive after augmentation), {len(held_out)} validation series, "
            f"{len(table)} test candidates"
            + (f" ({dropped} dropped: outside their scan or without coordinates)" if dropped else ""),
            flush=True,
        )
        return Split(
            train=lambda batch: _dataset(x_train, y_train, batch, size, shuffle_seed=seed),
            train_in_order=_dataset(x_train, y_train, 256, size),
            train_labels=y_train,
            train_groups=train_series,
            validation=(lambda batch: _dataset(x_val, y_val, batch, size)) if held_out else None,
            test=_streamed(test_subsets, y_test, size),
            test_labels=table["class"].to_numpy(),
            test_cases=lambda chosen: evaluation_cases(test_subsets, chosen),
            views=VIEWS,
            view_names=PLANES,
            selection_data=f"{o.validation_fraction:.0%} of the training scans",
            cases=table,
            info={"dropped": dropped},
        )

    def result(self, unit, split, probabilities):
        """Each candidate (mean of views) and each patch, grouped by scan, in this fold's stratum."""
        from transfer.results import score_rows

        fold = unit.key
        predictions = split.cases.assign(probability=probabilities.mean(axis=1))[PREDICTION_COLUMNS]
        predictions[[f"view{v}" for v in range(VIEWS)]] = probabilities
        metrics = binary_metrics(predictions["class"], predictions["probability"])
        patch_auc = binary_metrics(np.repeat(predictions["class"], VIEWS), probabilities.ravel())["auc"]
        print(f"fold {fold}: test AUC {metrics['auc']:.4f}", flush=True)
        keys = candidate_keys(predictions)
        scores = [
            score_rows(
                "candidate",
                keys,
                predictions["class"],
                predictions["probability"],
                predictions["seriesuid"],
                stratum=fold,
            )
        ]
        scores += [
            score_rows(
                "patch",
                keys + f":view{v}",
                predictions["class"],
                predictions[f"view{v}"],
                predictions["seriesuid"],
                stratum=fold,
            )
            for v in range(VIEWS)
        ]
        return UnitResult(
            predictions,
            {
                "test_subsets": list(FOLD_PAIRS[fold - 1]),
                **metrics,
                "patch_auc": patch_auc,
                "dropped_test_candidates": split.info["dropped"],
            },
            pd.concat(scores, ignore_index=True),
        )

    def summarize(self, results):
        """summary.csv / summary.md (thesis Fig. 4.12) and predictions.csv of every fold."""
        o, out = self.options, self.out
        folds = [unit.key for unit, _ in results]
        tables = [result.table for _, result in results]
        rows = [
            {
                "fold": unit.key,
                "test_subsets": "{}-{}".format(*FOLD_PAIRS[unit.key - 1]),
                **binary_metrics(result.table["class"], result.table["probability"]),
                "patch_auc": result.metrics["patch_auc"],
                "dropped_candidates": result.metrics.get("dropped_test_candidates", 0),
            }
            for unit, result in results
        ]
        table = pd.DataFrame(rows)
        mean = table[["auc", "patch_auc", "accuracy", "sensitivity", "specificity"]].mean()
        std = table[["auc", "patch_auc"]].std(ddof=1)
        write_csv(out / "summary.csv", table)
        arm = f"{o.init} {'linear probe' if o.probe else 'fine-tuned'}"
        lines = [
            f"# LUNA16 {o.backbone}, init {arm}",
            "",
            "Candidate AUC: each test candidate scored by the mean probability of its three views (axial, "
            "coronal, sagittal). Patch AUC: each view scored alone. Accuracy, sensitivity and specificity of "
            f"candidates at 0.5. Model: {results[0][1].metrics['selection']}.",
            "",
            "| test subsets | candidate AUC | patch AUC | accuracy | sensitivity | specificity |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['test_subsets']} | {r['auc']:.4f} | {r['patch_auc']:.4f} | {r['accuracy']:.4f} | "
            f"{r['sensitivity']:.4f} | {r['specificity']:.4f} |"
            for r in rows
        ]
        spread = (lambda k: f" (sd {std[k]:.4f})") if len(rows) > 1 else (lambda k: "")
        lines.append(
            f"| **mean** | **{mean['auc']:.4f}**{spread('auc')} | {mean['patch_auc']:.4f}"
            f"{spread('patch_auc')} | {mean['accuracy']:.4f} | {mean['sensitivity']:.4f} | "
            f"{mean['specificity']:.4f} |"
        )
        if table["dropped_candidates"].sum():
            lines += [
                "",
                f"{int(table['dropped_candidates'].sum())} test candidates were dropped before testing: "
                "outside their scan or without finite coordinates.",
            ]
        write_text(out / "summary.md", "\n".join(lines) + "\n")
        everything = pd.concat(tables, ignore_index=True)
        write_csv(out / "predictions.csv", everything[PREDICTION_COLUMNS])
        print((out / "summary.md").read_text())
        print(f"results in {out}")
        return {
            "folds_run": list(folds),
            "candidates": int(len(everything)),
            "candidate_auc_mean": float(mean["auc"]),
            "patch_auc_mean": float(mean["patch_auc"]),
            "folds": rows,
        }


def run(options):
    """Cross-validates LUNA16 with resolved options (see `parse_args`); returns the summary table."""
    task = Luna16(options)
    metrics = run_task(task, options)
    return pd.DataFrame(metrics["folds"])


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv, tensorflow=True)
