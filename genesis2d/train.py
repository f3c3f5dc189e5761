"""Models Genesis pretraining of a 2D U-Net: `python genesis2d/train.py --backbone resnet50`.

A thin command line over `genesis2d.pretrain`; `--help` lists the options.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

from genesis2d.pretrain import parse_args, run  # noqa: E402
from preprocessing.errors import ImageReadError  # noqa: E402


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except ImageReadError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted: continue with `python genesis2d/train.py --resume --out {args.out}` (and the same options).")


if __name__ == "__main__":
    main()
