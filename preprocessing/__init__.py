"""Reading, normalising, sampling, splitting and streaming medical images (thesis Chapter 3).

Built on `plumbing` alone; `genesis2d`, `transfer`, `luna16`, `mura` and `study`
build on it, and nothing here imports from above.
"""

from plumbing.errors import ImageReadError, InputError, UsageError

__all__ = ["ImageReadError", "InputError", "UsageError"]
