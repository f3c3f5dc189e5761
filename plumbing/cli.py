"""What every command line of the project shares: YAML defaults, option checks, one way to end.

Every `main` goes through `run_command`, so a user mistake ends as one line,
`error: <file or option>: <problem>.`, with exit code 2 for a usage error and 1
for bad data, never a traceback. It lives in the lowest layer so that the
preprocessing commands use it too.
"""

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path

from plumbing.errors import InputError, UsageError
from plumbing.runtime import PRECISIONS


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends what native code writes to stderr (file descriptor 2) to /dev/null meanwhile.

    TensorFlow 2.21 prints oneDNN, CUDA-driver and cuInit lines at import and at its
    first device query, ignoring TF_CPP_MIN_LOG_LEVEL; on a CPU machine they are noise.
    Python's own errors are raised as usual and printed after the block.
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_tensorflow_quietly():
    """Imports TensorFlow and lists its devices without the native start-up noise (TF_LOGS=1 keeps it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("TF_LOGS") == "1" or "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


def default_verbosity():
    """Keras progress: a bar (1) on a terminal, one plain line per epoch (2) when output goes to a file."""
    return 1 if sys.stdout.isatty() else 2


def add_runtime_arguments(parser, seeds="weights, sampling and augmentation", group=None):
    """Adds --precision, --seed, --deterministic and --verbose (to `group` or a new 'runtime' group); returns it.

    Args:
        parser: argparse.ArgumentParser.
        seeds: str. What --seed seeds, for its help.
        group: an argument group of `parser` to add them to. Defaults to a new 'runtime' group.
    """
    group = group or parser.add_argument_group("runtime")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: mixed_bfloat16 on a GPU of compute capability 8.0 or more (A100, H100), mixed_float16 on an "
        "older GPU, float32 on a CPU. Default: auto.",
    )
    group.add_argument("--seed", type=int, default=0, help=f"seeds {seeds}. Default: 0.")
    group.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic ops, so the same --seed gives bit-identical results. Default: on without "
        "a GPU; off on a GPU, where deterministic kernels are slower.",
    )
    group.add_argument(
        "--verbose",
        type=int,
        default=default_verbosity(),
        choices=(0, 1, 2),
        help="Keras progress: 0 none, 1 bar, 2 one line per epoch. Default: 1 on a terminal, 2 when "
        "the output goes to a file.",
    )
    return group


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's notice before it kills a job, `docker stop`), raised where Ctrl-C would be.

    A KeyboardInterrupt, so that every path that stops politely on Ctrl-C (locks released,
    temporary files removed, worker pools ended) runs for it too; `run_command` then exits
    with 143 (128 + 15, as a shell reports a process ended by SIGTERM) instead of 130.
    """


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Meanwhile, SIGTERM raises `Terminated` in the main thread (as SIGINT raises KeyboardInterrupt).

    Outside the main thread (where Python cannot set signal handlers) it changes nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


CONTINUE_LINE = "run the same command again to continue; what it finished is kept."


def run_command(parse_args, run, argv=None, interrupted=None, tensorflow=False):
    """Parses, runs, and turns the project's input errors into one `error: ...` line.

    Ctrl-C and SIGTERM stop the command the same way: what it holds is released (its output
    lock, temporary files), the line of `interrupted` says how to continue, and it exits with
    130 (Ctrl-C) or 143 (SIGTERM).

    Args:
        parse_args: callable(argv) -> namespace. Raises `InputError` (or exits, as argparse does).
        run: callable(namespace) -> result.
        argv: list of str or None (sys.argv).
        interrupted: callable(namespace) -> str, the line printed on Ctrl-C or SIGTERM. Defaults to
            CONTINUE_LINE: every command keeps what it finished and continues when run again.
        tensorflow: bool. Start TensorFlow quietly after parsing (for the training commands).
    """
    args = None
    try:
        with sigterm_as_interrupt():
            args = parse_args(argv)
            if tensorflow:
                start_tensorflow_quietly()
            return run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except OSError as error:  # A read-only folder, a full disk, a file that vanished: the system's words.
        where = error.filename or "output"
        print(f"error: {where}: cannot be written or read ({error.strerror or error}).", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt as stop:
        how = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
        line = (interrupted or (lambda _: CONTINUE_LINE))(args) if args is not None else ""
        print(f"\n{how}{': ' + line if line else ''}", file=sys.stderr)
        raise SystemExit(143 if isinstance(stop, Terminated) else 130) from None


def launch(module, imports_tensorflow=True):
    """Runs `module`'s `main` as a command started from a file of a checkout (`python genesis2d/train.py`).

    The one launcher of the training commands. A module that imports TensorFlow when it is
    imported gets it started quietly first, so its start-up noise stays out of the log; one
    that does not (`imports_tensorflow=False`) parses its arguments first and starts it
    after (`run_command(tensorflow=True)`), so that `--help` and a bad flag answer at once.
    """
    import importlib

    if imports_tensorflow:
        start_tensorflow_quietly()
    return importlib.import_module(module).main()


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, ending a usage error with one line (`error: ...`, exit 2) instead of usage and error."""

    def error(self, message):
        # argparse's "invalid choice: 'x' (choose from 'a', 'b')" in the words every other door uses.
        choice = re.fullmatch(r"(argument \S+: )invalid choice: (.+?) \(choose from (.+)\)", message)
        if choice:
            head, value, choices = choice.groups()
            message = f"{head}must be one of {choices.replace(chr(39), '')}. Received: {value}"
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def check_fraction(name, value, allow_zero=False):
    """`value` as a float in (0, 1], or [0, 1] with `allow_zero`; else a UsageError naming `name`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(name, f"must be a number. Received: {value!r}") from None
    low_ok = number >= 0 if allow_zero else number > 0
    if not (low_ok and number <= 1):
        raise UsageError(name, f"must be in {'[' if allow_zero else '('}0, 1]. Received: {value}")
    return number


def fraction_type(allow_zero=False):
    """An argparse `type` that accepts a share in (0, 1] (or [0, 1])."""

    def parse(text):
        try:
            return check_fraction("value", text, allow_zero)
        except UsageError as error:
            raise argparse.ArgumentTypeError(error.problem) from None

    parse.__name__ = "fraction"
    return parse


def count_type(minimum=0):
    """An argparse `type` that accepts a whole number of at least `minimum` (iterations, candidates, workers)."""

    def parse(text):
        try:
            number = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a whole number. Received: {text!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}. Received: {number}")
        return number

    parse.__name__ = "count"
    return parse


def parse_with_config(parser, argv=None):
    """Parses arguments; a `--config` YAML file sets defaults that flags then override.

    The YAML keys are the long option names, with '-' or '_' (e.g. `batch_size: 16`);
    their values pass the same type and choice checks as the flags.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    return parser.parse_args(argv)


def parse_with_demo_default(parser, argv, demo_config, data_flags):
    """`parse_with_config`, with `demo_config` as the config when none of `data_flags` nor --config is given.

    So a bare command runs on the built-in demo data with settings sized for it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a.split("=")[0] in (*data_flags, "--config") for a in argv):
        argv = ["--config", str(demo_config), *argv]
    return parse_with_config(parser, argv)


def read_yaml(path):
    """A YAML file's content ({} when empty); a file that cannot be read or parsed stops with one line naming it."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(path, f"cannot be read as YAML ({str(error).splitlines()[0]})") from None


def load_config(path, parser):
    """The YAML file's options as {dest: value}, each checked like the flag it stands for."""
    return checked_config(read_yaml(path), parser, Path(path))


def checked_config(config, parser, where):
    """A mapping of option names to values as {dest: value}, each checked like the flag it stands for.

    `where` names its source in errors (a YAML file, or a section of one).
    """
    path = where
    if not isinstance(config, dict):
        raise UsageError(path, "must hold a mapping of option names to values")
    actions = {action.dest: action for action in parser._actions}
    config = {str(key).replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(config) - set(actions) - {"config"})
    if unknown:
        raise UsageError(path, f"unknown options {', '.join(unknown)}")
    return {key: _checked(path, actions[key], value) for key, value in config.items() if key != "config"}


def _checked(path, action, value):
    """A YAML value converted and checked as argparse would check the flag's text."""
    name = action.option_strings[-1] if action.option_strings else action.dest
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise UsageError(path, f"{name}: must be true or false. Received: {value!r}")
        return value
    many = action.nargs not in (None, "?")
    values = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise UsageError(path, f"{name}: takes one value. Received: {value!r}")
    converted = []
    for item in values:
        if action.type is not None:
            try:
                item = action.type(str(item))  # As if typed on the command line.
            except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
                problem = str(error) or "invalid value"
                problem += "" if "Received:" in problem else f". Received: {item!r}"
                raise UsageError(path, f"{name}: {problem}") from None
        if action.choices is not None and item not in action.choices:
            raise UsageError(path, f"{name}: must be one of {', '.join(map(str, action.choices))}. Received: {item!r}")
        converted.append(item)
    return converted if many else converted[0]
