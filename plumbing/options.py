"""One way to declare a command's options: dataclass fields that are also command-line options.

A command's settings are a frozen dataclass whose fields are built with `option` (or
`runtime` for --precision, --seed, --deterministic and --verbose, declared once in
`plumbing.cli`, or `derived` for what no flag sets). From those fields:

- `build_parser` builds the argparse parser: each default, its help and its source are
  written once, in the field;
- `parse_options` reads argv (with a YAML `--config` read by the same code) into the
  dataclass; `from_config` does it for programs from a YAML file and typed values, no argv;
- `reuse_settings` gives the settings that decide whether a kept result may be reused: every
  field unless it says it cannot change what is computed (`reuse=False`).

Every command of the project declares its options this way (pretraining, the corpus
commands, LUNA16 extraction, the downstream tasks).
"""

import argparse
import dataclasses
from dataclasses import field, fields

from plumbing.cli import ArgumentParser, add_runtime_arguments, parse_with_config, parse_with_demo_default


def option(
    default,
    help,
    *,
    source=None,
    reuse=True,
    flag=None,
    group="options",
    default_text=None,
    required=False,
    **argparse_kwargs,
):
    """A dataclass field that is also a command-line option.

    Args:
        default: the default, shown in --help with its `source`.
        help: what the option does, without its default.
        source: where the default comes from: a thesis section or figure, the public Models
            Genesis code, or "this project's choice: <reason>". None for a plain setting.
        reuse: False when the option cannot change what is computed (output folder, progress,
            workers); such options are left out of `reuse_settings`.
        flag: the option string(s); default `--<name with dashes>`.
        group: the --help group.
        default_text: what --help says the default is, where the field's default (None) is
            filled later (e.g. from a schedule table).
        required: the command stops with one line when neither the command line nor the
            --config file gives it (`check_required`).
        argparse_kwargs: type, choices, nargs, action, metavar, as argparse takes them.
    """
    metadata = {
        "help": help,
        "source": source,
        "reuse": reuse,
        "flag": flag,
        "group": group,
        "default_text": default_text,
        "required": required,
        "argparse": argparse_kwargs,
    }
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _runtime_defaults():
    parser = argparse.ArgumentParser()
    return {action.dest: action.default for action in add_runtime_arguments(parser)._group_actions}


RUNTIME_DEFAULTS = _runtime_defaults()


def runtime(name, reuse=True, group="run"):
    """A field for one of `plumbing.cli.add_runtime_arguments`'s options, its default read from there."""
    return field(default=RUNTIME_DEFAULTS[name], metadata={"runtime": True, "reuse": reuse, "group": group})


def derived(default=None):
    """A field that no flag sets: filled when the options are resolved (e.g. an input file's checksum), or given by
    the caller (a mapping, each instance its own copy)."""
    metadata = {"derived": True, "reuse": True}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def field_default(item):
    """The default of a dataclass field (calling its factory)."""
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def flags_of(item):
    """The option strings of a field."""
    flags = item.metadata.get("flag") or (f"--{item.name.replace('_', '-')}",)
    return (flags,) if isinstance(flags, str) else tuple(flags)


def default_text(item):
    """What --help says a field's default is (with its source), or None."""
    default, meta = field_default(item), item.metadata
    if meta.get("default_text"):
        return meta["default_text"]
    if default is None:
        return None
    if isinstance(default, bool):
        text = "on" if default else "off"
    elif isinstance(default, list):
        text = " ".join(map(str, default))
    else:
        text = f"{default:,}" if isinstance(default, int) and default >= 10_000 else str(default)
    return f"{text} ({meta['source']})" if meta.get("source") else text


def build_parser(
    options_class, prog, description, epilog=None, seeds="weights, sampling and augmentation", config_flag=True
):
    """An argparse parser whose options are the fields of `options_class`, grouped, with their defaults' sources.

    Args:
        options_class: a dataclass whose fields are `option`, `runtime` or `derived` fields.
        prog, description, epilog: as argparse takes them.
        seeds: what --seed seeds, for its help (when the class has runtime fields).
        config_flag: whether the command takes --config (a YAML file of its option values).
    """
    parser = ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if config_flag:
        parser.add_argument("--config", help="YAML file of option defaults (keys are option names); flags override it.")
    groups, runtime_added = {}, False
    for item in fields(options_class):
        meta = item.metadata
        if meta.get("derived"):
            continue
        group = meta["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        if meta.get("runtime"):
            if not runtime_added:
                add_runtime_arguments(parser, seeds=seeds, group=groups[group])
                runtime_added = True
            continue
        text, shown = meta["help"], default_text(item)
        if shown and "Default:" not in text:
            text = f"{text} Default: {shown}.".strip()
        elif meta.get("required") and "Default:" not in text:
            text = f"{text} Required."
        flags = flags_of(item)
        named = {"dest": item.name} if flags[0].startswith("-") else {}  # A positional's dest is its flag.
        groups[group].add_argument(*flags, **named, default=field_default(item), help=text, **meta["argparse"])
    return parser


def _checked_value(item, value):
    """One value of a field, checked by the field's argparse `type` and `choices`; a UsageError naming its flag."""
    from plumbing.errors import UsageError

    meta = item.metadata["argparse"]
    flag, kind = flags_of(item)[0], meta.get("type")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise UsageError(flag, f"must be {'a whole number' if kind is int else 'a number'}. Received: {value!r}")
    elif callable(kind) and kind is not str:  # A checking type (count, fraction, image side) reads the text.
        try:
            kind(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            raise UsageError(flag, str(error)) from None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UsageError(flag, f"must be one of {', '.join(map(str, choices))}. Received: {value!r}")


def check_fields(options):
    """`options` with every option field's value checked as its flag is: by the field's `type` (a whole number, a
    number, a count of at least a minimum, a fraction, an image side) and its `choices`, each item of a list.

    Called by each options class when it is built (`Options.__post_init__`), so a flag, a --config or settings file,
    a library call and a stage the study builds meet the same one-line UsageError. None means not set here (a
    default filled later) and is not checked.
    """
    for item in fields(options):
        if item.metadata.get("runtime") or item.metadata.get("derived") or "argparse" not in item.metadata:
            continue
        value = getattr(options, item.name)
        if value is None:
            continue
        many = item.metadata["argparse"].get("nargs") not in (None, "?")
        for one in value if many and isinstance(value, (list, tuple)) else [value]:
            _checked_value(item, one)
    return options


class Options:
    """The base of every command's options dataclass: its fields are checked when it is built (`check_fields`).

    A subclass with a `__post_init__` of its own fills what it derives there and then calls this one."""

    def __post_init__(self):
        check_fields(self)


def check_required(options):
    """A UsageError naming the first required option that nothing gave."""
    from plumbing.errors import UsageError

    for item in fields(options):
        if item.metadata.get("required") and getattr(options, item.name) is None:
            raise UsageError(flags_of(item)[0], "is required")
    return options


def parse_options(options_class, parser, argv, demo_config=None, data_flags=()):
    """The options of `argv` as an `options_class`.

    With a `demo_config`, that YAML file is the config when neither a data flag nor --config
    is given (a bare command runs on the built-in demo data).
    """
    if demo_config is None:
        namespace = parse_with_config(parser, argv)
    else:
        namespace = parse_with_demo_default(parser, argv, demo_config, data_flags)
    values = {key: value for key, value in vars(namespace).items() if key != "config"}
    return check_required(options_class(**values))


def from_config(options_class, parser, config=None, where="settings", **values):
    """An `options_class` from a YAML config file or mapping (checked as the command line checks it), then typed
    `values`; `where` names a mapping's source in its errors.

    For callers that are programs rather than people (the study, one stage calling another):
    no argv list crosses a stage.
    """
    if isinstance(config, dict):  # A section of a larger YAML file, already read: checked as a file would be.
        from plumbing.cli import checked_config

        parser.set_defaults(**checked_config(config, parser, where))
        config = None
    argv = ["--config", str(config)] if config else []
    namespace = parse_with_config(parser, argv)
    base = {key: value for key, value in vars(namespace).items() if key != "config"}
    return check_required(options_class(**{**base, **values}))


def reuse_settings(options):
    """Every setting that can change what is computed, read off the dataclass's fields.

    Paths are left out (a moved folder still matches); what they hold is in through the
    checksums and the data's fingerprint.
    """
    return {item.name: getattr(options, item.name) for item in fields(options) if item.metadata.get("reuse", True)}
