"""LUNA16 five-fold cross-validation: `python luna16/cross_validate.py --init imagenet --backbone vgg16`.

A thin command line over `luna16.experiment`; `--help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file from a checkout.

from plumbing.cli import start_tensorflow_quietly

start_tensorflow_quietly()  # Before the imports below load TensorFlow, so its start-up noise stays out of the log.

from luna16.experiment import main  # noqa: E402

if __name__ == "__main__":
    main()
