"""The LUNA16 tree as distributed, patch extraction per subset, folds and class balance.

    python -m luna16.data --data LUNA16_DIR --out PATCH_DIR

reads `subset0`..`subset9/*.mhd`, `candidates_V2.csv` (and `annotations.csv` for
the FROC) and writes, per subset, the candidates' three views and the augmented
copies of its positives. Each scan is read once; finished subsets are skipped
when the command is run again.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luna16.patches import extract_scan
from plumbing.atomic import TEMPORARY_PREFIX, atomic_path, write_csv, write_json
from plumbing.errors import ImageReadError, InputError, UsageError
from plumbing.options import Options, build_parser, option, parse_options
from plumbing.tables import read_csv
from preprocessing.readers import OutsideRootError, read_image
from preprocessing.split import hold_out_groups

DATA = "data"  # The --help group of the data options.

SUBSETS = tuple(range(10))
FOLD_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))  # Test subsets of the five folds (thesis 4.2.1.7).
CANDIDATE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class"]


def _stderr(line):
    print(line, file=sys.stderr)


_V1_NOTED = set()  # The V1 file's note is said once a process.


def read_candidates(data_dir, warn=_stderr):
    """The candidates file as a DataFrame of CANDIDATE_COLUMNS, checked.

    Seriesuids are stripped of surrounding spaces (a trailing space would otherwise drop
    every candidate of its scan), with a warning counting them; `class` must be 0 or 1;
    rows repeating an earlier one exactly are dropped and counted, while one location
    given both classes is refused. Non-numeric coordinates or classes are refused.
    """
    path = candidates_path(data_dir)
    if path.name != "candidates_V2.csv" and path not in _V1_NOTED:
        _V1_NOTED.add(path)
        warn(
            f"note: {path}: reading LUNA16's first candidates file, as no candidates_V2.csv is beside it; the "
            "thesis used candidates_V2.csv (754,975 candidates, 1,557 of them nodules), so counts and FROC "
            "differ from its"
        )
    frame = read_csv(path, "the LUNA16 candidates file", dtype=str)
    missing = set(CANDIDATE_COLUMNS) - set(frame.columns)
    if missing:
        raise InputError(path, f"lacks columns {sorted(missing)}")
    if frame.empty:
        raise InputError(path, "holds no candidates (header only)")
    uids = frame["seriesuid"].fillna("")
    stripped = uids.str.strip()
    if (stripped == "").any():
        raise InputError(
            path,
            f"has {int((stripped == '').sum())} rows without a seriesuid (first: line "
            f"{int(np.flatnonzero(stripped == '')[0]) + 2})",
        )
    if (stripped != uids).any():
        warn(
            f"warning: {path}: {int((stripped != uids).sum())} seriesuids had spaces around them (first: line "
            f"{int(np.flatnonzero(stripped != uids)[0]) + 2}); stripped."
        )
    frame["seriesuid"] = stripped
    numeric = ["coordX", "coordY", "coordZ", "class"]
    written = frame["class"].copy()
    converted = frame[numeric].apply(pd.to_numeric, errors="coerce")
    bad = (converted.isna() & frame[numeric].notna()).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            path,
            f"has {int(bad.sum())} rows with non-numeric coordinates or class (first: line "
            f"{row + 2}, {frame.loc[row, numeric].tolist()})",
        )
    frame[numeric] = converted
    labels = frame["class"]
    not_binary = ~labels.isin([0, 1])
    if not_binary.any():
        row = int(np.flatnonzero(not_binary)[0])
        raise InputError(
            path,
            f"has {int(not_binary.sum())} rows whose class is not 0 or 1 (first: line {row + 2}, "
            f"class {written.iloc[row]})",
        )
    frame["class"] = labels.astype(int)
    frame = frame[CANDIDATE_COLUMNS]
    location = ["seriesuid", "coordX", "coordY", "coordZ"]
    distinct = frame.drop_duplicates()
    conflicting = distinct[distinct.duplicated(location, keep=False)]
    if len(conflicting):
        first = conflicting.iloc[0]
        raise InputError(
            path,
            f"gives {len(conflicting.drop_duplicates(location))} locations both classes (first: "
            f"{first['seriesuid']} at {first['coordX']}, {first['coordY']}, {first['coordZ']})",
        )
    repeated = frame.duplicated()
    if repeated.any():
        warn(
            f"warning: {path}: {int(repeated.sum())} rows repeat an earlier row exactly (first: line "
            f"{int(np.flatnonzero(repeated)[0]) + 2}); dropped."
        )
        frame = frame[~repeated].reset_index(drop=True)
    return frame


def input_fingerprint(candidates_path, scans):
    """What a subset's patches were made from: the candidates file and the scans (names, sizes, times).

    A changed, added or removed file changes it, so a cache of other data is never reused.
    """
    from plumbing.fingerprint import fingerprint

    def stamp(path):
        stat = Path(path).stat()
        return [Path(path).name, stat.st_size, stat.st_mtime_ns]

    files = [stamp(candidates_path)]
    for path in scans.values():
        files.append(stamp(path))
        raw = Path(path).with_suffix(".raw")
        if raw.exists():
            files.append(stamp(raw))
    return fingerprint(files)


def scans_by_subset(data_dir, allow_outside_root=False):
    """{subset: {seriesuid: path to .mhd}} for the subsets present.

    A scan that a symlink takes outside `data_dir`, or whose header names a data file
    outside its folder, is refused (one line) unless allowed.
    """
    from preprocessing.readers import check_data_files

    found = {}
    root = Path(data_dir).resolve()
    for subset in SUBSETS:
        folder = Path(data_dir) / f"subset{subset}"
        if folder.is_dir():
            found[subset] = {p.stem: p for p in sorted(folder.glob("*.mhd"))}
            for path in found[subset].values():
                if not allow_outside_root and not path.resolve().is_relative_to(root):
                    raise InputError(
                        path,
                        f"leads outside the LUNA16 folder {root} (to {path.resolve()}); pass "
                        "--allow-outside-root to read it anyway",
                    )
                check_data_files(path, allow_outside_root)
    if not found:
        raise InputError(data_dir, "holds no subset0..subset9 folders of .mhd scans")
    return found


def candidates_path(data_dir):
    path = Path(data_dir) / "candidates_V2.csv"
    return (
        path
        if path.is_file() or not (Path(data_dir) / "candidates.csv").is_file()
        else Path(data_dir) / "candidates.csv"
    )


def inside_scan(volume, meta, xyz):
    """Which candidates have finite world coordinates that fall inside the scan's voxel grid."""
    from luna16.patches import world_to_voxel

    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    finite = np.isfinite(xyz).all(axis=1)
    zyx = world_to_voxel(np.where(finite[:, None], xyz, 0.0), meta["origin"], meta["spacing"], meta.get("direction"))
    within = ((zyx >= -0.5) & (zyx <= np.asarray(volume.shape) - 0.5)).all(axis=1)
    return finite & within


def extract_subsets(data_dir, out_dir, *args, **kwargs):
    """`_extract_subsets` holding `out_dir`'s lock, taken before any record in it is read.

    The patch folder is shared by runs: a second process extracting into it at the same
    time stops with one line, changing nothing.
    """
    from plumbing.lock import output_lock

    with output_lock(out_dir):
        return _extract_subsets(data_dir, out_dir, *args, **kwargs)


def _extract_subsets(
    data_dir,
    out_dir,
    size=64,
    pixel_mm=None,
    method="planes",
    positive_copies=8,
    seed=0,
    progress=True,
    workers=1,
    allow_outside_root=False,
):
    """Extracts every subset not yet done with these inputs and settings; returns {subset: number of candidates}.

    A subset's cache is reused only when its record names the same settings and the same
    input files (candidates file and scans: names, sizes, modification times) and no scan
    failed; otherwise it is extracted again. Candidates with non-finite coordinates or
    outside their scan are dropped, one warning per scan, and counted in the record.

    Scans are extracted by `workers` processes (each reads one scan at a time) and
    written to disk as they come, in scan order, so the memory held is a few scans'
    patches whatever the subset's size, and the files are the same for any number of
    workers (each scan's random numbers come from (seed, subset, scan index)). A scan whose
    header names data outside its folder stops the extraction (unless `allow_outside_root`),
    where a damaged scan is only skipped.
    """
    out_dir = Path(out_dir)
    candidates = read_candidates(data_dir)
    by_series = {uid: rows for uid, rows in candidates.groupby("seriesuid", sort=False)}
    settings = {"size": size, "pixel_mm": pixel_mm, "method": method, "positive_copies": positive_copies, "seed": seed}
    counts = {}
    pool = None
    try:
        for subset, scans in scans_by_subset(data_dir, allow_outside_root).items():
            folder = out_dir / f"subset{subset}"
            done = folder / "done.json"
            inputs = input_fingerprint(candidates_path(data_dir), scans)
            kept = _kept_subset(done, settings, inputs)
            if kept is not None:
                counts[subset] = kept
                continue
            jobs = [
                (
                    path,
                    by_series[uid][["coordX", "coordY", "coordZ", "class"]].to_numpy(float),
                    size,
                    pixel_mm,
                    method,
                    positive_copies,
                    [seed, subset, index],
                    allow_outside_root,
                )
                for index, (uid, path) in enumerate(scans.items())
                if uid in by_series
            ]
            if workers > 1 and len(jobs) > 1 and pool is None:
                import multiprocessing

                # spawn, not fork: the caller may hold TensorFlow's threads.
                pool = multiprocessing.get_context("spawn").Pool(workers)
            results = (
                pool.imap(_extract_scan_job, jobs)
                if pool is not None and len(jobs) > 1
                else map(_extract_scan_job, jobs)
            )
            label = f"subset{subset}" if progress else None
            table, aug_rows, skipped, dropped = _write_scans(folder, size, jobs, results, by_series, label)
            if table.empty:
                print(
                    f"warning: {folder}: no patches: none of the {len(scans)} scans of subset{subset} gave any "
                    f"({len(jobs)} have candidates, {len(skipped)} could not be read).",
                    file=sys.stderr,
                )
            record = {"settings": settings, "inputs": inputs, "candidates": len(table), "skipped_scans": skipped}
            _write_subset_tables(folder, table, aug_rows, {**record, "dropped_candidates": dropped})
            counts[subset] = len(table)
    finally:
        if pool is not None:
            pool.terminate()
    return counts


def _kept_subset(done, settings, inputs):
    """The candidates of a subset extracted earlier with these settings and inputs and no failed scan, or None; a
    stale or incomplete record is removed, so that the subset is extracted again rather than trusted."""
    if not done.exists():
        return None
    record = json.loads(done.read_text())
    if record.get("settings") == settings and record.get("inputs") == inputs and not record.get("skipped_scans"):
        return record["candidates"]
    done.unlink()
    return None


def _write_subset_tables(folder, table, aug_rows, record):
    """A subset's candidate table, its augmented rows and, last, its `done.json` record."""
    from plumbing.fingerprint import fingerprint

    write_csv(folder / "candidates.csv", table)
    augmented = np.concatenate(aug_rows) if aug_rows else np.empty(0, np.int64)
    write_csv(folder / "augmented.csv", pd.DataFrame({"candidate": augmented}))
    record["fingerprint"] = fingerprint([record["settings"], record["inputs"]])
    write_json(folder / "done.json", record)


def _write_scans(folder, size, jobs, results, by_series, progress_label):
    """Streams each scan's patches (in scan order) into the subset folder's .npy files as they come from `results`.

    Returns (the candidates kept, each scan's augmented-row indices, the scans skipped, the candidates dropped).
    A scan whose data lies outside its folder stops (InputError); a damaged one is skipped with a warning.
    """
    from tqdm import tqdm

    rows, aug_rows, skipped, dropped, written = [], [], [], 0, 0
    with (
        _NpyStream(folder / "patches.npy", (3, size, size)) as patches,
        _NpyStream(folder / "augmented.npy", (3, size, size)) as augmented,
    ):
        for job, found in tqdm(
            zip(jobs, results), total=len(jobs), desc=progress_label, unit="scan", disable=progress_label is None
        ):
            path, uid = job[0], Path(job[0]).stem
            if isinstance(found, OutsideRoot):
                raise InputError(path, found.problem)
            if isinstance(found, str):
                print(f"warning: {found} Its {len(job[1])} candidates are skipped.", file=sys.stderr)
                skipped.append(str(path))
                continue
            keep, scan_patches, scan_aug, scan_aug_rows = found
            scan_rows = by_series[uid]
            if not keep.all():
                _warn_dropped(path, keep)
                dropped += int((~keep).sum())
                scan_rows = scan_rows[keep]
            patches.write(scan_patches)
            augmented.write(scan_aug)
            aug_rows.append(scan_aug_rows + written)
            written += len(scan_rows)
            rows.append(scan_rows)
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return table, aug_rows, skipped, dropped


def _warn_dropped(path, keep):
    """One line for a scan whose candidates (`keep` False) lie outside it or have no coordinates."""
    if not keep.any():
        print(
            f"warning: {path}: none of its {len(keep)} candidates lies inside the scan or has "
            "coordinates; it gives no patches.",
            file=sys.stderr,
        )
    else:
        print(
            f"warning: {path}: {int((~keep).sum())} of its {len(keep)} candidates lie outside the "
            "scan or have no coordinates; dropped.",
            file=sys.stderr,
        )


class OutsideRoot(str):
    """A scan job's answer when its header names data outside its folder: the problem, as text."""

    @property
    def problem(self):
        return str(self)


def _extract_scan_job(job):
    """One scan's (inside mask, patches, augmented copies, their rows), or the read error's sentence."""
    path, values, size, pixel_mm, method, positive_copies, rng, allow_outside_root = job
    try:
        volume, meta = read_image(path, allow_outside_root=allow_outside_root)
    except OutsideRootError as error:  # Refused, not skipped: passed back as text (it crosses processes).
        return OutsideRoot(error.problem)
    except ImageReadError as error:
        return str(error)
    keep = inside_scan(volume, meta, values[:, :3])
    return (keep, *extract_scan(volume, meta, values[keep], size, pixel_mm, method, positive_copies, rng=rng))


class _NpyStream:
    """A float16 .npy file of (N, *item_shape) written in pieces of unknown total N, then moved in place atomically.

    The pieces go to a raw file beside it; on a clean exit the header (now that N is known) and the
    pieces are copied into the .npy, so no more than one piece is ever held in memory.
    """

    def __init__(self, path, item_shape):
        self.path, self.item_shape, self.count = Path(path), tuple(item_shape), 0

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.raw_path = self.path.with_name(f"{TEMPORARY_PREFIX}{self.path.name}.pieces")
        self.raw = open(self.raw_path, "wb")
        return self

    def write(self, array):
        array = np.ascontiguousarray(array, dtype=np.float16)
        if array.shape[1:] != self.item_shape:
            raise ValueError(f"pieces must be (n, {self.item_shape}). Received: shape={array.shape}")
        self.raw.write(array.tobytes())
        self.count += len(array)

    def __exit__(self, kind, value, traceback):
        import shutil

        self.raw.close()
        try:
            if kind is None:
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                    "fortran_order": False,
                    "shape": (self.count, *self.item_shape),
                }
                with atomic_path(self.path) as tmp, open(tmp, "wb") as out, open(self.raw_path, "rb") as pieces:
                    np.lib.format.write_array_header_1_0(out, header)
                    shutil.copyfileobj(pieces, out, 16 * 2**20)
        finally:
            self.raw_path.unlink(missing_ok=True)
        return False


class Subset:
    """One extracted subset, memory-mapped: `patches` (N, 3, S, S) and `candidates` rows."""

    def __init__(self, folder):
        folder = Path(folder)
        if not (folder / "done.json").exists():
            raise InputError(folder, "is not an extracted subset (run `python -m luna16.data` first)")
        self.record = json.loads((folder / "done.json").read_text())
        self.candidates = pd.read_csv(folder / "candidates.csv", dtype={"seriesuid": str})
        self.patches = np.load(folder / "patches.npy", mmap_mode="r")
        self.augmented = np.load(folder / "augmented.npy", mmap_mode="r")
        self.augmented_rows = pd.read_csv(folder / "augmented.csv")["candidate"].to_numpy(int)


def keep_negatives(labels, fraction, rng):
    """Indices of the candidates kept for training: every positive and `fraction` of the negatives.

    The number of negatives kept is round(fraction * negatives), at least one when any exist
    (thesis 4.2.1.3: 10% per subset).
    """
    labels = np.asarray(labels)
    negatives = np.flatnonzero(labels == 0)
    count = min(len(negatives), max(1, int(round(fraction * len(negatives))))) if len(negatives) else 0
    chosen = rng.choice(negatives, size=count, replace=False) if count else np.empty(0, int)
    return np.sort(np.concatenate([np.flatnonzero(labels == 1), chosen]))


def fold_subsets(test_pair):
    """(training subsets, test subsets) of the fold whose test subsets are `test_pair`."""
    test = tuple(test_pair)
    return tuple(s for s in SUBSETS if s not in test), test


def validation_series(subsets, fraction, rng):
    """Series held out from the training subsets for validation (whole series, never split; at least one)."""
    return hold_out_groups(
        {uid for subset in subsets for uid in subset.candidates["seriesuid"]}, fraction, rng, minimum=1
    )


def training_arrays(subsets, held_out, negative_fraction, rng, use_augmented=True, with_series=False):
    """(images (n, S, S, 1) float16, labels) of the training part: views as samples.

    Training subsets lose 90% of their negatives (seeded, per subset) and gain the augmented
    copies of their positives; `held_out` series are left for validation. With
    `with_series`, each sample's seriesuid too (its scan: the unit to group by). The images
    are copied once, straight from the memory-mapped subsets into the result.
    """
    parts, labels, series = [], [], []
    for subset in subsets:
        uids = subset.candidates["seriesuid"].to_numpy()
        in_train = ~subset.candidates["seriesuid"].isin(held_out).to_numpy()
        label = subset.candidates["class"].to_numpy(int)
        keep = keep_negatives(np.where(in_train, label, -1), negative_fraction, rng)
        parts.append((subset.patches, keep))
        labels.append(np.repeat(label[keep], 3))
        series.append(np.repeat(uids[keep], 3))
        if use_augmented and len(subset.augmented_rows):
            chosen = np.flatnonzero(in_train[subset.augmented_rows])
            parts.append((subset.augmented, chosen))
            labels.append(np.ones(3 * len(chosen), int))
            series.append(np.repeat(uids[subset.augmented_rows[chosen]], 3))
    arrays = (_gather_views(parts), np.concatenate(labels))
    return (*arrays, np.concatenate(series)) if with_series else arrays


def _evaluation_rows(subsets, series):
    for subset in subsets:
        mask = (
            np.ones(len(subset.candidates), bool)
            if series is None
            else subset.candidates["seriesuid"].isin(series).to_numpy()
        )
        yield subset, np.flatnonzero(mask)


def evaluation_arrays(subsets, series=None):
    """(images, labels, candidate table) of every candidate (optionally only some series), views as samples.

    The images of a whole test fold (~150k candidates of LUNA16, 3.7 GB at float16) are large:
    to predict, prefer `evaluation_labels` with `evaluation_batches`, which never hold them all.
    """
    rows = list(_evaluation_rows(subsets, series))
    labels, table = evaluation_labels(subsets, series)
    return _gather_views([(subset.patches, chosen) for subset, chosen in rows]), labels, table


def evaluation_labels(subsets, series=None):
    """(labels of the views, candidate table) of `evaluation_arrays`, without the images."""
    labels, tables = [], []
    for subset, rows in _evaluation_rows(subsets, series):
        labels.append(np.repeat(subset.candidates["class"].to_numpy(int)[rows], 3))
        tables.append(subset.candidates.iloc[rows])
    return np.concatenate(labels), pd.concat(tables, ignore_index=True)


def evaluation_batches(subsets, series=None, batch_size=255):
    """Yields the images of `evaluation_arrays`, in its order, as float16 (n, S, S, 1) batches of whole candidates
    (n <= batch_size views, a multiple of 3), read from the memory-mapped subsets: never the whole fold at once."""
    per_batch = max(1, batch_size // 3)
    for subset, rows in _evaluation_rows(subsets, series):
        for start in range(0, len(rows), per_batch):
            yield _views(subset.patches[rows[start : start + per_batch]])
            if (start // per_batch) % _RELEASE_EVERY == _RELEASE_EVERY - 1:
                _release(subset.patches)
        _release(subset.patches)


def evaluation_cases(subsets, indices, series=None):
    """The three views (n, 3, S, S, 1) of the candidates at `indices` of the evaluation order (a gallery's few
    cases), read from the memory-mapped subsets."""
    parts = list(_evaluation_rows(subsets, series))
    starts = np.cumsum([0] + [len(rows) for _, rows in parts])
    indices = np.asarray(indices, dtype=np.int64).ravel()
    if len(indices) and (indices.min() < 0 or indices.max() >= starts[-1]):
        raise IndexError(f"indices must lie in [0, {starts[-1]}). Received: {indices.min()}..{indices.max()}")
    part = np.searchsorted(starts, indices, side="right") - 1
    side = parts[0][0].patches.shape[-1] if parts else 0
    out = np.empty((len(indices), 3, side, side, 1), np.float16)
    for n, (k, index) in enumerate(zip(part, indices)):
        subset, rows = parts[k]
        out[n] = subset.patches[rows[index - starts[k]]][..., None]
    return out


def _gather_views(parts, chunk=4096):
    """The views of `(patches, rows)` parts in one (3n, S, S, 1) array, filled chunk by chunk (no second copy)."""
    total = sum(len(rows) for _, rows in parts)
    side = parts[0][0].shape[-1] if parts else 0
    out = np.empty((3 * total, side, side, 1), np.float16)
    at = 0
    for patches, rows in parts:
        for start in range(0, len(rows), chunk):
            views = _views(patches[rows[start : start + chunk]])
            out[at : at + len(views)] = views
            at += len(views)
            _release(patches)
    return out


_RELEASE_EVERY = 32  # Batches between releases of the pages read (a few tens of MB).


def _release(patches):
    """Drops the pages of a memory-mapped patch file that this process read from its memory map.

    They stay in the page cache (read again at no cost while memory allows), but stop counting
    as this process's memory: without it, reading a fold's ~15 GB of patch files piece by piece
    leaves every page read mapped, and the process's resident size grows with the files.
    """
    import mmap

    mapping = getattr(patches, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _views(patches):
    """(N, 3, S, S) -> (3N, S, S, 1): each view of each candidate is one sample."""
    patches = np.asarray(patches)
    return patches.reshape(-1, patches.shape[-2], patches.shape[-1], 1)


@dataclass(frozen=True)
class PatchSettings(Options):
    """How candidate patches are extracted: declared once, for `python -m luna16.data` and the cross-validation."""

    patch_size: int = option(64, "patch side in pixels.", source="thesis 4.2.1.2", group=DATA, type=int)
    pixel_mm: float = option(
        None, "patch sampling step in mm. Default: the scan's in-plane spacing.", group=DATA, type=float
    )
    method: str = option(
        "planes",
        "thesis patch method 1 (planes: axial, coronal, sagittal) or 2 (cube).",
        source="thesis 4.2.1.2, method 1",
        group=DATA,
        choices=("planes", "cube"),
    )
    positive_copies: int = option(
        8, "copies of each training positive (7 augmented).", source="thesis 4.2.1.3", group=DATA, type=int
    )
    workers: int = option(
        None,
        "processes extracting patches (each reads one scan at a time; the files are the "
        "same for any number). Default: every core.",
        group=DATA,
        reuse=False,
        type=int,
    )


@dataclass(frozen=True)
class PatchOptions(PatchSettings):
    """The settings of `python -m luna16.data`."""

    data: str = option(None, "LUNA16 folder (subset0..9, candidates_V2.csv).", group=DATA, required=True, reuse=False)
    out: str = option(None, "folder for the extracted patches.", group=DATA, required=True, reuse=False)
    seed: int = option(0, "seed of the positives' augmentation.", group=DATA, type=int)


def parse_args(argv=None):
    parser = build_parser(PatchOptions, "python -m luna16.data", __doc__.split("\n\n")[0])
    return parse_options(PatchOptions, parser, argv)


def run(options):
    """Extracts the patches of a PatchOptions; returns {subset: candidates}."""
    workers = os.cpu_count() if options.workers is None else options.workers
    if workers < 1:
        raise UsageError("--workers", f"must be at least 1. Received: {workers}")
    counts = extract_subsets(
        options.data,
        options.out,
        options.patch_size,
        options.pixel_mm,
        options.method,
        options.positive_copies,
        options.seed,
        workers=workers,
    )
    print(f"{sum(counts.values())} candidates in {len(counts)} subsets under {options.out}")
    return counts


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
