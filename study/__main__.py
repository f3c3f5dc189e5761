"""`python -m study`: the whole study end to end on the built-in demo data (see `study.demo`)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from plumbing.cli import start_tensorflow_quietly

start_tensorflow_quietly()
from study.demo import main  # noqa: E402

main()
