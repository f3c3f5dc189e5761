"""Build the pretraining manifest: which slice of which file, for which patient, in which split.

    python -m preprocessing.manifest --datasets preprocessing/datasets.yaml --root DATA_DIR --out manifest.csv

One CSV row per sampled slice, with columns `dataset, modality, body_part,
patient_id, path, slice_index, split`; counts per modality, body part and dataset
are printed (thesis Fig. 3.2-3.7) and drawn as PNG charts next to the CSV.
Files whose header or sampled slices cannot be decoded, or whose slices are under 32
pixels a side, are skipped with one warning line each and counted (`--no-verify`
checks headers only). Paths are
written absolute, so the manifest works from any folder. Each dataset's patients
and slices are printed beside the thesis's (Fig. 3.1, and the sampled counts of
Fig. 3.3), with a warning where they differ by more than 2x, and written beside
the CSV as `<stem>_beside_thesis.csv`.

A file that lies outside `--root` once symlinks are resolved (a link leaving the
dataset folder), and a header naming data outside its own folder, stop the
command with one line unless `--allow-outside-root` is given.
"""

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from plumbing.atomic import write_csv
from plumbing.cli import count_type
from plumbing.errors import ImageReadError, InputError, UsageError
from plumbing.figures import pyplot, save_figure
from plumbing.options import Options, build_parser, option, parse_options
from preprocessing.normalize import MODALITIES
from preprocessing.readers import OutsideRootError, read_header
from preprocessing.split import DEFAULT_FRACTIONS, check_no_leak, patient_split

COLUMNS = ["dataset", "modality", "body_part", "patient_id", "path", "slice_index", "split"]
REQUIRED_KEYS = ("name", "modality", "files", "patient_id", "slices_per_patient")
VOLUME_RULES = ("first", "all")  # Which volumes of a 4D file become slices (see datasets.yaml).
# The smallest slice side kept: every backbone halves its input five times, so 32 pixels is one feature at the end.
# Smaller images (a 1x1 PNG, an icon) would be upsampled to the crop and trained on as constant slices.
MIN_SIDE = 32
THESIS_KEYS = ("patients", "slices", "sampled")  # Fig. 3.1's patients and slices; the thesis's sampled slices.
DIFFERENCE_WARNED = 2.0  # A built count this many times above or below the thesis's is warned about.


def _regex(config_path, name, key, pattern):
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as error:
        raise InputError(
            config_path, f"dataset '{name}' has {key} {pattern!r}, which is not a regular expression ({error})"
        ) from None
    if compiled.groups < 1:
        raise InputError(config_path, f"dataset '{name}' has {key} {pattern!r} without a group; group 1 is the value")


def load_table(config_path):
    """Reads and checks a datasets table (see preprocessing/datasets.yaml)."""
    config_path = Path(config_path)
    try:
        table = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(config_path, "is not UTF-8 text") from None
    except (OSError, yaml.YAMLError) as error:
        raise InputError(config_path, f"cannot be read as YAML ({str(error).splitlines()[0]})") from None
    entries = table.get("datasets") if isinstance(table, dict) else None
    if not entries or not isinstance(entries, list):
        raise InputError(config_path, "has no 'datasets' list")
    for number, entry in enumerate(entries, start=1):
        _check_entry(config_path, number, entry)
    return entries


def _check_entry(config_path, number, entry):
    """One dataset of the table (the `number`th), checked field by field: InputError naming it."""
    if not isinstance(entry, dict):
        raise InputError(config_path, f"dataset {number} is {entry!r}, not a mapping of fields (name, modality, ...)")
    name = entry.get("name", "?")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise InputError(config_path, f"dataset '{name}' lacks {', '.join(missing)}")
    if entry["modality"] not in MODALITIES:
        raise InputError(
            config_path, f"dataset '{name}' has modality '{entry['modality']}', expected one of {MODALITIES}"
        )
    if "body_part" not in entry and "body_part_pattern" not in entry:
        raise InputError(config_path, f"dataset '{name}' needs body_part or body_part_pattern")
    spp = entry["slices_per_patient"]
    if not (spp == "all" or (isinstance(spp, int) and not isinstance(spp, bool) and spp > 0)):
        raise InputError(
            config_path, f"dataset '{name}' has slices_per_patient={spp!r}, expected a positive integer or 'all'"
        )
    files = entry["files"]
    if not isinstance(files, str) or not files.strip():
        raise InputError(config_path, f"dataset '{name}' has files={files!r}, expected a glob relative to --root")
    if Path(files).is_absolute() or files.startswith("~") or ".." in Path(files).parts:
        raise InputError(
            config_path, f"dataset '{name}' has files {files!r}, which leaves --root; globs are relative to it"
        )
    if entry["patient_id"] != "header":
        _regex(config_path, name, "patient_id", entry["patient_id"])
    if "body_part_pattern" in entry:
        _regex(config_path, name, "body_part_pattern", entry["body_part_pattern"])
    if entry.get("volumes", "first") not in VOLUME_RULES:
        raise InputError(
            config_path,
            f"dataset '{name}' has volumes={entry['volumes']!r}, expected one of {', '.join(VOLUME_RULES)}",
        )
    thesis = entry.get("thesis", {})
    if not isinstance(thesis, dict) or any(not isinstance(thesis.get(k, 0), int) for k in THESIS_KEYS):
        raise InputError(
            config_path, f"dataset '{name}' has thesis={thesis!r}, expected integers {', '.join(THESIS_KEYS)}"
        )


def find_files(root, pattern, allow_outside_root=False):
    """Files (or, for a pattern ending in '/', non-empty folders) matching a glob under root.

    Raises InputError for a match that a symlink takes outside `root` (unless allowed).
    """
    root = Path(root)
    want_dirs = pattern.endswith("/")
    matches = root.glob(pattern.rstrip("/"))
    if want_dirs:
        found = [p for p in matches if p.is_dir() and any(c.is_file() for c in p.iterdir())]
    else:
        found = [p for p in matches if p.is_file()]
    if not allow_outside_root:
        real_root = root.resolve()
        for path in found:
            if not path.resolve().is_relative_to(real_root):
                raise InputError(
                    path,
                    f"leads outside --root {real_root} (to {path.resolve()}); pass "
                    "--allow-outside-root to read it anyway",
                )
    return sorted(found)


def evenly_spaced(total, count):
    """`count` indices evenly spaced through range(total), all of them when count >= total."""
    if count == "all" or count >= total:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, count)).astype(int))


def _body_part(entry, relative):
    if "body_part" in entry:
        return entry["body_part"]
    match = re.search(entry["body_part_pattern"], relative)
    value = match.group(1) if match else "UNKNOWN"
    return entry.get("body_part_names", {}).get(value, value)


def sample_dataset(entry, root, warn=print, allow_outside_root=False):
    """Rows of the manifest for one dataset (split not yet assigned), and the skipped files.

    A 4D file (NIfTI with several volumes, a Cardiac MRI .mat) must be read by the rule the
    entry's `volumes` states (default 'first'); a mismatch stops with one line.
    """
    root = Path(root)
    volumes = {}  # patient -> [(path, num_slices, body_part)]
    skipped = []
    from_header = entry["patient_id"] == "header"
    stated = entry.get("volumes", "first")
    for path in find_files(root, entry["files"], allow_outside_root):
        relative = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        match = None if from_header else re.search(entry["patient_id"], relative)
        if not from_header and not match:
            warn(f"warning: {path}: no patient id matches '{entry['patient_id']}'; skipped")
            skipped.append(str(path))
            continue
        try:
            header = read_header(path, allow_outside_root=allow_outside_root)
        except OutsideRootError:
            raise  # Not a damaged file: a header pointing elsewhere, refused outright.
        except ImageReadError as error:
            warn(f"warning: {error} Skipped.")
            skipped.append(str(path))
            continue
        in_file = header.get("volumes_in_file", 1)
        if in_file > 1 and header.get("volumes_read", "first") != stated:
            raise InputError(
                path,
                f"holds {in_file} volumes, of which the reader makes slices of "
                f"{header.get('volumes_read', 'first')}, but dataset '{entry['name']}' states volumes: "
                f"{stated}",
            )
        patient = header.get("patient_id") if from_header else match.group(1)
        if not patient:
            warn(f"warning: {path}: names no patient in the file; skipped")
            skipped.append(str(path))
            continue
        # Absolute paths: the manifest then works from any working directory.
        volumes.setdefault(patient, []).append((str(path.resolve()), header["num_slices"], _body_part(entry, relative)))
    rows = []
    for patient, files in sorted(volumes.items()):
        # A patient's slices, volume after volume, then taken evenly spaced (thesis 3.1.4-3.1.5).
        flat = [(path, z, part) for path, n, part in files for z in range(n)]
        for index in evenly_spaced(len(flat), entry["slices_per_patient"]):
            path, z, part = flat[index]
            rows.append((entry["name"], entry["modality"], part, patient, path, z))
    return rows, skipped


def verify_decodable(frame, warn=print, workers=None, progress=True, allow_outside_root=False, min_side=MIN_SIDE):
    """The rows whose files decode, and the files that do not (each read once, in parallel threads).

    Headers alone accept a DICOM cut at 60% or a MetaImage whose .raw is short; decoding the
    sampled slices is what proves that training will see them.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from preprocessing.readers import read_image

    groups = frame.groupby("path", sort=True)["slice_index"].apply(lambda s: sorted(int(v) for v in s))

    def check(item):
        path, slices = item
        try:
            array, _ = read_image(path, slices=slices, allow_outside_root=allow_outside_root)
        except OutsideRootError:
            raise
        except ImageReadError as error:
            return path, str(error)
        height, width = array.shape[-2:]
        if min(height, width) < min_side:  # A 1x1 image would be trained on as a constant slice.
            return path, (
                f"{path}: its slices are {height} x {width} pixels, fewer than the {min_side} a side the networks "
                "need (--min-side)."
            )
        return None

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(
            tqdm(pool.map(check, groups.items()), total=len(groups), desc="decoding", unit="file", disable=not progress)
        )
    bad = [r for r in results if r is not None]
    for _path, message in bad:
        warn(f"warning: {message} Skipped.")
    bad_paths = {path for path, _ in bad}
    return frame[~frame["path"].isin(bad_paths)], sorted(bad_paths)


def build_manifest(
    entries,
    root,
    seed=0,
    fractions=DEFAULT_FRACTIONS,
    warn=print,
    verify=True,
    progress=True,
    allow_outside_root=False,
    min_side=MIN_SIDE,
):
    """Samples every dataset, decodes what it keeps (unless `verify` is False), splits by patient and checks the split.

    `allow_outside_root` accepts files that symlinks take outside `root` and headers naming
    data outside their folder (refused by default).

    Returns:
        (DataFrame with COLUMNS, list of skipped paths).
    """
    rows, skipped = [], []
    for entry in entries:
        dataset_rows, dataset_skipped = sample_dataset(entry, root, warn=warn, allow_outside_root=allow_outside_root)
        if not dataset_rows:
            warn(f"warning: dataset '{entry['name']}': no readable files match '{entry['files']}' under {root}")
        rows += dataset_rows
        skipped += dataset_skipped
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    frame["patient_id"] = frame["patient_id"].astype(str)
    owners = frame.groupby("path")["dataset"].unique()
    shared = owners[owners.map(len) > 1]
    if len(shared):  # Its slices would be sampled twice and could fall in two splits (a leak).
        raise InputError(
            shared.index[0],
            f"is matched by datasets {' and '.join(repr(d) for d in shared.iloc[0])} "
            f"({len(shared)} files are matched twice); give each file to one dataset by narrowing its glob",
        )
    if verify and len(frame):
        frame, undecodable = verify_decodable(
            frame, warn=warn, progress=progress, allow_outside_root=allow_outside_root, min_side=min_side
        )
        skipped += undecodable
    frame = frame.reset_index(drop=True)
    frame["split"] = patient_split(frame, fractions=fractions, seed=seed) if len(frame) else pd.Series(dtype=object)
    check_no_leak(frame)
    return frame[COLUMNS], skipped


def manifest_hash(path):
    """A short content hash of a manifest file, recorded in model cards."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def summarize(frame):
    """The count tables of thesis Fig. 3.2-3.7 as a dict of name -> Series."""
    return {
        "slices per modality": frame.groupby("modality").size(),
        "slices per body part": frame.groupby("body_part").size().sort_values(ascending=False),
        "slices per dataset": frame.groupby("dataset").size().sort_values(ascending=False),
        "patients per dataset": frame.groupby("dataset")["patient_id"].nunique().sort_values(ascending=False),
        "patients per modality": frame.drop_duplicates(["dataset", "patient_id"]).groupby("modality").size(),
        "slices per split": frame.groupby("split").size(),
    }


def compare_with_thesis(frame, entries):
    """Each dataset's patients and slices beside the thesis's, as a DataFrame.

    Columns: patients, thesis_patients (Fig. 3.1), slices, thesis_sampled (the thesis's
    slices after sampling: Fig. 3.3 where a body part is one dataset's, else 3.1.5's rule
    applied to Fig. 3.1), thesis_slices (Fig. 3.1, before sampling), and `differs`: the
    built patients or slices are more than 2x above or below the thesis's. Datasets the
    thesis did not use have no thesis figures (NaN) and never differ.
    """
    rows = []
    for entry in entries:
        mine = frame[frame["dataset"] == entry["name"]]
        thesis = entry.get("thesis", {})
        row = {
            "dataset": entry["name"],
            "patients": int(mine["patient_id"].nunique()),
            "slices": len(mine),
            "thesis_patients": thesis.get("patients"),
            "thesis_sampled": thesis.get("sampled"),
            "thesis_slices": thesis.get("slices"),
        }
        ratios = [
            max(a, 1) / max(b, 1)
            for a, b in ((row["patients"], row["thesis_patients"]), (row["slices"], row["thesis_sampled"]))
            if b is not None
        ]
        row["differs"] = any(r > DIFFERENCE_WARNED or r < 1 / DIFFERENCE_WARNED for r in ratios)
        rows.append(row)
    return pd.DataFrame(rows).set_index("dataset")


def print_thesis_comparison(comparison, warn=print):
    """Prints the comparison table, then one warning per dataset that differs by more than 2x."""

    def number(value):
        return "-" if pd.isna(value) else f"{int(value):,}"

    print(
        "\nbeside the thesis (patients: Fig. 3.1; slices: sampled, Fig. 3.3 or 3.1.5 x Fig. 3.1; "
        "before sampling: Fig. 3.1):"
    )
    print(f"  {'dataset':<22} {'patients':>9} {'thesis':>9} {'slices':>9} {'thesis':>9} {'before sampling':>16}")
    for name, row in comparison.iterrows():
        print(
            f"  {name:<22} {number(row['patients']):>9} {number(row['thesis_patients']):>9} "
            f"{number(row['slices']):>9} {number(row['thesis_sampled']):>9} {number(row['thesis_slices']):>16}"
        )
    if comparison["thesis_patients"].isna().all():
        print("  (no dataset of this table is one of the thesis's: nothing to compare)")
    for name, row in comparison[comparison["differs"] & (comparison["slices"] > 0)].iterrows():  # Empty: warned.
        warn(
            f"warning: dataset '{name}': {row['patients']:,} patients and {row['slices']:,} slices, the thesis "
            f"{number(row['thesis_patients'])} and {number(row['thesis_sampled'])}: more than "
            f"{DIFFERENCE_WARNED:g}x apart (another release or layout of the dataset, or other globs?)."
        )


def save_charts(tables, out_dir, stem):
    """One bar chart PNG per count table; returns the paths written."""
    plt = pyplot()
    paths = []
    for title, counts in tables.items():
        figure, axis = plt.subplots(figsize=(max(4.0, 0.45 * len(counts) + 2), 3.6))
        axis.bar([str(k) for k in counts.index], counts.to_numpy(), color="#4c72b0")
        for x, value in enumerate(counts.to_numpy()):
            axis.annotate(f"{value:,}", (x, value), ha="center", va="bottom", fontsize=7)
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=60, labelsize=7)
        figure.tight_layout()
        path = Path(out_dir) / f"{stem}_{title.replace(' ', '_')}.png"
        save_figure(path, figure, dpi=110)
        paths.append(path)
    return paths


DATASETS = Path(__file__).with_name("datasets.yaml")


@dataclass(frozen=True)
class ManifestOptions(Options):
    """The settings of `python -m preprocessing.manifest`; `write_manifest` takes them."""

    datasets: str = option(
        str(DATASETS),
        "datasets table (YAML). Default: preprocessing/datasets.yaml (the thesis's 17 datasets).",
        reuse=False,
    )
    root: str = option(
        None, "folder holding the datasets; the table's globs are relative to it.", required=True, reuse=False
    )
    out: str = option(None, "manifest CSV to write; charts are written beside it.", required=True, reuse=False)
    seed: int = option(0, "seed of the patient split.", type=int)
    fractions: list = option(
        list(DEFAULT_FRACTIONS),
        "split fractions of patients' images.",
        source="thesis 3.1.7",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
    )
    verify: bool = option(
        True,
        "skip decoding the sampled slices (faster; undecodable files then fail during "
        "training). Default: every kept file is decoded, and those that fail are skipped and "
        "counted.",
        flag="--no-verify",
        action="store_false",
    )
    min_side: int = option(
        MIN_SIDE,
        "slices with a side under this many pixels are skipped and counted: every backbone halves its input five "
        "times, so 32 pixels make one feature at its end, and a 1x1 image would be trained on as a constant slice.",
        type=count_type(1),
    )
    allow_outside_root: bool = option(
        False,
        "read files that symlinks take outside --root, and MetaImage/NRRD headers "
        "that name data files outside their own folder. Default: refused, so a dataset "
        "cannot have other files of this machine read into the corpus.",
        action="store_true",
    )


def parser():
    return build_parser(
        ManifestOptions,
        "python -m preprocessing.manifest",
        "Sample slices per patient from the pretraining datasets, split by patient 90/5/5, and write "
        "one manifest CSV with count charts beside it.",
    )


def parse_args(argv=None):
    argv = [
        part
        for item in (sys.argv[1:] if argv is None else argv)
        for part in (item.split("=", 1) if item.startswith("--config=") else [item])
    ]
    if "--config" in argv[:-1]:  # --config is every command's file of option defaults, not the datasets table.
        given = Path(argv[argv.index("--config") + 1])
        try:
            table = yaml.safe_load(given.read_text(encoding="utf-8")) if given.is_file() else None
        except (UnicodeDecodeError, yaml.YAMLError):
            table = None
        if isinstance(table, dict) and isinstance(table.get("datasets"), list):  # A table, not the option.
            raise UsageError(
                "--config",
                f"{given} is a datasets table: pass it as --datasets {given} (--config "
                "takes a YAML file of option defaults)",
            )
    return parse_options(ManifestOptions, parser(), argv)


def _warn(line):
    print(line, file=sys.stderr)


def build_from_options(options):
    """`build_manifest` as a ManifestOptions asks: (the table, the skipped files), nothing written."""
    entries = load_table(options.datasets)
    if not Path(options.root).is_dir():
        raise InputError(options.root, "is not a folder")
    return build_manifest(
        entries,
        options.root,
        seed=options.seed,
        fractions=options.fractions,
        warn=_warn,
        verify=options.verify,
        allow_outside_root=options.allow_outside_root,
        min_side=options.min_side,
    )


def write_manifest(options, built=None):
    """Writes the manifest of `options` (a ManifestOptions), its thesis comparison and charts; returns the table.

    `built`: what `build_from_options(options)` returned, when the caller has already built it.
    """
    from plumbing.lock import output_lock

    out = Path(options.out)
    # The manifest's own files alone are locked: other manifests or runs may share its folder.
    with output_lock(out.parent, f".{out.name}.lock"):
        return _write_manifest(options, built, out)


def _write_manifest(options, built, out):
    """`write_manifest` once `out` is locked."""
    entries = load_table(options.datasets)
    frame, skipped = built or build_from_options(options)
    warn = _warn
    if frame.empty:
        raise InputError(options.root, f"no readable files match any dataset of {options.datasets}")
    write_csv(out, frame)
    tables = summarize(frame)
    for title, counts in tables.items():
        print(f"\n{title}:")
        for key, value in counts.items():
            print(f"  {key:<28} {value:>9,}")
    comparison = compare_with_thesis(frame, entries)
    print_thesis_comparison(comparison, warn=warn)
    write_csv(out.with_name(f"{out.stem}_beside_thesis.csv"), comparison.reset_index())
    charts = save_charts(tables, out.parent, out.stem)
    print(
        f"\n{len(frame):,} slices from {frame.groupby(['dataset', 'patient_id']).ngroups:,} patients; "
        f"{len(skipped)} unreadable files skipped."
    )
    print(f"wrote {out}, {out.stem}_beside_thesis.csv and {len(charts)} charts beside it")
    return frame


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, write_manifest, argv)


if __name__ == "__main__":
    main()
