"""Reading, normalising, sampling, splitting and streaming medical images (thesis Chapter 3)."""

from preprocessing.errors import ImageReadError

__all__ = ["ImageReadError"]
