"""Pre-extract a manifest's sampled slices into TFRecord shards: the fast input path for a GPU.

    python -m preprocessing.shards --manifest manifest.csv --out shards/

Each slice is read, normalised to [0, 1] by modality and stored at its native
size as 16-bit integers (so random crops still happen at training time), raw
(the default: decoding costs ~0.1 ms per 512x512 slice) or as a PNG (`--encoding
png`: about half the disk for CT, ~2.5 ms to decode), in shards named
`{split}-NNNNN.tfrecord`. Every volume is read once.

Slices are stored well mixed, so that a batch read from the shards holds many
volumes of every modality rather than a run of one volume: volumes are read in
a seeded random order, each slice goes to a random shard (a first pass), and
each shard's records are then shuffled in memory, one shard at a time (a second
pass). Shards are written atomically.

`index.json` records, per split, what made its shards: the content hash of the
manifest's rows of that split (paths taken relative to the folder holding all
the manifest's files, so a manifest rebuilt over a moved data folder still
matches) and the settings that shape the shards (`--encoding`,
`--slices-per-shard`, `--seed`), and the hash of its images' content stamps
(size and modification time of every file a split's images are read from, kept
in `{split}-images.json`; see `image_stamps` for why not a hash of the bytes). A
rerun skips a split made from the same; if anything changed it stops and names
it (the images that changed, too), before writing anything (`--overwrite`
writes those splits again).
"""

import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plumbing.atomic import TEMPORARY_PREFIX, atomic_path, remove_temporaries, write_json
from plumbing.errors import ImageReadError, InputError, UsageError
from plumbing.fingerprint import common_root, file_stamp, fingerprint, rows_hash, stamp_changes
from plumbing.options import Options, build_parser, option, parse_options
from preprocessing.pipeline import UINT16_MAX, load_manifest, read_normalized_slices, volume_groups

ENCODINGS = ("raw", "png")


def _example(plane, dataset, modality, patient_id, volume, encoding="raw"):
    import cv2
    import tensorflow as tf

    pixels = np.round(np.clip(plane, 0, 1) * UINT16_MAX).astype("<u2")

    def feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def integer(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    if encoding == "raw":
        image = {
            "raw": feature(pixels.tobytes()),
            "height": integer(pixels.shape[0]),
            "width": integer(pixels.shape[1]),
        }
    elif encoding == "png":
        ok, png = cv2.imencode(".png", pixels)
        if not ok:
            raise ValueError("PNG encoding failed")
        image = {"image": feature(png.tobytes())}
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}. Received: encoding={encoding!r}")
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                **image,
                "dataset": feature(str(dataset).encode()),
                "modality": feature(str(modality).encode()),
                "patient_id": feature(str(patient_id).encode()),
                "volume": feature(str(volume).encode()),
            }
        )
    ).SerializeToString()


def write_split(
    frame, split, out_dir, slices_per_shard=2048, progress=True, seed=0, encoding="raw", allow_outside_root=False
):
    """Writes one split's shards, well mixed (see the module docstring); returns (slices written, skipped files)."""
    import tensorflow as tf
    from tqdm import tqdm

    out_dir = Path(out_dir)
    rows = frame[frame["split"] == split]
    lookup = rows.drop_duplicates("path").set_index("path")[["dataset", "patient_id"]]
    groups = volume_groups(rows)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    shards = max(1, -(-len(rows) // slices_per_shard))
    # Pass 1: volumes in a random order, each slice to a random shard (balanced: a shuffled deck of shard numbers).
    deck = rng.permutation(np.arange(len(rows)) % shards)
    scratch = [out_dir / f"{TEMPORARY_PREFIX}pass1-{split}-{k:05d}.tfrecord" for k in range(shards)]
    writers = [tf.io.TFRecordWriter(str(path)) for path in scratch]
    count, skipped = 0, []
    try:
        for index in tqdm(rng.permutation(len(groups)), desc=f"{split} volumes", disable=not progress, unit="vol"):
            path, modality, slices = groups[index]
            try:
                planes = read_normalized_slices(path, modality, slices, allow_outside_root)
            except ImageReadError as error:
                print(f"warning: {error} Skipped.", file=sys.stderr)
                skipped.append(path)
                continue
            dataset, patient_id = lookup.loc[path]
            for plane in planes:
                writers[deck[count % len(deck)]].write(_example(plane, dataset, modality, patient_id, path, encoding))
                count += 1
    finally:
        for writer in writers:
            writer.close()
    # Pass 2: each shard's records shuffled in memory, written atomically, its scratch file removed.
    for k, path in enumerate(tqdm(scratch, desc=f"{split} shards", disable=not progress, unit="shard")):
        records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
        with atomic_path(out_dir / f"{split}-{k:05d}.tfrecord") as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
            for i in rng.permutation(len(records)):
                writer.write(records[i])
        path.unlink()
    return count, skipped


MANIFEST_COLUMNS_HASHED = ["dataset", "modality", "patient_id", "path", "slice_index"]  # What a shard's records hold.


def content_files(path):
    """The files whose bytes make an image's pixels: the file itself and the data files it names (a MetaImage
    header's .raw, an Analyze .img), or a DICOM series folder's files."""
    from preprocessing.readers import _named_data_files

    path = Path(path)
    base = path if path.is_dir() else path.parent
    named = [base / name for name in _named_data_files(path)]
    return named if path.is_dir() else [path, *named]


def image_stamps(paths, root):
    """The content stamps (`plumbing.fingerprint.file_stamp`) of every file the images at `paths` are read from.

    By size and modification time, never by hash: hashing reads every image of the corpus
    (hundreds of GB for the thesis's) at every rerun, only to decide whether a split's
    shards are kept, where a stat of each file takes seconds; an image replaced or edited
    in place changes its size or time, as for every other large input of this project
    (`plumbing.fingerprint`). A file that is missing has no stamp (the shards skip it too):
    one that appears or goes is named as added or removed.
    """
    stamps = {}
    for path in paths:
        try:
            files = content_files(path)
        except (OSError, InputError):  # Unreadable as a header: the shards skip it with a warning.
            files = [Path(path)]
        for file in files:
            try:
                stamp = file_stamp(file, root, hashed_below=0)
            except OSError:
                continue
            stamps[stamp["path"]] = stamp
    return [stamps[name] for name in sorted(stamps)]


def images_file(out_dir, split):
    """Where a split's image stamps are kept (beside its shards; the index holds their hash)."""
    return Path(out_dir) / f"{split}-images.json"


def split_record(frame, split, slices_per_shard, seed, encoding, root):
    """What makes one split's shards: ({'settings': ..., 'inputs': {'manifest_rows', 'rows', 'images'}}, stamps).

    `root` is the folder the rows' paths (and the images' stamps) are taken relative to (the
    manifest's `common_root`); `stamps` is `image_stamps` of the split's images, whose hash
    the record holds.
    """
    rows = frame[frame["split"] == split]
    columns = [c for c in MANIFEST_COLUMNS_HASHED if c in rows.columns]
    stamps = image_stamps(rows["path"].unique(), root)
    record = {
        "settings": {"encoding": encoding, "slices_per_shard": int(slices_per_shard), "seed": int(seed)},
        "inputs": {
            "manifest_rows": rows_hash(rows[columns], root=root),
            "rows": len(rows),
            "images": fingerprint(stamps),
        },
    }
    return record, stamps


def record_changes(recorded, made, split, recorded_stamps=None, stamps=None):
    """What differs between a split's recorded making and this one, in words (empty when nothing).

    `recorded_stamps` and `stamps`: the split's image stamps then and now, to name the images that changed.
    """
    if "inputs" not in recorded:
        return [f"{split} shards were written before shards recorded their inputs"]
    changes = [
        f"--{key.replace('_', '-')} {recorded['settings'].get(key)!r} -> {value!r}"
        for key, value in made["settings"].items()
        if recorded["settings"].get(key) != value
    ]
    before, now = recorded["inputs"], made["inputs"]
    if before["manifest_rows"] != now["manifest_rows"]:
        counts = (
            f"{before['rows']:,} rows then, {now['rows']:,} now"
            if before["rows"] != now["rows"]
            else f"{now['rows']:,} rows, other content"
        )
        changes.append(f"the manifest's {split} rows ({counts})")
    elif "images" not in before:
        changes.append(f"{split} shards were written before shards recorded their images' content")
    elif before["images"] != now["images"]:
        named = stamp_changes(recorded_stamps, stamps) if recorded_stamps is not None else ["its record is gone"]
        changes.append(f"the {split} images ({', '.join(named)})")
    return changes


def write_shards(
    manifest,
    out_dir,
    splits=("train", "val", "test"),
    slices_per_shard=2048,
    progress=True,
    seed=0,
    encoding="raw",
    overwrite=False,
    allow_outside_root=False,
):
    """Writes every split's shards and an `index.json`; splits made from the same rows and settings are kept.

    `encoding` 'raw' stores each slice's 16-bit pixels as they are (about 0.5 MB for a
    512x512 slice; decoded ~20x faster), 'png' as a 16-bit PNG (about half that for CT).

    Raises:
        UsageError: a split's shards were made from other manifest rows or settings (named),
            unless `overwrite`; checked for every split before any is written. Or `out_dir` is
            in use by another process (its lock).
    """
    from plumbing.lock import output_lock

    frame = load_manifest(manifest)
    with output_lock(out_dir):  # Before the index is read: a second process on the folder changes nothing.
        return _write_shards(
            frame, Path(out_dir), splits, slices_per_shard, progress, seed, encoding, overwrite, allow_outside_root
        )


def _write_shards(frame, out_dir, splits, slices_per_shard, progress, seed, encoding, overwrite, allow_outside_root):
    """`write_shards` once the manifest is read and `out_dir` is locked."""
    index_path = out_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    wanted = [split for split in splits if split in set(frame["split"])]
    root = common_root(frame["path"])  # Of the whole manifest: every split's paths relative to one folder.
    made, stamps = {}, {}
    for split in wanted:
        made[split], stamps[split] = split_record(frame, split, slices_per_shard, seed, encoding, root)
    changed = {
        split: record_changes(index[split], made[split], split, _recorded_stamps(out_dir, split), stamps[split])
        for split in wanted
        if split in index
    }
    stale = [f"{split}: {'; '.join(changes)}" for split, changes in changed.items() if changes]
    if stale and not overwrite:
        raise UsageError(
            out_dir,
            f"holds shards made from other inputs or settings ({' | '.join(stale)}); pass "
            "--overwrite to write them again, or choose another --out",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in wanted:
        if split in index and not changed[split] and not overwrite:
            print(
                f"{split}: {index[split]['slices']} slices already in shards, made from these rows and settings; kept"
            )
            continue
        for old in out_dir.glob(f"{split}-*.tfrecord"):
            old.unlink()
        index.pop(split, None)
        write_json(index_path, index)  # A split being rewritten is never listed as done.
        remove_temporaries(out_dir)
        count, skipped = write_split(
            frame, split, out_dir, slices_per_shard, progress, seed, encoding, allow_outside_root
        )
        write_json(images_file(out_dir, split), stamps[split])
        index[split] = {"slices": count, "skipped_files": skipped, **made[split]}
        write_json(index_path, index)  # After each split, so a killed run keeps finished splits.
        print(f"{split}: {count} slices, {len(skipped)} unreadable files skipped")
    return index


def _recorded_stamps(out_dir, split):
    """The image stamps a split's shards were written from, or None when not recorded."""
    path = images_file(out_dir, split)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ShardOptions(Options):
    """The settings of `python -m preprocessing.shards`; `run` takes them."""

    manifest: str = option(None, "manifest CSV from preprocessing.manifest.", required=True, reuse=False)
    out: str = option(None, "folder for the shards.", required=True, reuse=False)
    slices_per_shard: int = option(2048, "slices per TFRecord file.", type=int)
    splits: list = option(["train", "val", "test"], "splits to write. Default: all.", nargs="+")
    seed: int = option(0, "seed of the volume order and the mixing.", type=int)
    encoding: str = option(
        "raw",
        "raw: 16-bit pixels as they are, the fastest to read (a 512x512 slice takes 0.5 MB); "
        "png: 16-bit PNG, about half the disk for CT but ~2.5 ms more per slice to decode, which "
        "takes about a third of a core's pretraining input.",
        choices=ENCODINGS,
    )
    overwrite: bool = option(
        False,
        "write again the splits whose shards were made from other manifest rows or "
        "settings. Default: such a split stops the command, naming what changed.",
        reuse=False,
        action="store_true",
    )
    allow_outside_root: bool = option(
        False,
        "read MetaImage/NRRD headers that name data files outside their own "
        "folder (as preprocessing.manifest --allow-outside-root). Default: refused.",
        reuse=False,
        action="store_true",
    )


def parse_args(argv=None):
    parser = build_parser(ShardOptions, "python -m preprocessing.shards", __doc__.split("\n\n")[0])
    return parse_options(ShardOptions, parser, argv)


def run(options):
    """Writes the shards of a ShardOptions; returns the index."""
    index = write_shards(
        options.manifest,
        options.out,
        options.splits,
        options.slices_per_shard,
        seed=options.seed,
        encoding=options.encoding,
        overwrite=options.overwrite,
        allow_outside_root=options.allow_outside_root,
    )
    print(f"wrote shards to {options.out}")
    return index


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
