"""The one downstream run: resolve the encoder, probe or fine-tune, predict, draw the gallery, record the results.

Written once for every task. A task (`Task`) supplies only what is its own, through
values it returns: its data's fingerprint (`check_data`), one `Split` per training unit
(a cross-validation fold, a repeat), and, from a unit's test probabilities, a
`UnitResult` (its predictions table, metrics and results-contract rows). Its schedule
table is data (`configs/schedules.yaml`), read when the options are resolved. No hook
leaves state on the task for a later one. `run_task` does the rest in the same order
for every task:

1. the task checks its data and fingerprints its content, before anything is written;
2. each finished unit in `--out` is reused only when it was made with the same settings
   and the same data (`plumbing.fingerprint.finished_with`), else the command stops
   naming what changed; `--overwrite` redoes it;
3. one writer per `--out` (`plumbing.lock`); `run.json` is written only when work is done;
4. per unit: a seed of its own, the task's split, `train_and_test`, the task's
   `UnitResult`, written as files, the unit's record last (it marks the unit finished);
5. the task's summary, ROC (from the results rows of every level that has one) and loss
   curves, and the results contract (`transfer.results`) that the report reads.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from plumbing.atomic import write_csv, write_json
from plumbing.fingerprint import fingerprint, finished_with
from transfer.encoders import pretraining_of
from transfer.options import reuse_settings

UNIT_SCORES = "unit_scores.csv"  # A unit's results-contract rows, beside its predictions.


@dataclass
class Split:
    """One training run's data, as a task hands it to the runner.

    Attributes:
        train: callable(batch_size) -> tf.data of (image, label) batches for fine-tuning
            (shuffled, augmented, repeated as the task wants).
        train_in_order: tf.data of (image, label) batches of the training samples, in order
            and unaugmented: the linear probe's features.
        train_labels, train_groups: (n,) per sample of `train_in_order`; the probe's
            cross-validation keeps each group (scan, patient) in one fold.
        validation: callable(batch_size) -> tf.data of (image, label) batches held out of the
            training data for choosing the epoch, or None when there are none.
        test: tf.data of (image, label) batches of the test samples, in order; `views`
            consecutive samples make one case.
        test_labels: (cases,) the label of each test case.
        test_cases: callable(case indices) -> images (n, views, S, S, 1) of those cases, for
            the gallery (so that only the cases drawn are loaded), or an array of them all.
        views: samples per test case (LUNA16: 3 planes; 1 elsewhere).
        view_names: names of the views, for the gallery.
        selection_data: what `--selection held-out` holds out, in words (e.g. "10% of the
            training scans").
        cases: a table of the test cases, in test order (e.g. LUNA16's candidates), for the
            task's `result`.
        info: what else the task's `result` needs of this split (e.g. counts to record).
    """

    train: Callable
    train_in_order: object
    train_labels: np.ndarray
    train_groups: np.ndarray
    validation: Callable | None
    test: object
    test_labels: np.ndarray
    test_cases: object
    views: int = 1
    view_names: tuple | None = None
    selection_data: str = "held-out training data"
    cases: object = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One training unit of a task: its key (fold, repeat), its folder, its label in figures and its seed's key."""

    key: object
    folder: Path
    label: str = ""
    seed_key: object = None


@dataclass
class UnitResult:
    """What a task computes from one unit's test probabilities; the runner writes it.

    Attributes:
        table: the predictions, one row per test case (written to the task's `predictions_file`).
        metrics: the unit's metrics (recorded in its record).
        scores: the results contract's rows (`transfer.results.score_rows`).
        files: other tables to write in the unit's folder, {file name: DataFrame}.
    """

    table: pd.DataFrame
    metrics: dict
    scores: pd.DataFrame
    files: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What one training run gives: per-case probabilities, its history and the epoch it kept."""

    probabilities: np.ndarray  # (cases, views)
    history: object = None  # pandas.DataFrame of the epochs, None for a probe
    kept_epoch: int | None = None
    probe: dict | None = None


def selection_rule(options, split):
    """The rule that chose the model, in words (recorded in metrics.json, printed by the report)."""
    if options.probe:
        return "linear probe: C by grouped cross-validation within the training data"
    return {
        "held-out": f"best validation AUC on {split.selection_data} held out",
        "last": "last epoch, all training data",
        "test": "best AUC on the test data (the thesis's protocol; optimistic)",
    }[options.selection]


def train_and_test(options, split, out, seed, image_size, title):
    """Probe or fine-tune the encoder of `options` on `split`, predict its test cases, draw their gallery.

    Args:
        options: resolved `TransferOptions` (or a task's subclass).
        split: Split.
        out: the unit's folder (history, best weights, saliency.png).
        seed: int. Seeds the head, dropout, a scratch encoder and the probe's folds.
        image_size: the network's input side.
        title: the gallery's title, before what its maps are.

    Returns:
        Outcome.
    """
    from genesis2d.backbones import BACKBONES
    from transfer.finetune import fine_tune, predict
    from transfer.probe import probe_encoder
    from transfer.saliency import grad_cam, saliency_block, saliency_gallery

    input_shape = (image_size, image_size, 1)
    if options.probe:  # Frozen encoder; C chosen by cross-validation over the training groups.
        probe = probe_encoder(
            options.encoder_spec(), input_shape, split.train_in_order, split.train_labels, split.train_groups, seed
        )
        predictor, cam, maps = probe.predict, probe.saliency, "class activation maps"
        outcome = Outcome(None, probe=probe.record)
    else:
        schedule = options.schedule()
        train = split.train(schedule.batch_size)
        validation = {
            "held-out": split.validation(schedule.batch_size) if split.validation else None,
            "test": split.test,
            "last": None,
        }[schedule.selection]
        model, history, kept = fine_tune(
            options.encoder_spec(), options.head(), schedule, input_shape, train, validation, out, seed, options.verbose
        )
        block = saliency_block(BACKBONES[options.backbone].skips, image_size)

        def predictor(data):
            return predict(model, data)

        def cam(images):
            return grad_cam(model, images, block)

        maps = f"Grad-CAM at {block or 'the last block'}"
        outcome = Outcome(None, history=history, kept_epoch=kept)
    outcome.probabilities = predictor(split.test).reshape(-1, split.views)
    if options.gallery:
        saliency_gallery(
            cam,
            split.test_cases,
            split.test_labels,
            outcome.probabilities.mean(axis=1),
            Path(out) / "saliency.png",
            options.gallery,
            f"{title}: {maps}",
            image_size,
            split.view_names,
        )
    return outcome


class Task:
    """A downstream task, as the runner needs it: a few attributes, `check_data`, `split` and `result`.

    Attributes:
        name: the results contract's task name (e.g. "luna16").
        title: for titles and lines (e.g. "LUNA16").
        levels: the results contract's levels, the headline first (see `transfer.results`);
            a level with `"roc": False` is left out of the ROC figure.
        unit_name: what a unit is called in its record and settings ("fold", "run").
        unit_record: the file in a unit's folder that records it; written last.
        predictions_file: the file a unit's predictions table is written to.
        roc_file: the ROC figure's file name in --out.
    """

    name = title = ""
    levels = []
    unit_name = "run"
    unit_record = "unit.json"  # Not metrics.json: a unit in --out itself would share the results contract's name.
    predictions_file = "predictions.csv"
    roc_file = "roc.png"

    def __init__(self, options):
        self.options, self.out = options, Path(options.out)
        self.data = Path(options.data) if options.data else self.demo_data()

    def demo_data(self):
        """The task's built-in demo tree (written on first use), for a command given no --data."""
        return None

    def check_data(self):
        """Reads and checks the data; returns {part: fingerprint of its content} (e.g. a csv's checksum).

        Writes nothing.

        Each part is a setting of its own ("data <part>"), so a changed file is named when a
        kept result is refused.
        """
        raise NotImplementedError

    def prepare(self):
        """Work shared by the units, once the data passed their checks and --out is locked (e.g. patch extraction)."""

    def units(self):
        """The units to run: one, in --out, by default."""
        return [Unit(1, self.out, f"{self.unit_name} 1", 0)]

    def split(self, unit, seed):
        """The `Split` of a `Unit`; `seed` seeds its sampling."""
        raise NotImplementedError

    def result(self, unit, split, probabilities):
        """The `UnitResult` of a unit from its (cases, views) test probabilities."""
        raise NotImplementedError

    def summarize(self, results):
        """Writes the task's own summary files from [(Unit, UnitResult)]; returns what it adds to metrics.json."""
        return {}


def run_task(task, options):
    """Runs every unit of `task` with `options` (see the module's docstring); returns metrics.json's mapping."""
    from plumbing.figures import plot_histories
    from plumbing.lock import output_lock
    from plumbing.runtime import STREAM_FOLD, configure_determinism, derive_seed, pick_precision, write_run_record
    from transfer.plots import plot_roc
    from transfer.results import write_results

    out = task.out
    data = task.check_data()
    settings = {**reuse_settings(options), **{f"data {name}": value for name, value in data.items()}}
    units = list(task.units())
    unit_settings = {unit.key: {**settings, task.unit_name: unit.key} for unit in units}
    with output_lock(out):  # Before anything in it is read: a second process on --out changes nothing.
        kept = {  # A unit finished by a version that wrote no contract rows of its own is done again.
            unit.key: finished_with(unit.folder / task.unit_record, unit_settings[unit.key], options.overwrite)
            and (unit.folder / UNIT_SCORES).is_file()
            for unit in units
        }  # Stops naming what changed, before anything is written.
        deterministic = configure_determinism(options.deterministic)
        precision = pick_precision(options.precision)
        arm = f"{options.init} {'linear probe' if options.probe else 'fine-tuned'}"
        print(f"{task.title}: init {arm}, backbone {options.backbone}, {precision}", flush=True)
        pretraining = pretraining_of(options.init, options.encoder)
        if pretraining.get("card"):
            print(
                f"encoder card: {pretraining['card']}: pretrained at {pretraining['input_size']}, normalised as "
                f"{pretraining['normalisation']}",
                flush=True,
            )
        options.encoder_spec().check_available()  # ImageNet or RadImageNet weights: before the data is prepared.
        task.prepare()
        if not all(kept.values()):
            write_run_record(
                out, dataclasses.asdict(options), {"precision": precision, "deterministic": deterministic, "data": data}
            )
        results, records = [], []
        for unit in units:
            if kept[unit.key]:
                print(f"{unit.label}: done earlier with these settings and data, kept ({unit.folder})", flush=True)
            else:
                seed = derive_seed(options.seed, STREAM_FOLD, unit.key if unit.seed_key is None else unit.seed_key)
                _run_unit(task, options, unit, unit_settings[unit.key], seed)
            record = json.loads((unit.folder / task.unit_record).read_text())
            results.append((unit, _load_result(task, unit, record)))
            records.append(record)
        summary = task.summarize(results)
        plot_roc(
            _roc_curves(task, results),
            out / task.roc_file,
            title=f"{task.title} {options.backbone} {arm}: ROC" + (f" per {task.unit_name}" if len(units) > 1 else ""),
        )
        histories = {unit.label: frame for unit, _ in results if (frame := _history(unit.folder)) is not None}
        if histories:
            plot_histories(
                histories,
                out / "loss_curves.png",
                title=f"{task.title} {options.backbone} {arm}: loss",
                ylabel="binary cross-entropy",
            )
        metrics = {
            "task": task.name,
            "backbone": options.backbone,
            "init": options.init,
            "train_fraction": options.train_fraction,
            "method": "linear probe" if options.probe else "fine-tune",
            "levels": task.levels,
            "selection": records[0]["selection"] if records else None,
            "settings": settings,
            "fingerprint": fingerprint(settings),
            "encoder_pretraining": pretraining,
            **summary,
        }
        write_results(out, pd.concat([result.scores for _, result in results], ignore_index=True), metrics)
    return metrics


def _run_unit(task, options, unit, settings, seed):
    from plumbing.runtime import set_seed

    set_seed(seed)  # Before any dataset: TensorFlow derives op seeds from the global one.
    split = task.split(unit, seed)
    title = f"{task.title} {options.backbone} {options.init}{' probe' if options.probe else ''}, {unit.label}"
    outcome = train_and_test(options, split, unit.folder, seed, options.image_size, title)
    result = task.result(unit, split, outcome.probabilities)
    record = {
        task.unit_name: unit.key,
        **result.metrics,
        "selection": selection_rule(options, split),
        "epochs_trained": 0 if outcome.history is None else len(outcome.history),
        "kept_epoch": None if outcome.kept_epoch is None else outcome.kept_epoch + 1,
        "settings": settings,
        "text_columns": [column for column, dtype in result.table.dtypes.items() if _is_text(dtype)],
    }
    if outcome.probe is not None:
        record["probe"] = outcome.probe
    write_csv(unit.folder / task.predictions_file, result.table)
    for name, table in result.files.items():
        write_csv(unit.folder / name, table)
    write_csv(unit.folder / UNIT_SCORES, result.scores)
    write_json(unit.folder / task.unit_record, record)  # Last: marks the unit finished.
    return record


def _load_result(task, unit, record):
    """The `UnitResult` of a finished unit, read back from its files (its metrics: the whole record)."""
    text = {column: str for column in record.get("text_columns", [])}  # IDs such as "001" stay text.
    table = pd.read_csv(unit.folder / task.predictions_file, dtype=text)
    scores = pd.read_csv(unit.folder / UNIT_SCORES, dtype={"key": str, "group": str})
    return UnitResult(table, record, scores)


def _is_text(dtype):
    """Whether a table column holds text (object in pandas 2, str in pandas 3)."""
    return pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)


def _roc_curves(task, results):
    """{label: (labels, probabilities)} of every unit at every level drawn (`roc` not False)."""
    drawn = [level["name"] for level in task.levels if level.get("roc", True)]
    curves = {}
    for unit, result in results:
        for level in drawn:
            rows = result.scores[result.scores["level"] == level]
            parts = (level if len(drawn) > 1 else "", unit.label if len(results) > 1 else "")
            label = " ".join(part for part in parts if part) or level
            curves[label] = (rows["label"].to_numpy(), rows["probability"].to_numpy())
    return curves


def _history(folder):
    path = Path(folder) / "history.csv"
    return pd.read_csv(path) if path.is_file() else None
