"""Write every demo tree: `python -m study.demo_data [--out demo_data]`.

The pretraining corpus (`preprocessing.demo`), the LUNA16 tree (`luna16.demo`) and
the MURA-v1.1 tree (`mura.demo`), each in its real on-disk format, in seconds.
Each is also written on first use by the command that needs it.
"""

from dataclasses import dataclass, replace
from pathlib import Path

from plumbing.options import Options, build_parser, option


def write_all(out, seed=0):
    """Writes (or keeps, when complete) the three demo trees under `out`; returns `out`."""
    from luna16.demo import ensure_demo as ensure_luna16
    from mura.demo import ensure_demo as ensure_mura
    from preprocessing.demo import ensure_pretraining_corpus

    ensure_pretraining_corpus(out, seed)
    ensure_luna16(out, seed)
    ensure_mura(out, seed)
    return Path(out)


@dataclass(frozen=True)
class DemoDataOptions(Options):
    """What `python -m study.demo_data` takes."""

    out: str = option(None, "folder to write.", default_text="demo_data/ in the project", group="demo")
    seed: int = option(0, "random seed.", type=int, group="demo")


def parse_args(argv=None):
    from preprocessing.demo import default_demo_dir

    parser = build_parser(DemoDataOptions, "python -m study.demo_data", __doc__.split("\n\n")[0], config_flag=False)
    options = DemoDataOptions(**vars(parser.parse_args(argv)))
    return options if options.out else replace(options, out=str(default_demo_dir()))


def run(args):
    out = write_all(args.out, args.seed)
    print(f"demo data in {out}")
    return out


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
