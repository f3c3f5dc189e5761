"""Fingerprints: what made a kept result, so that it is reused only when the same things would make it again."""

import hashlib
import json
from pathlib import Path

from plumbing.errors import UsageError


def file_sha256(path):
    """The sha256 of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(settings):
    """A short hash of a JSON-able mapping of settings (order of keys does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_with(record_path, settings, overwrite=False):
    """Whether a finished result may be reused: its record holds these same `settings`.

    Returns True to reuse it, False when there is none (or `overwrite` asks to redo it).
    Raises UsageError naming what changed when it was made with other settings: finished
    work is never replaced, nor presented under settings it was not made with, silently.
    """
    record_path = Path(record_path)
    if overwrite or not record_path.is_file():
        return False
    try:
        recorded = json.loads(record_path.read_text()).get("settings")
    except ValueError:
        return False  # A record cut short: the work was not finished.
    settings = json.loads(json.dumps(settings, default=str))  # As it would be written.
    if recorded == settings:
        return True
    recorded = recorded or {}
    changed = [f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}" for key in sorted(set(settings) | set(recorded))
               if recorded.get(key) != settings.get(key)]
    raise UsageError(record_path.parent, f"holds results made with other settings ({'; '.join(changed[:6])}"
                     f"{'; ...' if len(changed) > 6 else ''}); pass --overwrite to redo them or choose another --out")


def files_fingerprint(paths, root):
    """What a set of files holds, cheaply: each one's path relative to `root`, size and modification time.

    Size and time rather than a hash: a dataset's images are many gigabytes, and a changed,
    added, removed or replaced file changes one of the three. Relative paths, so the same
    data in a moved folder still match.
    """
    root = Path(root).resolve()
    entries = []
    for path in sorted(Path(p).resolve() for p in paths):
        stat = path.stat()
        try:
            name = str(path.relative_to(root))
        except ValueError:
            name = str(path)
        entries.append([name, stat.st_size, stat.st_mtime_ns])
    return fingerprint(entries)
