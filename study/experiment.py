"""The thesis's experiment on your data, in one command: `python -m study --corpus C --luna16 L --mura M`.

Thesis Fig. 5.1: two backbones (ResNet50, VGG16) x three initialisations (scratch, genesis,
ImageNet) x the tasks given a root (LUNA16, MURA: every task registered with `transfer.tasks`,
which the study runs alike and never names). The steps, each a library call with typed options:

    manifest -> shards -> pretrain/<backbone>[_<objective>] -> each task's shared steps -> <task>/<backbone>/<init>
    -> report

Before anything is written, every root is checked (a missing file stops the command in one
line, naming it) and the plan is printed: each step's data counts, its model's seconds per
step measured on this machine at the real input size, batch and precision
(`study.measure`), its projected time and the disk it writes, against the free disk.
`--plan` stops there. Each step is then kept, resumed or refused by its own stage's rule (the
same settings and the same data), so the command run again continues where it stopped.

`--cells` runs a share of the cells (patterns such as `luna16/resnet50/*`, or step names
such as `pretrain/*`), so that several machines or a Slurm job array (`SLURM_ARRAY_TASK_ID`)
fill one output folder; a selected cell's unfinished prerequisites run first. The report is
built when every cell is present, and otherwise says which are missing.
"""

import fnmatch
import math
import os
import shutil
import sys
import time
from argparse import BooleanOptionalAction
from dataclasses import dataclass
from pathlib import Path

from genesis2d.backbones import BACKBONES  # Data only: no Keras import.
from plumbing.cli import count_type
from plumbing.errors import UsageError
from plumbing.options import Options, derived, option
from study.report import DEFAULT_INTERVAL, INTERVALS

BACKBONE_NAMES = tuple(sorted(BACKBONES))

THESIS_BACKBONES = ("resnet50", "vgg16")  # Thesis 4.2.2-4.2.6, Fig. 5.1.
THESIS_INITS = ("scratch", "genesis", "imagenet")  # Thesis Fig. 5.1.
PRETRAINED = ("genesis", "contrastive", "genesis+contrastive")  # The inits pretrained here, each its own objective.
STAGES = ("manifest", "shards", "pretrain")  # The --settings sections beside "roots", "tasks", "study", each task's
# and each pretrained arm's own "pretrain_<objective>" (merged over "pretrain").
# The epoch each cell keeps (`transfer.options.TransferOptions.selection`) under each protocol, and its words, with
# each task's own ({held_out}: "LUNA16: scans"; {test_data}: "LUNA16 test folds").
PROTOCOLS = {
    "held-out": (
        "held-out",
        "the epoch with the best validation AUC on training groups held out ({held_out}); the test data never choose",
    ),
    "thesis": (
        "test",
        "the thesis's: the epoch with the best AUC on the test data ({test_data}; 4.2.2-4.2.5), optimistic",
    ),
}
# What the study sets itself in each stage's options; a --settings section that names one is refused (each task's
# section: `transfer.tasks.IMPOSED` and the task's own).
IMPOSED = {
    "manifest": ("root", "datasets", "out", "seed"),
    "shards": ("manifest", "out", "seed", "overwrite"),
    "pretrain": ("manifest", "shards", "backbone", "objective", "out", "seed", "resume", "overwrite"),
}
GIB = 2**30


INITS = ("scratch", "genesis", "imagenet", "radimagenet", "contrastive", "genesis+contrastive")
GRID, RUN, REPORT = "the grid of cells", "the run", "the report"
YOUR_DATA = "your data (any folder leaves the demo)"


@dataclass(frozen=True)
class ExperimentOptions(Options):
    """What `run` takes: the roots, the grid of cells, the protocol and each stage's own option values. Its option
    fields are `python -m study`'s flags and the keys of a settings file's study section (`study.command`)."""

    out: Path = option(
        None, "output folder.", default_text="runs/study/ (the demo), runs/experiment/ (your data)", group=RUN
    )
    corpus: str = option(
        None, "pretraining corpus folder, as the --datasets table describes it (thesis 3.1).", group=YOUR_DATA
    )
    datasets: str = option(
        None,
        "the corpus's datasets table.",
        default_text="preprocessing/datasets.yaml (the thesis's 17)",
        group=YOUR_DATA,
    )
    backbones: tuple = option(
        THESIS_BACKBONES,
        "backbone of every model.",
        source="thesis 4.2.2-4.2.6",
        flag="--backbone",
        group=GRID,
        nargs="+",
        choices=BACKBONE_NAMES,
    )
    inits: tuple = option(
        THESIS_INITS,
        "initialisations. contrastive and genesis+contrastive pretrain their own encoders on --corpus "
        "(genesis2d/contrastive.py), with the steps and batch of genesis's.",
        source="thesis Fig. 5.1",
        group=GRID,
        nargs="+",
        choices=INITS,
    )
    probe: bool = option(
        False,
        "also a linear probe of every cell's initialisation (the encoder frozen; one run): cells "
        "<task>/<backbone>/<init>_probe.",
        group=GRID,
        action="store_true",
    )
    fractions: dict = derived({})  # {task: (share, ...)}: label-efficiency cells of those tasks (`--fractions`).
    protocol: str = option(
        "held-out",
        "which epoch each cell keeps: held-out (chosen on training groups held out; the test data never choose) or "
        "thesis (the best AUC on the test data, as the thesis read it, 4.2.2-4.2.5; optimistic). Recorded and "
        "printed with every number.",
        group=GRID,
        choices=tuple(PROTOCOLS),
    )
    repeats: int = option(
        2,
        "runs per cell where a task repeats its training (MURA), averaged.",
        source="the thesis trained its best models twice, 4.2.4.4",
        group=GRID,
        type=count_type(1),
    )
    folds: tuple = option(
        (1, 2, 3, 4, 5), "cross-validation folds (LUNA16).", source="thesis 4.2.1.7", group=GRID, nargs="+", type=int
    )
    shards: bool = option(
        True,
        "pretrain from TFRecord shards of the corpus (--no-shards: from the manifest's files, for a small corpus).",
        group=GRID,
        action=BooleanOptionalAction,
    )
    cells: tuple = option(
        (),
        "run only the steps these patterns name (e.g. 'luna16/resnet50/*', 'pretrain/*', 'luna16/patches', report), "
        "with their unfinished prerequisites, into the shared --out; in a Slurm job array (SLURM_ARRAY_TASK_ID) "
        "each task takes its share of the selected cells.",
        default_text="every step",
        group=RUN,
        nargs="+",
        metavar="PATTERN",
        reuse=False,
    )
    plan_only: bool = option(
        False,
        "check the folders, print the plan (counts, measured step times, projected hours, disk) and stop.",
        flag="--plan",
        group=RUN,
        action="store_true",
        reuse=False,
    )
    measure_steps: int = option(
        3,
        "timed training steps per model for the plan's projections (after one untimed step); 0 measures nothing "
        "(no projected times).",
        group=RUN,
        type=count_type(0),
        reuse=False,
    )
    seed: int = option(
        0,
        "seed of every step (weights, sampling, augmentation, distortions, bootstrap); on a CPU the same seed gives "
        "the same report.",
        group=RUN,
        type=int,
    )
    overwrite: bool = option(
        False,
        "redo steps whose kept results were made with other settings or data. Default: such a step stops the "
        "study, saying what changed.",
        group=RUN,
        action="store_true",
        reuse=False,
    )
    interval: str = option(
        DEFAULT_INTERVAL,
        "the report's AUC intervals: the cluster jackknife on the logit scale (validated down to 20 clusters by "
        "tools/simulate_statistics.py) or the percentile bootstrap.",
        group=REPORT,
        choices=INTERVALS,
    )
    bootstrap: int = option(
        1000, "bootstrap resamples, used with --interval bootstrap only.", group=REPORT, type=count_type(1)
    )
    note: str = option(None, "a paragraph the report opens with.", group=REPORT)
    roots: dict = derived({})  # {task name: its data folder}; the tasks run are those given one.
    tasks: tuple = derived(())  # "module:attribute" of tasks beyond the installed ones (`transfer.tasks.registered`).
    stage_settings: dict = derived({})  # {section: {option: value}}, checked by each stage.
    settings_file: str = derived("settings")

    def __post_init__(self):
        """Each value checked where it is built, whichever door it came through (a flag, the study section of a
        settings file, a library call): one line naming it (`plumbing.options.check_fields`, and the mapping of
        label fractions here)."""
        super().__post_init__()
        for name in ("backbones", "inits", "folds", "cells", "tasks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "out", None if self.out is None else Path(self.out))
        fractions = self.fractions
        if not isinstance(fractions, dict) or not all(
            isinstance(f, (list, tuple)) and all(_share(x) for x in f) for f in fractions.values()
        ):
            raise UsageError(
                "--fractions",
                "must be shares in (0, 1) (study: fractions: a mapping of task names to them). "
                f"Received: {fractions!r}",
            )
        object.__setattr__(self, "fractions", {task: tuple(shares) for task, shares in fractions.items()})


def _share(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a task, a backbone and an initialisation, fine-tuned on all its training labels, on a
    share of them (`fraction`, label efficiency), or as a linear probe."""

    task: str
    backbone: str
    init: str
    probe: bool = False
    fraction: float = 1.0

    @property
    def variant(self):
        if self.probe:
            return f"{self.init}_probe"
        return self.init if self.fraction == 1.0 else f"{self.init}_labels{round(self.fraction * 100)}"

    @property
    def key(self):
        return cell_key(self.task, self.backbone, self.variant)

    def folder(self, out):
        return cell_folder(out, self.task, self.backbone, self.variant)


@dataclass
class Step:
    """One step of the plan: what it reads and writes, what it costs, and how to run it."""

    key: str
    title: str
    action: object = None  # () -> None
    finished: object = None  # () -> bool, read without locking (a prerequisite another process may finish)
    needs: tuple = ()
    counts: str = ""
    train_steps: int = 0
    predict_batches: int = 0
    setups: int = 0  # Times the model is built and compiled (runs, folds, training phases).
    timing: object = None  # study.measure.StepTime
    seconds: float = 0.0  # Time that is not the model's (extraction, writing), estimated.
    disk: int = 0

    def projected(self):
        model = 0.0 if self.timing is None else self.train_steps * self.timing.train_seconds
        model += 0.0 if self.timing is None else self.predict_batches * self.timing.predict_seconds
        model += 0.0 if self.timing is None else self.setups * self.timing.setup_seconds
        return model + self.seconds


def pretrain_key(backbone, objective="genesis"):
    """The step's key, named as its folder (a key with two slashes is a task's cell, see `selected_steps`)."""
    return f"pretrain/{backbone}" if objective == "genesis" else f"pretrain/{backbone}_{objective}"


def cell_key(task, backbone, init):
    return f"{task}/{backbone}/{init}"


def cell_folder(out, task, backbone, init):
    return Path(out) / "cells" / f"{task}_{backbone}_{init}"


def _hours(seconds):
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def _size(count):
    if count >= GIB / 10:
        return f"{count / GIB:,.2f} GiB"
    return f"{count / 2**20:,.1f} MiB" if count >= 2**20 / 10 else f"{count / 2**10:,.0f} KiB"


def read_settings(path):
    """The sections of a --settings YAML file: {section: mapping}, and "tasks": [module:attribute, ...] where it
    names tasks of one's own; unknown sections and keys, and roots of no task, stop with one line.

    Relative paths (the roots, and a section's `config`, a YAML file of that section's values beneath its own) are
    read from the settings file's folder."""
    from plumbing.cli import read_yaml
    from transfer.tasks import registered

    if path is None:
        return {}
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UsageError(path, "must hold a mapping of sections (roots, tasks, manifest, shards, pretrain, a task's)")
    extra = data.get("tasks") or []
    if not isinstance(extra, list) or not all(isinstance(entry, str) for entry in extra):
        raise UsageError(path, "section tasks must be a list of module:attribute names of tasks")
    tasks = registered(extra)
    known = ("roots", "tasks", "study", *STAGES, *(f"pretrain_{arm}" for arm in PRETRAINED), *tasks)
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise UsageError(path, f"unknown sections {', '.join(map(str, unknown))}; known: {', '.join(known)}")
    for name, section in data.items():
        if name != "tasks" and section is not None and not isinstance(section, dict):
            raise UsageError(path, f"section {name} must be a mapping of option names to values")
    roots = ("corpus", "datasets", *tasks)
    unknown = sorted(set(data.get("roots") or {}) - set(roots), key=str)
    if unknown:
        raise UsageError(path, f"section roots: unknown keys {', '.join(map(str, unknown))}; known: {', '.join(roots)}")
    here = Path(path).resolve().parent
    sections = {name: list(section) if name == "tasks" else dict(section or {}) for name, section in data.items()}
    for name, section in sections.items():
        for key in section if name == "roots" else ("config",) if name not in ("tasks", "study") else ():
            if isinstance(section.get(key), str):
                section[key] = os.path.normpath(here / Path(section[key]).expanduser())
    return sections


class Experiment:
    """The plan of one experiment: its steps in order, built from the options and the data, nothing written."""

    def __init__(self, options):
        from plumbing.errors import UsageError
        from transfer.tasks import StudyPlace, registered

        self.o = options
        self.out = Path(options.out)
        known = registered(options.tasks)
        unknown = sorted(set(options.roots) - set(known))
        if unknown:
            raise UsageError(
                options.settings_file, f"roots name no task: {', '.join(unknown)}; known: {', '.join(known)}"
            )
        self.tasks = {name: task for name, task in known.items() if options.roots.get(name)}
        unknown = sorted(set(options.fractions) - set(self.tasks))
        if unknown:
            raise UsageError(
                "--fractions", f"names tasks without a root: {', '.join(unknown)}; tasks: {', '.join(self.tasks)}"
            )
        self.selection, text = PROTOCOLS[options.protocol]
        self.protocol_text = text.format(
            held_out=", ".join(f"{task.title}: {task.held_out}" for task in self.tasks.values()),
            test_data=", ".join(task.test_data for task in self.tasks.values()),
        )
        self.place = StudyPlace(self.out, options.seed, self.selection, tuple(options.folds), options.repeats)
        self.timings = {}
        self._shared = {}
        self._built_manifest = None
        self.array = slurm_array()  # (index, count) in a Slurm job array: this process runs a share of the cells.

    # ---- each stage's options, from its --settings section and what the study imposes ----

    def section(self, name, *more):
        """A stage's option values from the settings: each section's `config` file beneath the sections' own keys;
        `more` are sections read after `name` (a pretrained arm's own, after "pretrain")."""
        from plumbing.errors import UsageError
        from transfer import tasks

        files, keys = {}, {}
        for part in (name, *more):
            section = dict(self.o.stage_settings.get(part, {}))
            config = section.pop("config", None)
            files.update(self._config_values(part, config) if config else {})
            keys.update(section)
        values = {k.replace("-", "_"): v for k, v in {**files, **keys}.items()}
        if name in self.tasks:
            imposed = (*tasks.IMPOSED, *self.tasks[name].imposed(self.place))
        else:
            imposed = IMPOSED[name]
        clash = sorted(set(values) & set(imposed))
        if clash:
            raise UsageError(
                self.o.settings_file,
                f"section {name} sets {', '.join(clash)}, which the study sets itself (roots, --protocol, "
                "--folds, --repeats, --seed, --overwrite, --out)",
            )
        return values

    def _config_values(self, section, path):
        """The mapping of a section's `config` YAML file."""
        from plumbing.cli import read_yaml

        values = read_yaml(path)
        if not isinstance(values, dict):
            raise UsageError(path, f"(config of section {section}) must hold a mapping of option names to values")
        return values

    def stage(self, name, options_class, parser, *more, **imposed):
        from plumbing.options import from_config

        where = f"{self.o.settings_file}: section {' and '.join((name, *more))}"
        return from_config(options_class, parser, self.section(name, *more), where=where, **imposed)

    def manifest_options(self):
        from preprocessing.manifest import DATASETS, ManifestOptions, parser

        return self.stage(
            "manifest",
            ManifestOptions,
            parser(),
            root=str(self.o.corpus),
            datasets=str(self.o.datasets or DATASETS),
            out=str(self.out / "corpus" / "manifest.csv"),
            seed=self.o.seed,
        )

    def shard_options(self):
        from plumbing.options import build_parser
        from preprocessing.shards import ShardOptions

        return self.stage(
            "shards",
            ShardOptions,
            build_parser(ShardOptions, "shards", ""),
            manifest=str(self.out / "corpus" / "manifest.csv"),
            out=str(self.out / "corpus" / "shards"),
            seed=self.o.seed,
            overwrite=self.o.overwrite,
        )

    def pretrain_dir(self, backbone, objective="genesis"):
        return self.out / "pretrain" / (backbone if objective == "genesis" else f"{backbone}_{objective}")

    def pretrain_config(self, backbone, objective="genesis"):
        """The pretraining of one backbone and objective; every objective runs the same steps per epoch of the same
        batch (images through the encoder, `genesis2d.options.PretrainConfig.batch_size`): equal compute."""
        from genesis2d import pretrain

        folder = self.pretrain_dir(backbone, objective)
        return pretrain.resolve(
            self.stage(
                "pretrain",
                pretrain.PretrainConfig,
                pretrain.build_parser(),
                *(() if objective == "genesis" else (f"pretrain_{objective}",)),
                manifest=None if self.o.shards else str(self.out / "corpus" / "manifest.csv"),
                shards=str(self.out / "corpus" / "shards") if self.o.shards else None,
                backbone=backbone,
                objective=objective,
                out=str(folder),
                seed=self.o.seed,
                overwrite=self.o.overwrite,
                resume=pretrain.unfinished(folder) and not self.o.overwrite,
            )
        )

    def shared_steps(self, task):
        """The task's steps shared by its cells (`transfer.tasks.SharedStep`), with its first cell's options."""
        if task not in self._shared:
            options = self.cell_options(task, self.o.backbones[0], "scratch")
            self._shared[task] = self.tasks[task].shared_steps(Path(self.o.roots[task]), options, self.place)
        return self._shared[task]

    def cell_options(self, task, backbone, init, probe=False, fraction=1.0):
        """The cell's task options, unresolved (a genesis encoder may not exist yet). A probe is one run: a frozen
        encoder has no training noise to average."""
        from dataclasses import replace

        study_task = self.tasks[task]
        place = replace(self.place, repeats=1) if probe else self.place
        return self.stage(
            task,
            study_task.options_type(),
            study_task.parser(),
            data=str(self.o.roots[task]),
            backbone=backbone,
            init=init,
            encoder=str(self.pretrain_dir(backbone, init)) if init in PRETRAINED else None,
            out=str(Cell(task, backbone, init, probe, fraction).folder(self.out)),
            selection=self.selection,
            seed=self.o.seed,
            overwrite=self.o.overwrite,
            probe=probe,
            train_fraction=fraction,
            **study_task.imposed(place),
        )

    def cells(self):
        """Every cell, in the order they run: each task's fine-tuned cells, its probes, then its label fractions."""
        cells = []
        for task in self.tasks:
            grid = [(backbone, init) for backbone in self.o.backbones for init in self.o.inits]
            cells += [Cell(task, backbone, init) for backbone, init in grid]
            cells += [Cell(task, backbone, init, probe=True) for backbone, init in grid if self.o.probe]
            for fraction in self.o.fractions.get(task, ()):
                cells += [Cell(task, backbone, init, fraction=fraction) for backbone, init in grid]
        return cells

    # ---- checks before anything is written ----

    def check_roots(self):
        """Every file a later step needs, checked now: one line naming the first that is missing or wrong."""
        from plumbing.errors import UsageError
        from transfer.tasks import registered

        if not self.tasks:
            flags = "/".join(f"--{name}" for name in registered(self.o.tasks))
            raise UsageError(flags, "give at least one downstream dataset folder")
        # Each task's settings section first, before any data is read.
        cells = {task: self.cell_options(task, self.o.backbones[0], "scratch") for task in self.tasks}
        for task, options in cells.items():
            if self.selection == "held-out" and options.validation_fraction == 0:
                raise UsageError(
                    self.o.settings_file,
                    f"section {task} sets validation_fraction 0, which holds nothing out: use --protocol thesis, or a "
                    "fraction above 0 with --protocol held-out",
                )
        pretrained = [init for init in self.o.inits if init in PRETRAINED]
        if pretrained and not self.o.corpus:
            raise UsageError(
                "--corpus",
                f"is needed to pretrain the {' and '.join(pretrained)} encoders (or leave them out of --inits)",
            )
        if self.o.corpus:
            self._check_corpus()
        for name, task in self.tasks.items():
            task.check_root(Path(self.o.roots[name]), cells[name])
        if "imagenet" in self.o.inits:
            self._check_imagenet_files()

    def _check_corpus(self):
        """Each dataset of the table has files under --corpus."""
        from plumbing.errors import InputError
        from preprocessing.manifest import find_files, load_table

        options = self.manifest_options()
        for entry in load_table(options.datasets):
            if not find_files(options.root, entry["files"], options.allow_outside_root):
                raise InputError(
                    options.root,
                    f"has no file for dataset '{entry['name']}' of {options.datasets} (files: {entry['files']}); "
                    "fix its glob or remove the dataset from the table",
                )

    def _check_imagenet_files(self):
        """Each backbone's ImageNet weights, as each task's settings name them, are on this machine."""
        from genesis2d.backbones import BACKBONES
        from plumbing.errors import InputError
        from transfer.encoders import keras_cache_dir

        for task in self.tasks:
            for backbone in self.o.backbones:
                given = self.cell_options(task, backbone, "imagenet").imagenet_weights
                path = Path(given) if given else keras_cache_dir() / BACKBONES[backbone].imagenet_file
                if not path.is_file():
                    raise InputError(
                        path,
                        f"is missing: the ImageNet weights of {backbone} (--init imagenet); place the file there "
                        f"(Keras downloads it on a machine with internet access) or set imagenet_weights in "
                        f"section {task} of --settings",
                    )

    # ---- the steps, with their counts and costs ----

    def timing(self, kind, backbone, image_size, batch_size, precision):
        from study import measure

        key = (kind, backbone, image_size, batch_size, precision)
        if key not in self.timings:
            print(f"  measuring {kind} {backbone} at {image_size} px, batch {batch_size} ...", flush=True)
            if kind == "pretraining":
                self.timings[key] = measure.pretraining_step(
                    backbone, image_size, batch_size, precision, steps=self.o.measure_steps
                )
            else:
                self.timings[key] = measure.classifier_step(
                    backbone, image_size, batch_size, precision, steps=self.o.measure_steps
                )
        return self.timings[key]

    def steps(self, measure=True):
        """Every step of the experiment, in order (prerequisites first)."""
        steps = []
        if self.o.corpus:
            steps += self._corpus_steps(measure)
        for name in self.tasks:
            steps += [_shared_step(shared) for shared in self.shared_steps(name)]
        steps += [self._cell_step(cell, measure) for cell in self.cells()]
        steps.append(Step("report", "the report: every cell with the thesis's value beside it", action=self.report))
        return steps

    def _corpus_steps(self, measure):
        from genesis2d.data import check_split
        from preprocessing.manifest import build_from_options, write_manifest

        options = self.manifest_options()
        manifest = Path(options.out)
        record = manifest.with_name("manifest_record.json")
        settings = self._manifest_settings(options)

        def manifest_kept():
            from plumbing.fingerprint import finished_with

            return manifest.is_file() and finished_with(record, settings, self.o.overwrite)

        if manifest_kept():
            from preprocessing.pipeline import load_manifest

            frame = load_manifest(manifest)
        else:
            print(f"reading the corpus under {options.root} for the plan (its headers, and a decode of each kept file)")
            self._built_manifest = build_from_options(options)
            frame = self._built_manifest[0]

        def write():
            from plumbing.atomic import write_json

            if manifest_kept():
                print(f"kept: {manifest} (same corpus files and settings)")
                return
            write_manifest(options, self._built_manifest or build_from_options(options))
            write_json(record, {"settings": settings})

        by_split = frame["split"].value_counts().to_dict()
        counts = ", ".join(f"{by_split.get(s, 0):,} {s}" for s in ("train", "val", "test"))
        patients = frame.groupby(["dataset", "patient_id"]).ngroups
        steps = [
            Step(
                "manifest",
                f"pretraining manifest of {options.root}",
                action=write,
                finished=manifest_kept,
                counts=f"{frame['dataset'].nunique()} datasets, {patients:,} patients, {len(frame):,} slices "
                f"({counts})",
                seconds=0.0,
                disk=len(frame) * 200,
            )
        ]
        if self.o.shards:
            steps.append(self._shards_step(frame))
        for objective in [init for init in PRETRAINED if init in self.o.inits]:
            for backbone in self.o.backbones:
                check_split(
                    f"{manifest} (the split of {options.root})",
                    by_split,
                    self.pretrain_config(backbone, objective).slices_per_batch,
                    fractions="the settings file's manifest: fractions",
                )
                steps.append(self._pretrain_step(backbone, by_split, measure, objective))
        return steps

    def _shards_step(self, frame):
        shard_options = self.shard_options()
        index = Path(shard_options.out) / "index.json"
        plane_bytes = self._slice_bytes(frame)
        return Step(
            "shards",
            f"TFRecord shards ({shard_options.encoding})",
            action=lambda: _run_shards(shard_options),
            finished=lambda: _shards_finished(index, shard_options.splits),
            needs=("manifest",),
            counts=f"{len(frame):,} slices",
            seconds=len(frame) * 0.01,
            disk=int(plane_bytes * (0.5 if shard_options.encoding == "png" else 1.0)),
        )

    def _manifest_settings(self, options):
        from plumbing.fingerprint import files_fingerprint
        from plumbing.options import reuse_settings

        root = Path(options.root)
        files = [Path(folder) / name for folder, _, names in os.walk(root) for name in names]
        table = Path(options.datasets)
        return {
            **reuse_settings(options),
            "datasets_table": table.read_text(),
            "corpus_files": files_fingerprint(files, root),
        }

    def _slice_bytes(self, frame):
        """The bytes of every slice as 16-bit pixels, each dataset's plane read from one of its file headers."""
        from preprocessing.readers import read_header

        total = 0
        for _, rows in frame.groupby("dataset"):
            try:
                shape = read_header(rows["path"].iloc[0])["shape"]
                plane = int(shape[-1]) * int(shape[-2])
            except Exception:  # An estimate only: a CT slice.
                plane = 512 * 512
            total += 2 * plane * len(rows)
        return total

    def _pretrain_step(self, backbone, by_split, measure, objective="genesis"):
        from genesis2d.card import ENCODER_FILE

        config = self.pretrain_config(backbone, objective)
        train, val = by_split.get("train", 0), by_split.get("val", 0)
        per_epoch = config.steps_per_epoch or max(1, math.ceil(train / config.batch_size))
        validation = config.validation_steps or max(1, math.ceil(val / config.slices_per_batch))
        timing = (
            self.timing("pretraining", backbone, config.image_size, config.batch_size, config.precision)
            if measure
            else None
        )
        params = _parameters(timing, "pretraining", backbone)
        folder = self.pretrain_dir(backbone, objective)
        what = {
            "genesis": f"Models Genesis pretraining, {backbone} U-Net",
            "contrastive": f"contrastive pretraining, {backbone} encoder",
            "genesis+contrastive": f"restoration + contrastive pretraining, {backbone} U-Net",
        }[objective]
        return Step(
            pretrain_key(backbone, objective),
            f"{what} at {config.image_size} px, batch {config.batch_size} images through the encoder",
            action=lambda: _run_pretraining(self.pretrain_config(backbone, objective)),
            finished=lambda: (folder / ENCODER_FILE).is_file() and not _pretraining_unfinished(folder),
            needs=("shards",) if self.o.shards else ("manifest",),
            counts=f"{train:,} training and {val:,} validation slices; at most {config.epochs} epochs of "
            f"{per_epoch:,} steps (early stopping may end it sooner)",
            train_steps=config.epochs * per_epoch,
            setups=1,
            predict_batches=config.epochs * validation,
            timing=timing,
            disk=params * 4 * 4,
        )

    def _cell_step(self, cell, measure):
        from transfer.schedules import schedule_row

        task, backbone, init = cell.task, cell.backbone, cell.init
        study_task = self.tasks[task]
        options = self.cell_options(task, backbone, init, cell.probe, cell.fraction)
        row, _ = schedule_row(study_task.schedules(), backbone, init)
        value = {
            name: getattr(options, name) if getattr(options, name) is not None else getattr(row, name)
            for name in ("epochs", "warmup_epochs", "batch_size")
        }
        epochs = 1 if cell.probe else value["epochs"] + value["warmup_epochs"]  # A probe: one pass for features.
        batch = value["batch_size"]
        count = study_task.counts(Path(self.o.roots[task]), options, self.selection)
        units, size = count.units, count.image_size
        per_epoch = options.steps_per_epoch or max(1, math.ceil(count.train * cell.fraction / batch))
        timing = self.timing("fine-tuning", backbone, size, batch, options.precision) if measure else None
        folder = cell.folder(self.out)
        needs = (pretrain_key(backbone, init),) if init in PRETRAINED else ()
        needs += tuple(shared.key for shared in self.shared_steps(task))
        how = (
            ", linear probe"
            if cell.probe
            else f", {cell.fraction:.0%} of the training labels"
            if cell.fraction < 1
            else ""
        )
        return Step(
            cell.key,
            f"{study_task.title} {backbone}, init {init}{how}",
            action=lambda: self.run_cell(cell),
            finished=lambda: cell_finished(folder),
            needs=needs,
            counts=f"{count.text}; {units} x {epochs} epochs of {per_epoch:,} steps at {size} px, batch {batch}",
            train_steps=units * epochs * per_epoch,
            setups=units * (2 if value["warmup_epochs"] else 1),
            # Predicted at the training batch (as measured): every epoch's selection data, then the test data once.
            predict_batches=units * math.ceil((count.evaluated * epochs + count.test) / batch),
            timing=timing,
            disk=units * _parameters(timing, "fine-tuning", backbone) * 4 * 2,
        )

    # ---- running ----

    def run_cell(self, cell):
        study_task = self.tasks[cell.task]
        study_task.run(
            study_task.resolve(self.cell_options(cell.task, cell.backbone, cell.init, cell.probe, cell.fraction))
        )
        study_task.after_cell(cell.folder(self.out), Path(self.o.roots[cell.task]), self.o.seed)

    def report(self):
        from plumbing.errors import UsageError
        from plumbing.lock import output_lock
        from study.report import build_report

        folders = {cell.key: cell.folder(self.out) for cell in self.cells()}
        cells = list(folders)
        present = [c for c in cells if cell_finished(folders[c])]
        missing = [c for c in cells if c not in present]
        asked = any(fnmatch.fnmatchcase("report", p) for p in self.o.cells) or not (self.o.cells or self.array)
        if missing and not asked or not present:
            print(
                f"report: {len(missing)} of {len(cells)} cells not finished yet ({', '.join(missing)}); it is built "
                "by the run that finishes the last one, or by `--cells report`"
            )
            return None
        note = (
            (f"{self.o.note}\n\n" if self.o.note else "")
            + f"**Protocol: {self.o.protocol}** ({self.protocol_text}; the `sel.` beside each number names the rule "
            f"its cell's run recorded). Cells: {len(present)} of {len(cells)}"
            + (f"; missing: {', '.join(missing)}." if missing else ".")
        )
        folder = self.out / "report"
        try:
            with output_lock(folder):
                table = build_report(
                    [folders[c] for c in present],
                    folder,
                    self.o.bootstrap,
                    self.o.seed,
                    note=note,
                    interval=self.o.interval,
                    appendix=self._appendix([(c, folders[c]) for c in present]),
                )
        except UsageError as error:
            if not Path(str(error.path)) == folder:
                raise
            print(f"report: not written here ({error.problem}); the process holding it writes it")
            return None
        print(note)
        print(f"report: {folder / 'report.md'}")
        return table

    def power_lines(self):
        """For each task and level the report tests, the smallest AUC difference its test data let the report's test
        detect (`transfer.power`), and the comparisons it applies to."""
        from study.report import comparisons
        from transfer.power import ALPHA, POWER, WITHIN, detectable_difference

        pairs = ", ".join(f"{a} vs {b}" for a, b in comparisons(list(self.o.inits)))
        if not pairs:
            return []
        lines = [
            f"\nwhat the test data can detect: the smallest AUC difference the report's test finds with {POWER:.0%} "
            f"power at alpha {ALPHA}, simulated at the data's shape (folds, clusters, each cluster's positives and "
            f"negatives; scores correlating {WITHIN} within a cluster); for each comparison ({pairs}):"
        ]
        for name, task in self.tasks.items():
            options = self.cell_options(name, self.o.backbones[0], "scratch")
            auc, source = task.expected_auc
            for level, design in task.test_design(Path(self.o.roots[name]), options).items():
                found = detectable_difference(design, auc, seed=self.o.seed)
                test = {"permutation": "cluster permutation", "folds": f"paired t over {len(design)} folds"}
                value = f"{found['difference']:.4f}"
                if found["ceiling"]:
                    value = f"more than {value} (beyond AUC 1: no better model can be told apart here)"
                lines.append(
                    f"  {name} {level}: {value} at AUC {auc} ({source}); {len(design)} fold"
                    f"{'s' if len(design) > 1 else ''}, {found['clusters']:,} clusters, {found['positives']:,} "
                    f"positive and {found['negatives']:,} negative cases; "
                    f"{test.get(found['test'], 'cluster jackknife')} test"
                )
        return lines

    def _appendix(self, present):
        """Each task's own report lines from its finished cells ((key, folder) pairs)."""
        lines = []
        for name, task in self.tasks.items():
            lines += task.report_lines([(key, folder) for key, folder in present if key.startswith(f"{name}/")])
        return lines


def _parameters(timing, kind, backbone):
    """The weights of a step's model: as measured, or counted on the model built without timing it."""
    from study import measure

    return measure.parameters(kind, backbone) if timing is None else timing.parameters


def _pretraining_unfinished(folder):
    from genesis2d.pretrain import unfinished

    return unfinished(folder)


def _shards_finished(index, splits):
    """Whether the shards' index lists every split asked for (it is written split by split)."""
    import json

    try:
        return set(splits) <= set(json.loads(Path(index).read_text()))
    except (OSError, ValueError):
        return False


def cell_finished(folder):
    """Whether a cell's results contract is complete (what the report reads)."""
    return (Path(folder) / "metrics.json").is_file() and (Path(folder) / "test_scores.csv").is_file()


def _run_shards(options):
    from preprocessing import shards

    shards.run(options)


def _run_pretraining(config):
    from genesis2d import pretrain

    pretrain.run(config)


def _shared_step(shared):
    """A task's `transfer.tasks.SharedStep` as a step of the plan."""
    from dataclasses import fields

    return Step(**{item.name: getattr(shared, item.name) for item in fields(shared)})


def selected_steps(steps, patterns, array=None):
    """The steps to run: those the patterns select (all without patterns), this array task's share of the cells,
    then their unfinished prerequisites before them, in plan order.

    `array`: (index, count) of a job array: the selected cells, in plan order, are dealt out round-robin. Tasks
    that start together pull the same prerequisites: `run` does each step holding its lock, so one task does a
    shared step while the others wait for it and then keep it.
    """
    from plumbing.errors import UsageError

    by_key = {s.key: s for s in steps}
    if patterns:
        chosen = [s for s in steps if any(fnmatch.fnmatchcase(s.key, p) for p in patterns)]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(s.key, p) for s in steps)]
        if unmatched:
            raise UsageError("--cells", f"{', '.join(unmatched)} matches no step; the steps: {', '.join(by_key)}")
    else:
        chosen = list(steps)
    if array is not None:
        index, count = array
        chosen = [s for s in chosen if s.key.count("/") == 2][index::count]
    keys = {s.key for s in chosen} | {"report"}  # Built once every cell is present; until then it names the missing.
    pending = list(chosen)
    while pending:
        step = pending.pop()
        for need in step.needs:
            if need not in keys and not by_key[need].finished():
                keys.add(need)
                pending.append(by_key[need])
    return [s for s in steps if s.key in keys]


def slurm_array():
    """(index, count) of this Slurm array task, or None outside a job array."""
    from plumbing.errors import UsageError

    if "SLURM_ARRAY_TASK_ID" not in os.environ:
        return None

    def number(name, default, minimum):
        text = os.environ.get(name, str(default))
        try:
            value = int(text)
        except ValueError:
            raise UsageError(name, f"must be a whole number. Received: {text!r}") from None
        if value < minimum:
            raise UsageError(name, f"must be at least {minimum}. Received: {value}")
        return value

    step = number("SLURM_ARRAY_TASK_STEP", 1, 1)  # --array=0-22:2 counts ids 0, 2, .., 22.
    index = (number("SLURM_ARRAY_TASK_ID", 0, 0) - number("SLURM_ARRAY_TASK_MIN", 0, 0)) // step
    count = number("SLURM_ARRAY_TASK_COUNT", 1, 1)
    if not 0 <= index < count:
        raise UsageError("SLURM_ARRAY_TASK_ID", f"gives task {index} of an array of {count}")
    return index, count


def print_plan(steps, chosen, out):
    keys = {s.key for s in chosen}
    width = max(28, *(len(s.key) for s in steps))
    print(f"\nthe plan ({len(chosen)} of {len(steps)} steps run here; projected times from the steps measured above):")
    for number, step in enumerate(steps, 1):
        mark = " " if step.key in keys else "-"
        finished = step.finished is not None and step.finished()
        measured = step.timing is not None or not (step.train_steps or step.predict_batches)
        state = "finished, kept" if finished else _hours(step.projected()) if measured else "not measured"
        timing = step.timing
        speed = f"; {timing.train_seconds:.3g} s/step ({timing.device}, {timing.precision})" if timing else ""
        print(f"{mark}{number:>3}. {step.key:<{width}} {state:>14}  disk {_size(step.disk):>10}  {step.title}")
        if step.counts:
            print(f"       {step.counts}{speed}")
    todo = [s for s in chosen if not (s.finished is not None and s.finished())]
    total = sum(s.projected() for s in todo)
    unmeasured = sum(s.timing is None and bool(s.train_steps or s.predict_batches) for s in todo)
    disk = sum(s.disk for s in todo)
    free = shutil.disk_usage(_existing_parent(out)).free
    time_text = (
        f"{_hours(total)} for the {len(todo)} steps left here"
        if not unmeasured
        else f"not measured for {unmeasured} of the {len(todo)} steps left here (--measure-steps 0); "
        f"{_hours(total)} for the others"
    )
    print(f"\nprojected: {time_text}; disk: {_size(disk)} to write, {_size(free)} free under {_existing_parent(out)}")
    if disk > free:
        print(f"warning: the steps would write {_size(disk)} but only {_size(free)} is free", file=sys.stderr)
    return total, disk, free


def _existing_parent(path):
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


def run(options):
    """Checks the roots, prints the plan, and (unless `plan_only`) runs the chosen steps; returns the steps run."""
    started = time.time()
    experiment = Experiment(options)
    print(f"protocol {options.protocol}: {experiment.protocol_text}")
    experiment.check_roots()
    steps = experiment.steps(measure=options.measure_steps > 0)
    chosen = selected_steps(steps, options.cells, experiment.array)
    print_plan(steps, chosen, experiment.out)
    print("\n".join(experiment.power_lines()), flush=True)
    if options.plan_only:
        return []
    from plumbing.lock import output_lock

    (experiment.out / "steps").mkdir(parents=True, exist_ok=True)
    for number, step in enumerate(chosen, 1):
        left = chosen[number - 1 :]
        measured = all(s.timing is not None or not (s.train_steps or s.predict_batches) for s in left)
        projected = _hours(sum(s.projected() for s in left)) if measured else "not measured"
        print(
            f"\n=== [{number}/{len(chosen)}] {step.key}: {step.title} (elapsed {_hours(time.time() - started)}, "
            f"projected left {projected}) ===",
            flush=True,
        )
        # One process a step: another run of this --out doing it (an array task) is waited for, and its result is
        # then kept by the step's own reuse rule.
        with output_lock(experiment.out / "steps", f".{_step_file(step.key)}.lock", wait=True):
            before = _last_write(experiment.out)
            began = time.time()
            step.action()
            # A step kept by its reuse rule writes nothing: its record keeps the seconds of the run that did the work.
            if _last_write(experiment.out) != before or not _step_record(experiment.out, step).is_file():
                record_step(experiment.out, step, time.time() - began)
    print(f"\nfinished {len(chosen)} steps in {_hours(time.time() - started)}")
    return chosen


def record_step(out, step, seconds):
    """Writes a step's projected and actual seconds to `out/steps/<step>.json` (what the projections missed), one
    file per step, so that processes sharing `out` never overwrite each other's."""
    from plumbing.atomic import write_json

    timing = step.timing
    record = {
        "step": step.key,
        "projected_seconds": round(step.projected(), 3),
        "seconds": round(seconds, 3),
        "train_steps": step.train_steps,
        "measured_seconds_per_step": None if timing is None else timing.train_seconds,
        "measured_peak_rss_gb": None if timing is None else timing.peak_rss_gb,
        "device": None if timing is None else timing.device,
    }
    write_json(_step_record(out, step), record)


def _step_file(key):
    return key.replace("/", "_")


def _step_record(out, step):
    return Path(out) / "steps" / f"{_step_file(step.key)}.json"


def _last_write(out):
    """The latest modification time and the count of the files under `out` (its step records and locks aside)."""
    records = Path(out) / "steps"
    times = [
        p.stat().st_mtime_ns
        for p in Path(out).rglob("*")
        if p.parent != records and not p.name.endswith("lock") and p.is_file()
    ]
    return max(times, default=0), len(times)
