"""A made-up third task: what a new task writes to run through the runner, join the study and appear in its report.

Squares of noise, a bright square in the positives. `Squares` is what the runner needs (data, split, result);
`TASK` is what the study needs (`transfer.tasks.StudyTask`), named in a study's settings file as
`tasks: [squares_task:TASK]` with its root under `roots: {squares: FOLDER}`.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.errors import InputError
from transfer.options import TransferOptions, build_parser, option
from transfer.runner import Split, Task, UnitResult, run_task
from transfer.schedules import ThesisSchedule
from transfer.tasks import CellCounts, StudyTask

SIZE = 32
SCHEDULE = ThesisSchedule(
    epochs=2, warmup_epochs=0, batch_size=16, lr_factor=0.1, lr_patience=3, momentum=0.9, source="test"
)
SCHEDULES = {("resnet18", "scratch"): SCHEDULE}


def images(count, rng):
    """Noise, with a bright square in the positives: (images (n, S, S, 1), labels)."""
    labels = np.arange(count) % 2
    pixels = rng.random((count, SIZE, SIZE, 1), dtype=np.float32) * 0.3
    pixels[labels == 1, 8:20, 8:20] += 0.6
    return pixels, labels


@dataclass(frozen=True)
class SquaresOptions(TransferOptions):
    slides: int = option(12, "slides per split (each holds 4 images).", type=int)
    content: int = option(0, "a stand-in for what the data hold (its fingerprint).", reuse=False, type=int)


class Squares(Task):
    name, title = "squares", "Squares"
    levels = [{"name": "image", "description": "test images", "group": "slide", "metrics": ["auc", "accuracy"]}]

    def check_data(self):
        return {"squares": self.options.content}

    def split(self, unit, seed):
        import tensorflow as tf

        rng = np.random.default_rng(seed)
        (x, y), (x_test, y_test) = images(4 * self.options.slides, rng), images(4 * self.options.slides, rng)

        def batches(pixels, labels, batch):
            return tf.data.Dataset.from_tensor_slices((pixels, labels.astype(np.float32))).batch(batch)

        return Split(
            train=lambda batch: batches(x, y, batch).repeat(),
            train_in_order=batches(x, y, 16),
            train_labels=y,
            train_groups=np.arange(len(y)) // 4,
            validation=lambda b: batches(x, y, b),
            test=batches(x_test, y_test, 16),
            test_labels=y_test,
            test_cases=x_test[:, None],
            cases=pd.DataFrame({"label": y_test, "slide": np.arange(len(y_test)) // 4}),
        )

    def result(self, unit, split, probabilities):
        from transfer.results import score_rows

        table = split.cases.assign(probability=probabilities[:, 0])
        scores = score_rows("image", table.index.astype(str), table["label"], table["probability"], table["slide"])
        return UnitResult(table, {}, scores)


class SquaresStudy(StudyTask):
    """The study's view of Squares: its root only needs to exist; one unit of 4 images per slide."""

    name, title = "squares", "Squares"
    root_help = "a folder (the squares are drawn, not read)."
    held_out = "slides"
    test_data = "the test squares"

    def options_type(self):
        return SquaresOptions

    def parser(self):
        return build_parser(SquaresOptions, "squares", "A made-up task of the tests.")

    def schedules(self):
        return SCHEDULES

    def resolve(self, options):
        from transfer.options import resolve

        return resolve(options, SCHEDULES)

    def run(self, options):
        return run_task(Squares(options), options)

    def check_root(self, root, options):
        if not Path(root).is_dir():
            raise InputError(root, "is not a folder")

    def counts(self, root, options, selection):
        count = 4 * options.slides
        return CellCounts(count, count, count, f"{count} images of squares", 1, options.image_size or SIZE)


TASK = SquaresStudy()
