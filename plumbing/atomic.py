"""Write outputs atomically: to a temporary name in the same folder, then rename.

A run killed half-way through a write leaves the previous file intact (or no
file), never a truncated one that a later step would read as valid.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"  # Names of the files being written; a killed write leaves one behind.


def remove_temporaries(folder):
    """Deletes the temporaries that killed writes left in `folder` (not below it); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.glob(f"{TEMPORARY_PREFIX}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_path(path, keep_equal=False):
    """Yields a temporary path beside `path` with the same suffix; renames it on success.

    The suffix is kept because Keras and matplotlib choose the format from it. With
    `keep_equal`, a file already there with the same bytes is kept as it is (its
    modification time too), so that a rerun which writes what it wrote before changes
    nothing that a build tool, a sync or a reader watching the folder would see.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.remove(tmp)  # Some writers (Keras, h5py) refuse to open an existing file.
    try:
        yield Path(tmp)
        if not (keep_equal and _same_bytes(tmp, path)):
            os.replace(tmp, path)
    except OSError as error:  # A full disk, a read-only folder: name the file the user knows, not the temporary.
        if error.filename and str(error.filename) != str(tmp):
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # Never leave a partial file behind, whatever failed.


def _same_bytes(a, b):
    """Whether files `a` and `b` both exist and hold the same bytes."""
    if not (os.path.isfile(a) and os.path.isfile(b)) or os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as first, open(b, "rb") as second:
        while True:
            block = first.read(1 << 20)
            if block != second.read(1 << 20):
                return False
            if not block:
                return True


def writable_folder(path):
    """Creates `path` if needed and checks that a file can be written in it; returns it.

    For folders that other libraries write into (TensorBoard's `logs/`), whose own errors
    are not the system's: a read-only folder, or a file where the folder should be, then
    fails here as an OSError naming the path, which `run_command` prints as one line.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=path)
    os.close(fd)
    os.remove(probe)
    return path


def write_text(path, text):
    """Writes `text` atomically; a file that already holds it is left untouched."""
    with atomic_path(path, keep_equal=True) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path, frame, **kwargs):
    """Writes a pandas DataFrame as CSV atomically; a file that already holds it is left untouched."""
    with atomic_path(path, keep_equal=True) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)
