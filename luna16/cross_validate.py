"""LUNA16 five-fold cross-validation: `python luna16/cross_validate.py --init imagenet --backbone vgg16`.

A thin command line over `luna16.experiment`; `--help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

if __name__ == "__main__":
    from plumbing.cli import launch

    launch("luna16.experiment", imports_tensorflow=False)  # It starts TensorFlow after parsing.
