"""What the study needs of a downstream task, and where it finds the tasks.

A task package describes itself to the study with one `StudyTask`: its options type, its
schedule table, its data root's checks, the work its cells share (LUNA16's patch
extraction), the counts that size its plan, what it does after a cell (LUNA16's FROC)
and the lines it adds to the report. The study runs every registered task the same way
and names none.

Tasks are found by entry point: each package lists its `StudyTask` under the group
`genesis2d.tasks` in `pyproject.toml` (`pip install -e .` records it), and a task of
one's own joins without installing, by naming it in the study's settings file
(`tasks: [my_package.module:TASK]`, its root under `roots:`).
"""

import importlib
from dataclasses import dataclass
from pathlib import Path

from plumbing.errors import UsageError

ENTRY_POINTS = "genesis2d.tasks"
# What the study sets in every cell's options; a task adds its own (`StudyTask.imposed`).
IMPOSED = ("data", "backbone", "init", "encoder", "out", "selection", "seed", "overwrite", "probe", "train_fraction")


@dataclass
class SharedStep:
    """A step that a task's cells share and need first (e.g. patch extraction): run once per study."""

    key: str
    title: str
    action: object  # () -> None
    finished: object  # () -> bool
    counts: str = ""
    seconds: float = 0.0  # Projected, from the counts.
    disk: int = 0  # Bytes written, projected.


@dataclass
class CellCounts:
    """What sizes one cell in the plan.

    Attributes:
        train: training samples per epoch (of the largest unit).
        evaluated: samples predicted per epoch to choose the epoch.
        test: test samples, predicted once per unit.
        text: the data, in words, for the plan's line.
        units: training units of the cell (folds, runs).
        image_size: the network's input side.
    """

    train: float
    evaluated: float
    test: int
    text: str
    units: int
    image_size: int


@dataclass(frozen=True)
class StudyPlace:
    """What the study decides for every task: where its outputs go and the study-wide protocol values."""

    out: Path
    seed: int
    selection: str  # `transfer.options.TransferOptions.selection`
    folds: tuple
    repeats: int


class StudyTask:
    """A downstream task as the study sees it. Subclasses set the attributes and override what they need.

    Attributes:
        name: the task's name: its --settings section, its root's key and flag (`--<name>`), its cells' keys.
        title: for the plan's lines.
        root_help: the --help text of its root flag.
        held_out: what `--protocol held-out` holds out of the training data, in words ("scans").
        test_data: the data the thesis protocol chooses the epoch on, in words ("the test folds").
        expected_auc: the AUC the plan assumes of each model when it simulates what difference the data can detect
            (`transfer.power`); with its source.
        module: the module with the task's options type (`options_class`), `parser`, `resolve_options`, `run`
            and `THESIS_SCHEDULES`, imported when first used.
    """

    name = title = root_help = ""
    held_out = "groups"
    test_data = "the test data"
    expected_auc = (0.85, "this project's choice for a task that names none")
    module = ""
    options_class = ""  # The name of the options type in `module`.

    def code(self):
        return importlib.import_module(self.module)

    def options_type(self):
        return getattr(self.code(), self.options_class)

    def parser(self):
        return self.code().parser()

    def schedules(self):
        return self.code().THESIS_SCHEDULES

    def resolve(self, options):
        return self.code().resolve_options(options)

    def run(self, options):
        return self.code().run(options)

    def imposed(self, place):
        """The options the study sets for this task beyond `IMPOSED`: {field: value}."""
        return {}

    def check_root(self, root, options):
        """Reads and checks what the task's cells will read under `root`, writing nothing; raises one-line errors."""

    def shared_steps(self, root, options, place):
        """The `SharedStep`s this task's cells need first, in order."""
        return []

    def counts(self, root, options, selection):
        """The `CellCounts` of one cell with these (unresolved) options."""
        raise NotImplementedError

    def test_design(self, root, options):
        """The shape of the test data at each level the report tests: {level: [per fold, an (clusters, 2) array of
        each cluster's positives and negatives]}; none by default (the plan then says nothing of power)."""
        return {}

    def thesis_sizes(self):
        """The shape of the thesis's own test data, where the thesis gives it: (words with their sources, level,
        design as `test_design` gives one); None where it does not."""
        return None

    def thesis_power_file(self):
        """The file of what the thesis's test data could detect (`tools/thesis_power.py` writes it), or None."""
        return None

    def after_cell(self, folder, root, seed):
        """Work on a finished cell's results beyond the runner's (e.g. an official metric); keeps what it kept."""

    def report_lines(self, cells):
        """Lines the task adds to the report from its finished cells [(key, folder)]: none by default."""
        return []


def load(reference):
    """The `StudyTask` a "module:attribute" names; one line when it names none."""
    module, _, attribute = str(reference).partition(":")
    try:
        task = getattr(importlib.import_module(module), attribute or "TASK")
    except (ImportError, AttributeError) as error:
        raise UsageError(reference, f"names no task ({error}); give module:attribute of a StudyTask") from None
    if not isinstance(task, StudyTask):
        raise UsageError(reference, f"is a {type(task).__name__}, not a transfer.tasks.StudyTask")
    return task


def registered(extra=()):
    """{name: StudyTask} of the installed tasks (entry points, by name) and then those `extra` names."""
    from importlib.metadata import entry_points

    tasks = {}
    for point in sorted(entry_points(group=ENTRY_POINTS), key=lambda p: p.name):
        tasks.setdefault(point.name, load(point.value))
    for reference in extra:
        task = load(reference)
        if task.name in tasks and tasks[task.name] is not task:
            raise UsageError(reference, f"names a task '{task.name}', which is already registered")
        tasks[task.name] = task
    return tasks
