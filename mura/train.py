"""MURA abnormality detection: `python mura/train.py --init genesis --backbone vgg16`.

A thin command line over `mura.experiment`; `--help` lists the options.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

from mura.experiment import main  # noqa: E402

if __name__ == "__main__":
    main()
