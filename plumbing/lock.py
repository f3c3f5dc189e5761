"""One writer per output folder: a lock file that names its process, taken over when that process is gone."""

import contextlib
import json
import os
import socket
from pathlib import Path

from plumbing.errors import UsageError

LOCK_FILE = ".lock"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process: alive.
        return True
    return True


def _missing_folders(folder):
    """The folders from `folder` up to its first existing ancestor that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def output_lock(folder, name=LOCK_FILE):
    """Holds `folder/name` while the block runs; a second process on the same folder stops with one line.

    Take it before anything in `folder` is read, cleared or written, so that a refused
    second process changes nothing. A lock left by a process that no longer runs on this
    machine (killed, crashed) is taken over with a line saying so. A lock of another machine
    (a shared disk) is never taken over: the line says which file to remove once that run is
    known to be over. Folders it had to create are removed again when the block leaves them
    empty (a command refused on its inputs leaves no empty --out behind).

    Args:
        folder: str or Path. The output folder.
        name: str. The lock file's name; a command that writes a few named files into a shared
            folder (a manifest beside others) locks those alone with a name of its own.
            Defaults to LOCK_FILE.
    """
    folder = Path(folder)
    created = _missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        for _ in range(2):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(path.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and pid != me["pid"] and not _alive(pid):
                    print(f"note: {path} was left by process {pid}, which no longer runs; taking it over")
                    path.unlink(missing_ok=True)
                    continue
                raise UsageError(
                    folder,
                    f"is in use by process {pid} on {host} (its lock {path}); wait for it to end, "
                    "choose another --out, or remove the lock if that run is over",
                ) from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            break
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
    finally:
        for made in created:  # Deepest first; one that holds anything stays, and so do those above it.
            try:
                made.rmdir()
            except OSError:
                break
