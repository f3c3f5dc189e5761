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


@contextlib.contextmanager
def output_lock(folder):
    """Holds `folder/.lock` while the block runs; a second process on the same folder stops with one line.

    A lock left by a process that no longer runs on this machine (killed, crashed) is taken
    over with a line saying so. A lock of another machine (a shared disk) is never taken
    over: the line says which file to remove once that run is known to be over.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
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
