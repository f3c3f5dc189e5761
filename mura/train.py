"""MURA abnormality detection: `python mura/train.py --init genesis --backbone vgg16`.

A thin command line over `mura.experiment`; `--help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

if __name__ == "__main__":
    from plumbing.cli import launch

    launch("mura.experiment", imports_tensorflow=False)  # It starts TensorFlow after parsing.
