"""`python -m study`: the thesis's experiment (`study.experiment`) on your folders
(`python -m study --corpus C --luna16 L --mura M`, or a settings file's roots), or without them on the built-in
demo trees with the demo's settings file, `study/demo.yaml`.

The demo is the experiment at CPU-sized settings: it writes the demo data, builds the pretraining manifest,
pretrains three encoders with equal compute (genesis2d's restoration, and beyond the thesis contrast and both
joined, `genesis2d.contrastive`), cross-validates LUNA16 (five folds) and trains MURA for each initialisation
(scratch, the three pretrained, and imagenet when its weights are in Keras's cache), each with its Grad-CAM
galleries, fits a linear probe of each initialisation on both tasks, adds a label-efficiency sweep on MURA, and
writes the report. Each step is kept when it is finished with the same settings and data, so an interrupted study
continues where it stopped. Demo numbers describe synthetic phantoms only.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from plumbing.cli import count_type  # noqa: E402
from study.experiment import PRETRAINED, YOUR_DATA, ExperimentOptions  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_SETTINGS = Path(__file__).with_name("demo.yaml")
STUDY_SECTION = (
    "A settings file's study section sets any option above by its name (e.g. study: {inits: [scratch], probe: "
    "true, fractions: {mura: [0.5]}}); a flag wins over it. Without folders, the settings are the demo's: "
    "study/demo.yaml."
)


def build_parser():
    """The study's flags: `ExperimentOptions`'s option fields, then the folders (one flag per registered task), the
    settings file, and the flags that write into its sections."""
    from plumbing.options import build_parser as options_parser
    from transfer.tasks import registered

    parser = options_parser(
        ExperimentOptions, "python -m study", __doc__.split("\n\n")[0], epilog=STUDY_SECTION, config_flag=False
    )
    tasks = registered()
    data = next(group for group in parser._action_groups if group.title == YOUR_DATA)
    for name, task in tasks.items():
        data.add_argument(f"--{name}", help=task.root_help)
    data.add_argument(
        "--settings",
        help=f"YAML file of sections roots (corpus, datasets, {', '.join(tasks)}), study (the options above by "
        f"their names), manifest, shards, pretrain, pretrain_<objective>, {', '.join(tasks)}: each a mapping of "
        "that command's own options (e.g. pretrain: {epochs: 50}), checked as its flags are, over the values of "
        "its config file if it names one; and tasks, a list of module:attribute of tasks of one's own "
        "(transfer/tasks.py). Relative paths are read from the file's folder; study/demo.yaml is an example. "
        "Default: every stage's defaults, the thesis's where they are given.",
    )
    sections = parser.add_argument_group("flags over the settings file's pretraining and label fractions")
    sections.add_argument(
        "--pretrain-epochs", type=count_type(1), help="pretraining epochs of every arm (section pretrain: epochs)."
    )
    sections.add_argument(
        "--pretrain-steps",
        type=count_type(1),
        help="pretraining steps per epoch of every arm (section pretrain: steps_per_epoch).",
    )
    sections.add_argument(
        "--objectives",
        nargs="+",
        choices=PRETRAINED,
        help="the demo's pretraining arms, each fine-tuned and probed as an --inits of that name; on your data, "
        "name the arms in --inits. Default: the demo settings' inits.",
    )
    sections.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        help="training-label shares of label-efficiency cells (<init>_labels25), for the tasks the settings file's "
        "study: fractions names (the demo's: mura), else for every task; none given: no such cells.",
    )
    return parser


def parse_args(argv=None):
    """The command line as typed `ExperimentOptions`: the flags, over the settings file's study section, over the
    options' defaults. Without roots (flags or a roots section) the settings file is the demo's, `study/demo.yaml`,
    on the demo trees, which are written first."""
    import sys
    from dataclasses import fields

    from plumbing.cli import checked_config
    from plumbing.errors import UsageError
    from study.experiment import read_settings
    from transfer.tasks import registered

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)  # The folders first: they decide the settings file.
    for flag in ("--settings", "--corpus", *(f"--{name}" for name in registered())):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(argv)
    flagged = {name: getattr(known, name.replace("-", "_")) for name in registered()}  # Each task's root flag.
    settings = known.settings
    sections = read_settings(settings)  # Read once: its roots decide the demo, its sections the rest.
    demo = not on_your_data(known.corpus, flagged, settings, sections)
    if demo:
        settings = DEMO_SETTINGS
        sections = read_settings(settings)
    study = sections.pop("study", {})
    fractions = study.pop("fractions", None) or {}  # A mapping of tasks: checked by ExperimentOptions.
    parser.set_defaults(**checked_config(study, parser, f"{settings}: section study"))
    args = parser.parse_args(argv)
    if not demo and args.objectives is not None:
        raise UsageError("--objectives", "applies to the demo; on your data, name the arms in --inits")
    roots = sections.pop("roots", {})
    task_roots = {name: root for name, root in roots.items() if name not in ("corpus", "datasets")}
    for key, value in (("epochs", args.pretrain_epochs), ("steps_per_epoch", args.pretrain_steps)):
        if value is not None:
            sections.setdefault("pretrain", {})[key] = value
    if args.fractions is not None:  # The tasks the settings give fractions, else every task.
        names = list(fractions) if isinstance(fractions, dict) and fractions else list(task_roots)
        fractions = {name: tuple(args.fractions) for name in names}
    values = {item.name: getattr(args, item.name) for item in fields(ExperimentOptions) if hasattr(args, item.name)}
    if demo:
        _write_demo_trees()
        values["inits"] = _demo_inits(values, args.objectives, imagenet="--inits" not in argv)
    values.update(
        out=args.out or PROJECT_ROOT / "runs" / ("study" if demo else "experiment"),
        corpus=args.corpus or roots.get("corpus"),
        datasets=args.datasets or roots.get("datasets"),
        fractions=fractions,
        roots={**task_roots, **{name: root for name, root in flagged.items() if root}},  # Flags win.
        tasks=tuple(sections.pop("tasks", ())),
        stage_settings=sections,
        settings_file=str(settings or "settings"),
    )
    return ExperimentOptions(**values)


def on_your_data(corpus, roots, settings, sections):
    """Whether the command names the user's folders (the thesis's experiment) rather than running the demo;
    `sections` are those of the --settings file `settings` (none without one)."""
    from plumbing.errors import UsageError

    if corpus or any(roots.values()):
        return True
    if settings:
        if not sections.get("roots"):
            raise UsageError(settings, "has no roots section: name your folders there or with their flags")
        return True
    return False


def _write_demo_trees():
    from preprocessing.demo import default_demo_dir
    from study.demo_data import write_all

    print("writing the demo trees (kept when complete) ...", flush=True)
    write_all(default_demo_dir())


def _demo_inits(values, objectives, imagenet):
    """The demo's initialisations: scratch, the pretrained arms (`--objectives`, else the settings'), and (unless
    --inits names them) imagenet where its weights are in Keras's cache."""
    from genesis2d.backbones import BACKBONES
    from transfer.encoders import keras_cache_dir

    inits = list(values["inits"])
    if objectives is not None:
        inits = [init for init in inits if init not in PRETRAINED] + list(objectives)
    if not imagenet or "imagenet" in inits:
        return inits
    missing = [
        keras_cache_dir() / BACKBONES[backbone].imagenet_file
        for backbone in values["backbones"]
        if not (keras_cache_dir() / BACKBONES[backbone].imagenet_file).exists()
    ]
    if not missing:
        inits.append("imagenet")
    else:
        print(
            f"imagenet: skipped. To include it, place {', '.join(p.name for p in missing)} in {missing[0].parent} "
            "(Keras downloads it there on a machine with internet access)."
        )
    return inits


def run(options):
    from study import experiment

    started = time.time()
    steps = experiment.run(options)
    report = Path(options.out) / "report" / "report.md"
    if steps and report.is_file() and not options.cells:
        print("\n".join(line for line in report.read_text().splitlines() if line.startswith("|")))
        print(f"\nstudy finished in {(time.time() - started) / 60:.1f} min; report: {report}")
    return steps


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(
        parse_args,
        run,
        argv,
        interrupted=lambda options: "run the same command again to continue where it stopped.",
        tensorflow=True,
    )


if __name__ == "__main__":
    main()
