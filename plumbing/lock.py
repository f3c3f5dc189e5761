"""One writer per output folder: an operating-system lock on a file that names its process.

The lock is `fcntl.flock` on `folder/.lock`: the kernel holds it for the process's life and drops it when the process
ends, however it ends, so a lock left by a killed run never needs guessing from process ids. The file's text (the
holder's process id and machine) only names the holder in the refusal line.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from plumbing.errors import UsageError

LOCK_FILE = ".lock"


def _missing_folders(folder):
    """The folders from `folder` up to its first existing ancestor that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _holder(path, held):
    """The `{"pid", "host"}` a lock file names: {} when empty or unreadable. Another process's lock (`held`) is
    written just after it is taken, so its empty file is read again for a moment before it counts as empty."""
    for _ in range(50 if held else 1):
        try:
            text = path.read_text()
        except OSError:
            return {}
        if text:
            try:
                holder = json.loads(text)
            except ValueError:
                return {}
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.01)
    return {}


def _acquire(path, wait=False):
    """A descriptor of `path` holding its exclusive lock, or None when another process holds it (with `wait`, once
    that process lets it go).

    A lock taken on a file that its holder unlinked meanwhile (it was releasing) is no lock: the path then names
    another file, and the lock is taken again on that one."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # Removed meanwhile by a holder that made it and left it empty.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(descriptor)
                return None
            holder = _holder(path, held=True)
            who = f"process {holder['pid']} on {holder.get('host')}" if holder.get("pid") else "another process"
            print(f"waiting for {who} to release {path}", flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # Asleep until the holder releases it or ends.
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)


@contextlib.contextmanager
def output_lock(folder, name=LOCK_FILE, wait=False):
    """Holds `folder/name` while the block runs; a second process on the same folder stops with one line (with
    `wait`, it says whom it waits for and waits).

    Take it before anything in `folder` is read, cleared or written, so that a refused
    second process changes nothing. A lock left by a process that ended (killed, crashed) is
    taken over with a line saying so. A lock file naming another machine (a shared disk, whose
    locks may not reach across machines) is never taken over: the line says which file to
    remove once that run is known to be over. Folders it had to create are removed again when
    the block leaves them empty (a command refused on its inputs leaves no empty --out behind).

    Args:
        folder: str or Path. The output folder.
        name: str. The lock file's name; a command that writes a few named files into a shared
            folder (a manifest beside others) locks those alone with a name of its own.
            Defaults to LOCK_FILE.
        wait: bool. Wait for the holder to release it instead of stopping (a lock file that
            still names another machine once its lock is free stops as above).
    """
    folder = Path(folder)
    created = _missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        try:
            descriptor = _acquire(path, wait)
        except OSError as error:
            raise UsageError(path, f"cannot be created ({error.strerror})") from None
        left = _holder(path, held=descriptor is None)
        if descriptor is None or left.get("host", me["host"]) != me["host"]:
            if descriptor is not None:
                os.close(descriptor)
            raise UsageError(
                folder,
                f"is in use by process {left.get('pid')} on {left.get('host')} (its lock {path}); wait for it to end, "
                "choose another --out, or remove the lock if that run is over",
            )
        try:
            if left.get("pid") not in (None, me["pid"]):
                print(f"note: {path} was left by process {left['pid']}, which no longer runs; taking it over")
            try:
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, json.dumps(me).encode(), 0)
            except OSError as error:
                raise UsageError(path, f"cannot be written ({error.strerror})") from None
            yield path
        finally:
            path.unlink(missing_ok=True)  # While still locked: no other process holds a lock on this file.
            os.close(descriptor)
    finally:
        for made in created:  # Deepest first; one that holds anything stays, and so do those above it.
            try:
                made.rmdir()
            except OSError:
                break
