"""Write every demo tree: `python -m study.demo_data [--out demo_data]`.

The pretraining corpus (`preprocessing.demo`), the LUNA16 tree (`luna16.demo`) and
the MURA-v1.1 tree (`mura.demo`), each in its real on-disk format, in seconds.
Each is also written on first use by the command that needs it.
"""

from pathlib import Path

from plumbing.cli import ArgumentParser


def write_all(out, seed=0):
    """Writes (or keeps, when complete) the three demo trees under `out`; returns `out`."""
    from luna16.demo import ensure_demo as ensure_luna16
    from mura.demo import ensure_demo as ensure_mura
    from preprocessing.demo import ensure_pretraining_corpus

    ensure_pretraining_corpus(out, seed)
    ensure_luna16(out, seed)
    ensure_mura(out, seed)
    return Path(out)


def parse_args(argv=None):
    from preprocessing.demo import default_demo_dir

    parser = ArgumentParser(prog="python -m study.demo_data", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=str(default_demo_dir()), help="folder to write. Default: demo_data/ in the project."
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed. Default: 0.")
    return parser.parse_args(argv)


def run(args):
    out = write_all(args.out, args.seed)
    print(f"demo data in {out}")
    return out


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
