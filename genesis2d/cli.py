"""Command-line helpers shared by the training scripts: YAML defaults and the run record."""

import argparse
import sys
from pathlib import Path

import yaml

from preprocessing.atomic import write_json


def parse_with_config(parser, argv=None):
    """Parses arguments; a `--config` YAML file sets defaults that flags then override.

    The YAML keys are the long option names, with '-' or '_' (e.g. `batch_size: 16`).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        config = load_config(known.config, parser)
        parser.set_defaults(**config)
    return parser.parse_args(argv)


def parse_with_demo_default(parser, argv, demo_config, data_flags):
    """`parse_with_config`, with `demo_config` as the config when none of `data_flags` nor --config is given.

    So a bare command runs on the built-in demo data with settings sized for it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.split("=")[0] in (*data_flags, "--config") for a in argv):
        argv = ["--config", str(demo_config), *argv]
    return parse_with_config(parser, argv)


def load_config(path, parser):
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        sys.exit(f"error: {path}: cannot be read as YAML ({error}).")
    if not isinstance(config, dict):
        sys.exit(f"error: {path}: must hold a mapping of option names to values.")
    known = {action.dest for action in parser._actions}
    config = {str(key).replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(config) - known)
    if unknown:
        sys.exit(f"error: {path}: unknown options {', '.join(unknown)}.")
    return config


def write_run_record(out, args, extra=None):
    """Writes run.json beside a run's outputs: resolved arguments, seed, library versions."""
    from genesis2d.runtime import versions

    record = {"args": vars(args), "command": " ".join(sys.argv), "versions": versions()}
    record.update(extra or {})
    write_json(Path(out) / "run.json", record)
    return record


def run_command(parse_args, run, argv=None):
    """Parses, runs, and turns the project's input errors into one `error: ...` line and exit 1."""
    from genesis2d.transfer import InitError
    from preprocessing.errors import ImageReadError

    args = parse_args(argv)
    try:
        return run(args)
    except (ImageReadError, InitError) as error:
        sys.exit(f"error: {error}")
