"""MURA abnormality detection with a scratch, genesis, ImageNet or RadImageNet encoder (thesis 4.2.4-4.2.6);
the library behind `python mura/train.py`.

Images are classified one by one at 224x224; a study's probability is the mean
of its images' (as in the MURA paper), scored with AUC and Cohen's kappa at 0.5.
The best epoch is chosen by validation AUC on patients held out of the training
split (`--validation-fraction`, 10%), so the official `valid` split, on which
every metric is reported, plays no part in training; `--selection test` chooses
on `valid` as the thesis did (and makes its numbers optimistic).

The thesis augmented the training images offline into a balanced set of about
29k per class; here the same augmentations (rotation 20 degrees, zoom 0.9-1.1,
flips) are drawn afresh for every batch, which sees more variety for the same
number of steps and needs no disk. The run itself (probe or fine-tune, predict,
gallery, results contract) is `transfer.runner`'s.
"""

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genesis2d.backbones import image_size
from mura.data import (
    body_part_name,
    body_parts_of,
    make_dataset,
    mura_root,
    read_split,
    split_patients,
    study_probabilities,
)
from plumbing.errors import UsageError
from transfer.options import TransferOptions, build_parser, option, parse_options, resolve
from transfer.runner import Split, Task, Unit, UnitResult, run_task
from transfer.schedules import load_table, schedule_table_text
from transfer.statistics import binary_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
DATA = "data"

# The thesis's schedules per backbone and init, with their sources: a table as data.
THESIS_SCHEDULES = load_table(Path(__file__).with_name("configs") / "schedules.yaml")
# Thesis 4.2.4.2: the offline-augmented training set held 29,477 negative and 29,176 positive images.
THESIS_EPOCH_SIZE = 29_477 + 29_176
METRIC_KEYS = (
    "image_auc",
    "image_accuracy",
    "study_auc",
    "study_accuracy",
    "study_kappa",
    "study_sensitivity",
    "study_specificity",
)
# The results contract's levels: images first (the thesis's metric, 4.2.4.4), studies as the MURA paper scores
# them; both resampled and clustered by patient, the independent unit (a patient can have several studies).
LEVELS = [
    {"name": "image", "description": "images of valid", "group": "patient", "metrics": ["auc", "accuracy"]},
    {
        "name": "study",
        "description": "studies of valid (mean of their images)",
        "group": "patient",
        "metrics": ["auc", "kappa"],
    },
]


@dataclass(frozen=True)
class MuraOptions(TransferOptions):
    """MURA's options: the shared ones and its data's."""

    body_part: list = option(
        ["XR_SHOULDER"],
        "one or more of XR_ELBOW .. XR_WRIST, or 'all'.",
        source="thesis 4.2.4.1",
        group=DATA,
        nargs="+",
        type=body_part_name,
    )
    image_size: int = option(
        224, "network input side, a multiple of 32.", source="thesis 4.2.4.2", group=DATA, type=image_size
    )
    epoch_size: int = option(
        THESIS_EPOCH_SIZE,
        "training images per epoch, drawn class-balanced and freshly "
        "augmented from the training split (ignored with --steps-per-epoch).",
        source="thesis 4.2.4.2: the size of its offline-augmented, class-balanced set",
        group=DATA,
        type=int,
    )
    repeats: int = option(
        1,
        "train N times with seeds derived from --seed and report each run's metrics, their "
        "mean and standard deviation.",
        source="1; the thesis trained its best models twice and averaged them (4.2.4.4, 4.2.6)",
        group=DATA,
        type=int,
    )


def parser():
    return build_parser(
        MuraOptions,
        "python mura/train.py",
        "MURA abnormality detection (shoulder by default) with a scratch, genesis, ImageNet or RadImageNet encoder; "
        "image- and study-level evaluation on the official valid split. With no --data, runs on the built-in demo "
        "MURA tree with the small settings of mura/configs/demo.yaml.",
        epilog=schedule_table_text(THESIS_SCHEDULES),
    )


def parse_args(argv=None):
    options = parse_options(MuraOptions, parser(), argv, DEMO_CONFIG, ("--data",))
    return resolve_options(options)


def resolve_options(options):
    """The options with the schedule, encoder files, epoch length, body parts, selection and out resolved."""
    options = resolve(options, THESIS_SCHEDULES)
    try:
        body_parts = list(body_parts_of(options.body_part))
    except ValueError as error:
        raise UsageError("--body-part", str(error)) from None
    if options.repeats < 1:
        raise UsageError("--repeats", f"must be at least 1. Received: {options.repeats}")
    steps = options.steps_per_epoch or -(-options.epoch_size // options.batch_size)  # The thesis's epoch length.
    selection = options.selection
    if options.validation_fraction == 0 and selection == "held-out":
        selection = "last"  # Nothing held out: train on all training patients and keep the last epoch.
    out = options.out or str(
        PROJECT_ROOT / "runs" / f"mura_{options.backbone}_{options.init}{'_probe' if options.probe else ''}"
    )
    return dataclasses.replace(options, body_part=body_parts, steps_per_epoch=steps, selection=selection, out=out)


def evaluate(images):
    """Image- and study-level metrics of a predictions table (path, study, label, probability)."""
    studies = study_probabilities(images)
    image = binary_metrics(images["label"], images["probability"])
    study = binary_metrics(studies["label"], studies["probability"])
    return studies, {
        "image_auc": image["auc"],
        "image_accuracy": image["accuracy"],
        "study_auc": study["auc"],
        "study_accuracy": study["accuracy"],
        "study_kappa": study["kappa"],
        "study_sensitivity": study["sensitivity"],
        "study_specificity": study["specificity"],
        "images": image["n"],
        "studies": study["n"],
    }


class Mura(Task):
    """MURA for the runner: repeats of one training on the training patients, scored on valid."""

    name, title, levels, unit_record = "mura", "MURA", LEVELS, "run_metrics.json"
    predictions_file = "predictions_images.csv"

    def demo_data(self):
        from mura.demo import ensure_demo

        return ensure_demo()

    @functools.cached_property
    def splits(self):
        """(train, valid) image tables of the body parts asked for, read once (by whichever hook asks first)."""
        parts, outside = self.options.body_part, self.options.allow_outside_root
        return (
            read_split(self.data, "train", parts, allow_outside_root=outside),
            read_split(self.data, "valid", parts, allow_outside_root=outside),
        )

    def check_data(self):
        from plumbing.fingerprint import file_sha256, files_fingerprint

        train_all, valid = self.splits
        folder = mura_root(self.data) / "MURA-v1.1"
        csvs = [
            folder / f"{split}_{kind}.csv"
            for split in ("train", "valid")
            for kind in ("image_paths", "labeled_studies")
        ]
        images = [*train_all["path"], *valid["path"]]
        return {
            **{path.name: file_sha256(path)[:16] for path in csvs},
            "body_parts": list(self.options.body_part),
            "images": files_fingerprint(images, mura_root(self.data)),
        }

    @functools.cached_property
    def training_patients(self):
        """(train, selection): the training images and those held out to choose the epoch (None), seeded by --seed."""
        o = self.options
        train_all, valid = self.splits
        rng = np.random.default_rng(o.seed)
        if o.selection == "held-out":
            train, selection = split_patients(train_all, o.validation_fraction, rng, minimum=1)
        else:
            train, selection = train_all, None
        if o.train_fraction < 1.0:  # Label efficiency: whole patients, seeded, at least one.
            _, train = split_patients(train, o.train_fraction, rng, minimum=1)
        print(
            f"MURA {', '.join(o.body_part)}: {len(train)} training images, "
            f"{0 if selection is None else len(selection)} held out for model selection, "
            f"{len(valid)} valid images in {valid['study'].nunique()} studies",
            flush=True,
        )
        return train, selection

    def units(self):
        repeats = self.options.repeats
        return [
            Unit(
                run,
                self.out if repeats == 1 else self.out / f"repeat{run}",
                f"run {run}",
                run - 1,
            )
            for run in range(1, repeats + 1)
        ]

    def split(self, unit, seed):
        o, size = self.options, self.options.image_size
        (train, selection), valid = self.training_patients, self.splits[1].reset_index(drop=True)

        def test_cases(rows):
            batches = make_dataset(valid.iloc[rows], 64, size).map(lambda x, y: x)
            return np.concatenate(list(batches.as_numpy_iterator()))

        return Split(
            train=lambda batch: make_dataset(train, batch, size, True, seed, balanced=True),
            train_in_order=make_dataset(train, 64, size),
            train_labels=train["label"].to_numpy(),
            train_groups=train["patient"].to_numpy(),
            validation=None if selection is None else (lambda batch: make_dataset(selection, batch, size)),
            test=make_dataset(valid, 64, size),
            test_labels=valid["label"].to_numpy(),
            test_cases=test_cases,
            selection_data=f"{o.validation_fraction:.0%} of the training patients",
            cases=valid,
        )

    def result(self, unit, split, probabilities):
        """Every image and every study of valid, grouped by patient, in this run."""
        from transfer.results import score_rows

        images = split.cases.assign(probability=probabilities[:, 0])[
            ["path", "study", "label", "patient", "probability"]
        ]
        studies, metrics = evaluate(images)
        print(
            f"run {unit.key}: image AUC {metrics['image_auc']:.4f}, accuracy {metrics['image_accuracy']:.4f}; "
            f"study AUC {metrics['study_auc']:.4f}, kappa {metrics['study_kappa']:.4f}",
            flush=True,
        )
        patient_of_study = split.cases.drop_duplicates("study").set_index("study")["patient"]
        keys = images["study"] + images["path"].map(lambda p: Path(p).name)
        scores = pd.concat(
            [
                score_rows("image", keys, images["label"], images["probability"], images["patient"], run=unit.key),
                score_rows(
                    "study",
                    studies["study"],
                    studies["label"],
                    studies["probability"],
                    studies["study"].map(patient_of_study),
                    run=unit.key,
                ),
            ],
            ignore_index=True,
        )
        return UnitResult(images, metrics, scores, files={"predictions_studies.csv": studies})

    def summarize(self, results):
        """The runs' metrics, their mean and spread (the thesis averaged its runs, 4.2.4.4), and their ensemble."""
        o, valid = self.options, self.splits[1]
        metrics = [{key: result.metrics[key] for key in (*METRIC_KEYS, "images", "studies")} for _, result in results]
        tables = [result.table for _, result in results]
        summary = {key: float(np.mean([m[key] for m in metrics])) for key in METRIC_KEYS}
        summary.update(
            {
                f"{key}_std": float(np.std([m[key] for m in metrics], ddof=1)) if len(metrics) > 1 else 0.0
                for key in METRIC_KEYS
            }
        )
        summary.update(
            {
                "runs": metrics,
                "body_parts": list(o.body_part),
                "images": int(len(valid)),
                "studies": int(valid["study"].nunique()),
            }
        )
        if len(tables) > 1:  # An extra, labelled as what it is: not the thesis's average of runs.
            ensemble = tables[0].assign(probability=np.mean([t["probability"] for t in tables], axis=0))
            _, together = evaluate(ensemble)
            summary["ensemble_of_runs"] = {
                "image_auc": together["image_auc"],
                "study_auc": together["study_auc"],
                "note": "AUC of the runs' mean probability (an ensemble)",
            }
        spread = f" (sd {summary['image_auc_std']:.4f} over {len(tables)} runs)" if len(tables) > 1 else ""
        print(
            f"image AUC {summary['image_auc']:.4f}{spread}, accuracy {summary['image_accuracy']:.4f}; study AUC "
            f"{summary['study_auc']:.4f}, kappa {summary['study_kappa']:.4f}; results in {self.out}"
        )
        return summary


def run(options):
    """Trains and evaluates MURA with resolved options (see `parse_args`); returns metrics.json's mapping."""
    return run_task(Mura(options), options)


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv, tensorflow=True)
