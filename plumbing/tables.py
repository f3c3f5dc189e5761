"""A user's CSV file read as pandas reads it, or one line that names the file and what is wrong with it."""

from pathlib import Path

from plumbing.errors import InputError


def read_csv(path, what=None, **kwargs):
    """`pandas.read_csv` of a UTF-8 file (a byte-order mark allowed), or one InputError: missing, empty, not
    UTF-8 or not CSV.

    Args:
        path: the file.
        what: str or None. What the file is, for the message (e.g. "the LUNA16 candidates file").
        kwargs: passed to `pandas.read_csv` (dtype, header, names, ...).
    """
    import pandas as pd

    path = Path(path)
    about = f" ({what})" if what else ""
    if not path.is_file():
        raise InputError(path, f"does not exist{about}")
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(path, f"is empty{about}") from None
    except UnicodeDecodeError as error:
        raise InputError(path, f"is not UTF-8 text (byte {error.start}{'; ' + what if what else ''})") from None
    except pd.errors.ParserError as error:
        first = str(error).splitlines()[0]
        raise InputError(path, f"cannot be read as CSV ({what + ': ' if what else ''}{first})") from None
