"""Fingerprints: what made a kept result, so that it is reused only when the same things would make it again.

A kept result records its settings and its inputs. Inputs are stamped by content, never
by where they lie: each file's path is taken relative to a data root, so a data folder
moved or mounted elsewhere still matches, and a table's paths are made relative before
it is hashed. Two kinds of stamp (`file_stamp`):

- small files (below `HASHED_BELOW_BYTES`: CSVs, manifests, headers) are hashed
  (size and sha256): they are edited in place, and deleting one row of a CSV within
  the same second keeps its modification time;
- large files (images, volumes) are stamped by size and modification time: hashing
  a corpus of CT volumes takes hours, and images are replaced rather than edited,
  which changes one or the other. A folder moved with `mv`, `cp -a` or `rsync -a`
  keeps the times; a plain `cp -r` resets them and reads as changed (the safe side).
"""

import hashlib
import json
import os
from pathlib import Path

from plumbing.errors import UsageError

HASHED_BELOW_BYTES = 64 * 2**20  # This project's choice: any CSV or manifest is below it, a CT volume often above.


def file_sha256(path):
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_stamp(path, root, hashed_below=HASHED_BELOW_BYTES):
    """What identifies one input file's content, wherever its data root lies.

    Args:
        path: str or Path. The file.
        root: str or Path. The data root; the stamp holds the path relative to it (the
            file's name alone when it is not under `root`).
        hashed_below: int. Files smaller than this many bytes are hashed; larger ones are
            stamped by modification time. Defaults to HASHED_BELOW_BYTES (64 MiB).

    Returns:
        dict: `path` (relative, '/'-separated), `bytes`, and `sha256` or `mtime_ns`.

    Example:
    >>> file_stamp("/data/LUNA16/candidates_V2.csv", "/data/LUNA16")  # doctest: +SKIP
    {'path': 'candidates_V2.csv', 'bytes': 5211520, 'sha256': '9a0c...'}
    """
    path, root = Path(path), Path(root)
    stat = path.stat()
    try:
        relative = Path(os.path.relpath(path.absolute(), root.absolute()))
        name = relative.as_posix() if not relative.parts or relative.parts[0] != ".." else path.name
    except ValueError:  # Another drive (Windows).
        name = path.name
    stamp = {"path": name, "bytes": int(stat.st_size)}
    if stat.st_size < hashed_below:
        stamp["sha256"] = file_sha256(path)
    else:
        stamp["mtime_ns"] = int(stat.st_mtime_ns)
    return stamp


def files_stamp(paths, root, hashed_below=HASHED_BELOW_BYTES):
    """`file_stamp` of each file, sorted by relative path: a JSON-able list to record and compare."""
    return sorted((file_stamp(p, root, hashed_below) for p in paths), key=lambda stamp: stamp["path"])


def stamp_changes(recorded, current, limit=3):
    """What differs between two `files_stamp` lists, in words (empty when they match).

    Returns:
        list of str, e.g. ['valid_image_paths.csv changed (9,120 -> 8,304 bytes)', 'added subset1/a.mhd'],
        at most `limit` named and then a count of the rest.
    """
    before = {stamp["path"]: stamp for stamp in recorded or []}
    after = {stamp["path"]: stamp for stamp in current or []}
    changes = [f"removed {name}" for name in sorted(set(before) - set(after))]
    changes += [f"added {name}" for name in sorted(set(after) - set(before))]
    for name in sorted(set(before) & set(after)):
        old, new = before[name], after[name]
        if old != new:
            size = (
                f"{old['bytes']:,} -> {new['bytes']:,} bytes"
                if old["bytes"] != new["bytes"]
                else "same size, other content"
            )
            changes.append(f"{name} changed ({size})")
    if len(changes) > limit:
        changes = changes[:limit] + [f"{len(changes) - limit} more"]
    return changes


def common_root(paths):
    """The deepest folder holding every path's folder ('' for no paths)."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in {str(p) for p in paths}}  # Far fewer than paths.
    return os.path.commonpath(sorted(folders)) if folders else ""


def _relative(path, base):
    """`path` relative to the folder `base`, '/'-separated (a plain prefix cut when it lies under it: fast)."""
    prefix = base.rstrip(os.sep) + os.sep
    if (
        os.path.isabs(path)
        and path.startswith(prefix)
        and os.sep + ".." not in path
        and os.sep + "." + os.sep not in path
    ):
        return path[len(prefix) :].replace(os.sep, "/")
    return os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/")


def rows_hash(frame, path_columns=("path",), root=None):
    """A content hash of a table's rows, invariant to where its data lies and to row order.

    The `path_columns` are made relative to `root` (by default the folder common to all
    their paths) before hashing, and rows are sorted, so the same rows over a moved data
    folder hash the same, and any added, removed or changed row changes the hash.

    Args:
        frame: pandas.DataFrame.
        path_columns: names of the columns holding file paths. Defaults to ('path',).
        root: str or Path, or None for the common folder of the paths.

    Returns:
        str: 16 hex digits.
    """
    import pandas as pd

    frame = frame.copy()
    columns = [c for c in path_columns if c in frame.columns]
    if columns and len(frame):
        base = os.path.abspath(str(root)) if root is not None else common_root(frame[columns].to_numpy().ravel())
        for column in columns:
            unique = frame[column].astype(str).unique()  # A volume's path repeats for each of its slices.
            relative = {p: _relative(p, base) for p in unique}
            frame[column] = frame[column].astype(str).map(relative)
    names = sorted(frame.columns)
    lines = pd.Series("", index=frame.index, dtype=object)
    for name in names:  # One line per row, fields joined by a unit separator no path or id holds.
        lines = lines + "\x1f" + frame[name].astype(str)
    text = "\x1e".join(names) + "\n" + "\n".join(sorted(lines.tolist()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(settings):
    """A short hash of a JSON-able mapping of settings (order of keys does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_with(record_path, settings, overwrite=False, inputs=None):
    """Whether a finished result may be reused: its record holds these same `settings` (and `inputs`).

    Args:
        record_path: the JSON record of the finished result; its `settings` (and, when
            `inputs` is given, its `inputs`: a `files_stamp` list) are compared.
        settings: JSON-able mapping.
        overwrite: bool. Redo it whatever the record says.
        inputs: optional `files_stamp` list of the files the result is made from.

    Returns True to reuse it, False when there is none (or `overwrite` asks to redo it).
    Raises UsageError naming what changed when it was made with other settings or from
    other inputs: finished work is never replaced, nor presented under settings or data
    it was not made with, silently.
    """
    record_path = Path(record_path)
    if overwrite or not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return False  # A record cut short: the work was not finished.
    recorded = record.get("settings")
    settings = json.loads(json.dumps(settings, default=str))  # As it would be written.
    recorded = recorded or {}
    changed = [
        f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}"
        for key in sorted(set(settings) | set(recorded))
        if recorded.get(key) != settings.get(key)
    ]
    if inputs is not None:
        if "inputs" not in record:
            changed.append("its inputs were not recorded")
        else:
            changed += stamp_changes(record["inputs"], json.loads(json.dumps(inputs, default=str)))
    if not changed:
        return True
    raise UsageError(
        record_path.parent,
        f"holds results made with other settings or inputs ({'; '.join(changed[:6])}"
        f"{'; ...' if len(changed) > 6 else ''}); pass --overwrite to redo them or choose another --out",
    )


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
