"""`python -m study`: the experiment on your folders, or on the built-in demo data (see `study.command`).

TensorFlow starts quietly once the arguments are parsed (`plumbing.cli.run_command`), so `--help` and a bad flag
answer at once."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from study.command import main  # noqa: E402

main()
