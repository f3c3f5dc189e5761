"""Reading, normalising, sampling, splitting and streaming medical images (thesis Chapter 3).

The lowest layer of the project: `genesis2d` builds on it, `luna16` and `mura` on
`genesis2d`, and `study` on all of them; nothing here imports from above. It also
holds what every layer shares: the user-facing errors (`errors`), the command-line
plumbing (`cli`), atomic writes (`atomic`) and figures (`figures`).
"""

from preprocessing.errors import ImageReadError, InputError, UsageError

__all__ = ["ImageReadError", "InputError", "UsageError"]
