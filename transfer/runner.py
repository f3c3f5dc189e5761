"""The one downstream run: resolve the encoder, probe or fine-tune, predict, draw the gallery, record the results.

Written once for every task. A task (`Task`) supplies only what is its own: its data
(one `Split` per training run: a cross-validation fold, a repeat), its schedule table,
and its outputs (LUNA16's candidate averaging and `predictions.csv`, MURA's study
level). `run_task` does the rest in the same order for every task:

1. the task checks its data and fingerprints its content, before anything is written;
2. each finished unit (fold or run) in `--out` is reused only when it was made with the
   same settings and the same data (`plumbing.fingerprint.finished_with`), else the command
   stops naming what changed; `--overwrite` redoes it;
3. one writer per `--out` (`plumbing.lock`); `run.json` is written only when work is done;
4. per unit: a seed of its own, the task's split, `train_and_test`, the task's table of
   predictions, the unit's record (written last: it marks the unit finished);
5. the task's summary, ROC and loss curves, and the results contract (`transfer.results`)
   that the report reads.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from plumbing.atomic import write_json
from plumbing.fingerprint import finished_with, fingerprint
from transfer.options import reuse_settings


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
    return {"held-out": f"best validation AUC on {split.selection_data} held out",
            "last": "last epoch, all training data",
            "test": "best AUC on the test data (the thesis's protocol; optimistic)"}[options.selection]


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
        probe = probe_encoder(options.encoder_spec(), input_shape, split.train_in_order, split.train_labels,
                              split.train_groups, seed)
        predictor, cam, maps = probe.predict, probe.saliency, "class activation maps"
        outcome = Outcome(None, probe=probe.record)
    else:
        schedule = options.schedule()
        train = split.train(schedule.batch_size)
        validation = {"held-out": split.validation(schedule.batch_size) if split.validation else None,
                      "test": split.test, "last": None}[schedule.selection]
        model, history, kept = fine_tune(options.encoder_spec(), options.head(), schedule, input_shape, train,
                                         validation, out, seed, options.verbose)
        block = saliency_block(BACKBONES[options.backbone].skips, image_size)

        def predictor(data):
            return predict(model, data)

        def cam(images):
            return grad_cam(model, images, block)

        maps = f"Grad-CAM at {block or 'the last block'}"
        outcome = Outcome(None, history=history, kept_epoch=kept)
    outcome.probabilities = predictor(split.test).reshape(-1, split.views)
    if options.gallery:
        saliency_gallery(cam, split.test_cases, split.test_labels, outcome.probabilities.mean(axis=1),
                         Path(out) / "saliency.png", options.gallery, f"{title}: {maps}", image_size, split.view_names)
    return outcome


class Task:
    """A downstream task, as the runner needs it. Subclasses set the attributes and override the methods.

    Attributes:
        name: the results contract's task name (e.g. "luna16").
        title: for titles and lines (e.g. "LUNA16").
        levels: the results contract's levels, the headline first (see `transfer.results`).
        unit: what one training run is called ("fold", "run").
        unit_record: the file in a unit's folder that records it; written last.
        image_size: the network's input side.
    """

    name = title = ""
    levels = []
    unit = "run"
    unit_record = "metrics.json"
    image_size = 224

    def __init__(self, options):
        self.options, self.out = options, Path(options.out)
        self.image_size = getattr(options, "image_size", None) or self.image_size
        data = getattr(options, "data", None)
        self.data = Path(data) if data else self.demo_data()

    def demo_data(self):
        """The task's built-in demo tree (written on first use), for a command given no --data."""
        return None

    def check_data(self):
        """Reads and checks the data; returns {part: fingerprint of its content} (e.g. a csv's checksum). Writes nothing.

        Each part is a setting of its own ("data <part>"), so a changed file is named when a
        kept result is refused.
        """
        raise NotImplementedError

    def prepare(self):
        """Work shared by the units, once the data passed their checks (e.g. patch extraction)."""

    def units(self):
        """The units to run (e.g. fold numbers)."""
        raise NotImplementedError

    def unit_dir(self, unit):
        return self.out / f"{self.unit}{unit}"

    def seed_key(self, unit):
        """The unit's key in the seed stream (`plumbing.runtime.derive_seed`)."""
        return unit

    def split(self, unit, seed):
        """The unit's Split; `seed` seeds its sampling."""
        raise NotImplementedError

    def unit_table(self, unit, split, probabilities):
        """(predictions table, metrics dict) of a unit from its (cases, views) test probabilities."""
        raise NotImplementedError

    def save_unit(self, folder, table):
        """Writes the unit's predictions (the runner writes its record after, marking it finished)."""
        raise NotImplementedError

    def load_unit(self, folder):
        """The predictions table of a unit finished earlier."""
        raise NotImplementedError

    def curves(self, units, tables):
        """{label: (labels, probabilities)} for the ROC figure."""
        raise NotImplementedError

    def test_scores(self, units, tables):
        """The results contract's rows (`transfer.results.score_rows`)."""
        raise NotImplementedError

    def summarize(self, units, tables, records):
        """Writes the task's own summary files and prints its lines; returns what it adds to metrics.json."""
        return {}


def run_task(task, options):
    """Runs every unit of `task` with `options` (see the module's docstring); returns metrics.json's mapping."""
    from plumbing.lock import output_lock
    from plumbing.runtime import STREAM_FOLD, configure_determinism, derive_seed, pick_precision, write_run_record
    from transfer.plots import plot_histories, plot_roc
    from transfer.results import write_results

    out = task.out
    data = task.check_data()
    settings = {**reuse_settings(options), **{f"data {name}": value for name, value in data.items()}}
    units = list(task.units())
    unit_settings = {unit: {**settings, task.unit: unit} for unit in units}
    kept = {unit: finished_with(task.unit_dir(unit) / task.unit_record, unit_settings[unit], options.overwrite)
            for unit in units}  # Stops naming what changed, before anything is written.
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        deterministic = configure_determinism(options.deterministic)
        precision = pick_precision(options.precision)
        arm = f"{options.init} {'linear probe' if options.probe else 'fine-tuned'}"
        print(f"{task.title}: init {arm}, backbone {options.backbone}, {precision}", flush=True)
        task.prepare()
        if not all(kept.values()):
            write_run_record(out, dataclasses.asdict(options), {"precision": precision, "deterministic": deterministic,
                                                                "data": data})
        tables, records = [], []
        for unit in units:
            folder = task.unit_dir(unit)
            if kept[unit]:
                print(f"{task.unit} {unit}: done earlier with these settings and data, kept ({folder})", flush=True)
            else:
                seed = derive_seed(options.seed, STREAM_FOLD, task.seed_key(unit))
                _run_unit(task, options, unit, unit_settings[unit], seed)
            tables.append(task.load_unit(folder))
            records.append(json.loads((folder / task.unit_record).read_text()))
        summary = task.summarize(units, tables, records)
        plot_roc(task.curves(units, tables), out / ("roc_folds.png" if task.unit == "fold" else "roc.png"),
                 title=f"{task.title} {options.backbone} {arm}: ROC" + (" per fold" if task.unit == "fold" else ""))
        histories = {f"{task.unit} {unit}": _history(task.unit_dir(unit)) for unit in units}
        histories = {label: frame for label, frame in histories.items() if frame is not None}
        if histories:
            plot_histories(histories, out / "loss_curves.png", title=f"{task.title} {options.backbone} {arm}: loss")
        metrics = {"task": task.name, "backbone": options.backbone, "init": options.init,
                   "train_fraction": getattr(options, "train_fraction", 1.0),
                   "method": "linear probe" if options.probe else "fine-tune", "levels": task.levels,
                   "selection": records[0]["selection"] if records else None, "settings": settings,
                   "fingerprint": fingerprint(settings), **summary}
        write_results(out, task.test_scores(units, tables), metrics)
    return metrics


def _run_unit(task, options, unit, settings, seed):
    from plumbing.runtime import set_seed

    folder = task.unit_dir(unit)
    set_seed(seed)  # Before any dataset: TensorFlow derives op seeds from the global one.
    split = task.split(unit, seed)
    title = f"{task.title} {options.backbone} {options.init}{' probe' if options.probe else ''}, {task.unit} {unit}"
    outcome = train_and_test(options, split, folder, seed, task.image_size, title)
    table, metrics = task.unit_table(unit, split, outcome.probabilities)
    record = {task.unit: unit, **metrics, "selection": selection_rule(options, split),
              "epochs_trained": 0 if outcome.history is None else len(outcome.history),
              "kept_epoch": None if outcome.kept_epoch is None else outcome.kept_epoch + 1, "settings": settings}
    if outcome.probe is not None:
        record["probe"] = outcome.probe
    task.save_unit(folder, table)
    write_json(folder / task.unit_record, record)  # Last: marks the unit finished.
    return record


def _history(folder):
    import pandas as pd

    path = Path(folder) / "history.csv"
    return pd.read_csv(path) if path.is_file() else None
