"""Models Genesis pretraining of a 2D U-Net: `python genesis2d/train.py --backbone resnet50`.

A thin command line over `genesis2d.pretrain`; `--help` lists the options.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

from genesis2d.pretrain import main  # noqa: E402

if __name__ == "__main__":
    main()
