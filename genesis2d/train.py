"""Models Genesis pretraining of a 2D U-Net: `python genesis2d/train.py --backbone resnet50`.

A thin command line over `genesis2d.pretrain`; `--help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

if __name__ == "__main__":
    from plumbing.cli import launch

    launch("genesis2d.command", imports_tensorflow=False)  # It starts TensorFlow after parsing.
