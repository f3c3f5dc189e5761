"""The whole study end to end: on the built-in demo data (`python -m study`), or the thesis's experiment on your
folders (`python -m study --corpus C --luna16 L --mura M`, see `study.experiment`).

The demo writes the demo data, builds the pretraining manifest, pretrains three
encoders on it with equal compute (genesis2d's restoration, and beyond the thesis
contrast and both joined, `genesis2d.contrastive`), cross-validates LUNA16 (five
folds) and trains MURA for each initialisation (scratch, the three pretrained, and
imagenet when its weights are in Keras's cache), each with its Grad-CAM galleries,
fits a linear probe of each initialisation on both tasks, adds a label-efficiency
sweep on MURA, and writes the report. Each step is skipped when its outputs are
already complete, so an interrupted study
continues where it stopped. Demo numbers describe synthetic phantoms only.
"""

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from genesis2d.backbones import BACKBONES  # noqa: E402  Data only: no Keras import.
from plumbing.cli import ArgumentParser, count_type
from study.experiment import PROTOCOLS, THESIS_BACKBONES, THESIS_INITS  # noqa: E402
from study.report import DEFAULT_INTERVAL, INTERVALS  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_OBJECTIVES = ("genesis", "contrastive", "genesis+contrastive")
NOTE = (
    "**Demo data.** These numbers come from the synthetic phantoms of `python -m study.demo_data` and small "
    "CPU-sized settings; they show that the pipeline runs end to end and say nothing about the thesis's results "
    "on LUNA16 and MURA."
)


def build_parser():
    parser = ArgumentParser(prog="python -m study", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        help="output folder. Default: runs/study/ (the demo), runs/experiment/ (your data).",
    )
    parser.add_argument(
        "--backbone",
        nargs="+",
        choices=sorted(BACKBONES),
        help="backbone of every model (the demo takes one). Default: resnet18 for the demo (fast on a CPU); "
        f"{' '.join(THESIS_BACKBONES)} on your data (thesis 4.2.2-4.2.6).",
    )
    _add_demo_arguments(parser)
    _add_shared_arguments(parser)
    _add_data_arguments(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every step (weights, sampling, augmentation, distortions, bootstrap); "
        "on a CPU the same seed gives the same report. Default: 0.",
    )
    return parser


def _add_demo_arguments(parser):
    """The demo's own flags: its pretraining and its label-efficiency fractions."""
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=3,
        help="pretraining epochs of the demo (your data: section pretrain of --settings). Default: 3.",
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=40, help="pretraining steps per epoch of the demo. Default: 40."
    )
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=list(DEMO_OBJECTIVES),
        choices=DEMO_OBJECTIVES,
        help="pretraining arms of the demo, each fine-tuned and probed as an --init of that name: genesis (the "
        "thesis) and the arms beyond it (genesis2d/contrastive.py), each for the same epochs x steps x batch. "
        f"Default: {' '.join(DEMO_OBJECTIVES)}.",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=[0.25, 0.5],
        help="extra MURA training-label fractions for the demo's label-efficiency curve. Default: 0.25 0.5.",
    )


def _add_shared_arguments(parser):
    """Flags of the demo and of the experiment on your data alike."""
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="MURA runs per initialisation and fraction, averaged (the thesis trained 2). Default: 2.",
    )
    parser.add_argument(
        "--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="LUNA16 folds. Default: all five."
    )
    parser.add_argument(
        "--interval",
        default=DEFAULT_INTERVAL,
        choices=INTERVALS,
        help="the report's AUC intervals: the cluster jackknife on the logit scale (validated down to "
        f"20 clusters by tools/simulate_statistics.py) or the percentile bootstrap. Default: "
        f"{DEFAULT_INTERVAL}.",
    )
    parser.add_argument(
        "--bootstrap",
        type=count_type(1),
        default=1000,
        help="bootstrap resamples, used with --interval bootstrap only. Default: 1000.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo steps whose kept results were made with other "
        "settings or data. Default: such a step stops the study, saying what changed.",
    )


def _add_data_arguments(parser):
    """The experiment on your data: its folders (one flag per registered task), arms, protocol, settings file, plan
    and cells."""
    from transfer.tasks import registered

    tasks = registered()
    data = parser.add_argument_group(
        "your data: the thesis's experiment (Fig. 5.1: backbones x initialisations x tasks) on your folders; "
        f"any of --corpus, {', '.join(f'--{name}' for name in tasks)} leaves the demo"
    )
    data.add_argument(
        "--corpus", help="pretraining corpus folder, as the --datasets table describes it (thesis 3.1, Fig. 3.1)."
    )
    data.add_argument(
        "--datasets", help="the corpus's datasets table. Default: preprocessing/datasets.yaml (the thesis's 17)."
    )
    for name, task in tasks.items():
        data.add_argument(f"--{name}", help=task.root_help)
    data.add_argument(
        "--inits",
        nargs="+",
        default=list(THESIS_INITS),
        choices=("scratch", "genesis", "imagenet", "radimagenet", "contrastive", "genesis+contrastive"),
        help=f"initialisations. Default: {' '.join(THESIS_INITS)} (thesis Fig. 5.1). contrastive and "
        "genesis+contrastive pretrain their own encoders on --corpus (genesis2d/contrastive.py), with the steps and "
        "batch of genesis's.",
    )
    data.add_argument(
        "--protocol",
        default="held-out",
        choices=sorted(PROTOCOLS),
        help="which epoch each cell keeps: held-out (chosen on training groups held out; the test data never "
        "choose) or thesis (the best AUC on the test data, as the thesis read it, 4.2.2-4.2.5; optimistic). "
        "Recorded and printed with every number. Default: held-out.",
    )
    data.add_argument(
        "--settings",
        help=f"YAML file of sections roots (corpus, datasets, {', '.join(tasks)}), manifest, shards, pretrain, "
        f"{', '.join(tasks)}: each a mapping of that command's own options (e.g. pretrain: {{epochs: 50}}), checked "
        "as its flags are; and tasks, a list of module:attribute of tasks of one's own (transfer/tasks.py). Default: "
        "every stage's defaults, the thesis's where it gives them.",
    )
    data.add_argument(
        "--plan",
        action="store_true",
        help="check the folders, print the plan (counts, measured step times, projected hours, disk) and stop.",
    )
    data.add_argument(
        "--cells",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="run only the steps these patterns name (e.g. 'luna16/resnet50/*', 'pretrain/*', 'luna16/patches', "
        "report), with their unfinished prerequisites, into the shared --out; in a Slurm job array "
        "(SLURM_ARRAY_TASK_ID) each task takes its share of the selected cells. Default: every step.",
    )
    data.add_argument(
        "--measure-steps",
        type=int,
        default=3,
        help="timed training steps per model for the plan's projections (after one untimed step); 0 measures "
        "nothing (no projected times). Default: 3.",
    )


def _step(title):
    print(f"\n=== {title} ===", flush=True)


@dataclass(frozen=True)
class DemoOptions:
    """What the demo study takes (the command line's demo flags, typed)."""

    out: str
    backbone: str
    pretrain_epochs: int
    pretrain_steps: int
    fractions: tuple
    repeats: int
    folds: tuple
    interval: str
    bootstrap: int
    overwrite: bool
    seed: int
    objectives: tuple = DEMO_OBJECTIVES


def from_args(args):
    """The command line as typed options: ExperimentOptions when it names the user's folders, else DemoOptions."""
    from plumbing.errors import UsageError
    from study.experiment import read_settings
    from transfer.tasks import registered

    flagged = {name: getattr(args, name.replace("-", "_")) for name in registered()}  # Each task's root flag.
    if on_your_data(args.corpus, flagged, args.settings):
        if set(args.objectives) != set(DEMO_OBJECTIVES):
            raise UsageError("--objectives", "applies to the demo; on your data, name the arms in --inits")
        from study.experiment import ExperimentOptions

        sections = read_settings(args.settings)
        roots = sections.pop("roots", {})
        tasks = tuple(sections.pop("tasks", ()))
        task_roots = {name: root for name, root in roots.items() if name not in ("corpus", "datasets")}
        return ExperimentOptions(
            out=Path(args.out or PROJECT_ROOT / "runs" / "experiment"),
            corpus=args.corpus or roots.get("corpus"),
            datasets=args.datasets or roots.get("datasets"),
            roots={**task_roots, **{name: root for name, root in flagged.items() if root}},  # Flags win.
            tasks=tasks,
            backbones=tuple(args.backbone or THESIS_BACKBONES),
            inits=tuple(args.inits),
            protocol=args.protocol,
            repeats=args.repeats,
            folds=tuple(args.folds),
            stage_settings=sections,
            settings_file=args.settings or "settings",
            cells=tuple(args.cells),
            plan_only=args.plan,
            measure_steps=args.measure_steps,
            seed=args.seed,
            overwrite=args.overwrite,
            interval=args.interval,
            bootstrap=args.bootstrap,
        )
    given = {
        "--plan": args.plan,
        "--cells": args.cells,
        "--inits": args.inits != list(THESIS_INITS),
        "--protocol": args.protocol != "held-out",
        "--datasets": args.datasets,
        "--settings": args.settings,
        "--measure-steps": args.measure_steps != 3,
    }
    if any(given.values()):
        flags = "/".join(flag for flag, value in given.items() if value)
        roots = ", ".join(["--corpus", *(f"--{name}" for name in flagged)])
        raise UsageError(flags, f"applies to your data ({roots}, or a roots section of --settings)")
    backbones = args.backbone or ["resnet18"]
    if len(backbones) > 1:
        raise UsageError("--backbone", f"the demo takes one backbone. Received: {' '.join(backbones)}")
    return DemoOptions(
        out=args.out or str(PROJECT_ROOT / "runs" / "study"),
        backbone=backbones[0],
        pretrain_epochs=args.pretrain_epochs,
        pretrain_steps=args.pretrain_steps,
        fractions=tuple(args.fractions),
        repeats=args.repeats,
        folds=tuple(args.folds),
        interval=args.interval,
        bootstrap=args.bootstrap,
        overwrite=args.overwrite,
        seed=args.seed,
        objectives=tuple(o for o in DEMO_OBJECTIVES if o in args.objectives),
    )


def on_your_data(corpus, roots, settings):
    """Whether the command names the user's folders (the thesis's experiment) rather than running the demo."""
    if corpus or any(roots.values()):
        return True
    if settings:
        from study.experiment import read_settings

        return bool(read_settings(settings).get("roots"))
    return False


def run(args):
    options = from_args(args)
    if isinstance(options, DemoOptions):
        return run_demo(options)
    from study import experiment

    return experiment.run(options)


def run_demo(demo):
    started = time.time()
    out = Path(demo.out)
    from genesis2d import pretrain
    from plumbing.lock import output_lock
    from study.report import build_report

    _step("demo data and pretraining manifest")
    manifest = pretrain.demo_manifest()
    encoders = {objective: _pretrain_arm(demo, objective, manifest, out) for objective in demo.objectives}
    run_dirs = _downstream_runs(demo, encoders, out)
    _step("report")
    with output_lock(out / "report"):  # Every stage holds its folder's lock while it reads and writes there.
        table = build_report(run_dirs, out / "report", demo.bootstrap, demo.seed, note=NOTE, interval=demo.interval)
    print("\n".join(line for line in (out / "report" / "report.md").read_text().splitlines() if line.startswith("|")))
    print(f"\nstudy finished in {(time.time() - started) / 60:.1f} min; report: {out / 'report' / 'report.md'}")
    return table


def _pretrain_arm(demo, objective, manifest, out):
    """One pretraining arm of the demo; returns its folder."""
    from genesis2d import pretrain
    from plumbing.options import from_config

    _step(f"{objective} pretraining ({demo.backbone})")
    folder = out / ("pretrain" if objective == "genesis" else f"pretrain_{objective}")
    # Kept, resumed or refused by the rule every stage follows: the same settings and the same data, by content.
    config = pretrain.resolve(
        from_config(
            pretrain.PretrainConfig,
            pretrain.build_parser(),
            pretrain.DEMO_CONFIG if objective == "genesis" else pretrain.DEMO_CONTRASTIVE_CONFIG,
            manifest=str(manifest),
            backbone=demo.backbone,
            objective=objective,
            out=str(folder),
            epochs=demo.pretrain_epochs,
            steps_per_epoch=demo.pretrain_steps,
            verbose=2,
            seed=demo.seed,
            overwrite=demo.overwrite,
            resume=pretrain.unfinished(folder) and not demo.overwrite,
        )
    )
    # Equal compute: every arm passes the same images through the encoder (contrast: two views of half the slices).
    print(
        f"compute: {config.epochs} epochs x {config.steps_per_epoch} steps x {config.batch_size} images through "
        f"the encoder = {config.epochs * config.steps_per_epoch * config.batch_size:,} "
        f"({config.slices_per_batch} slices a step{', two views each' if config.two_views else ''})",
        flush=True,
    )
    pretrain.run(config)
    return folder


def _demo_inits(demo):
    """scratch, the pretrained arms, and imagenet where its weights are in Keras's cache."""
    from transfer.encoders import keras_cache_dir

    inits = ["scratch", *demo.objectives]
    imagenet_file = keras_cache_dir() / BACKBONES[demo.backbone].imagenet_file
    if imagenet_file.exists():
        inits.append("imagenet")
    else:
        print(
            f"\nimagenet: skipped. To include it, place {imagenet_file.name} in {imagenet_file.parent} "
            "(Keras downloads it there on a machine with internet access)."
        )
    return inits


def _downstream_runs(demo, encoders, out):
    """LUNA16's cross-validation and probe, MURA's probe, and MURA at each label fraction, for each
    initialisation; returns the run folders in the report's order."""
    from luna16 import experiment as luna16
    from mura import experiment as mura
    from plumbing.options import from_config

    inits = _demo_inits(demo)
    common = {"backbone": demo.backbone, "seed": demo.seed, "overwrite": demo.overwrite}
    luna16_demo = from_config(
        luna16.Luna16Options, luna16.parser(), luna16.DEMO_CONFIG, folds=list(demo.folds), **common
    )
    mura_demo = from_config(mura.MuraOptions, mura.parser(), mura.DEMO_CONFIG, **common)

    def encoder_of(init):
        return str(encoders[init]) if init in encoders else None

    run_dirs = []
    for probe in (False, True):
        for init in inits:
            _step(f"LUNA16 5-fold cross-validation, init {init}{', linear probe' if probe else ''}")
            run_dir = out / f"luna16_{init}{'_probe' if probe else ''}"
            options = replace(luna16_demo, init=init, encoder=encoder_of(init), probe=probe, out=str(run_dir))
            luna16.run(luna16.resolve_options(options))
            run_dirs.append(run_dir)
    for init in inits:  # The probe has no training noise to average: one run each.
        _step(f"MURA shoulder, init {init}, linear probe")
        run_dir = out / f"mura_{init}_probe"
        options = replace(mura_demo, init=init, encoder=encoder_of(init), probe=True, out=str(run_dir))
        mura.run(mura.resolve_options(options))
        run_dirs.append(run_dir)
    for fraction in [1.0, *demo.fractions]:
        for init in inits:
            suffix = "" if fraction == 1.0 else f"_labels{int(round(fraction * 100))}"
            _step(f"MURA shoulder, init {init}, {fraction:.0%} of training labels")
            run_dir = out / f"mura_{init}{suffix}"
            options = replace(
                mura_demo,
                init=init,
                encoder=encoder_of(init),
                out=str(run_dir),
                train_fraction=fraction,
                repeats=demo.repeats,
            )
            mura.run(mura.resolve_options(options))  # Keeps a run finished earlier with the same settings and data.
            run_dirs.append(run_dir)
    return run_dirs


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(
        lambda a: build_parser().parse_args(a),
        run,
        argv,
        interrupted=lambda args: "run the same command again to continue where it stopped.",
        tensorflow=True,
    )


if __name__ == "__main__":
    main()
