"""Pre-extract a manifest's sampled slices into TFRecord shards: the fast input path for a GPU.

    python -m preprocessing.shards --manifest manifest.csv --out shards/

Each slice is read, normalised to [0, 1] by modality and stored at its native
size as a 16-bit PNG (so random crops still happen at training time), in shards
named `{split}-NNNNN.tfrecord`. Every volume is read once. Shards are written
atomically; a rerun skips the splits whose shards are complete.
"""

import json
import sys
from pathlib import Path

import numpy as np

from preprocessing.atomic import atomic_path, write_json
from preprocessing.cli import ArgumentParser
from preprocessing.errors import ImageReadError
from preprocessing.pipeline import PNG16_MAX, load_manifest, read_normalized_slices, volume_groups


def _example(plane, dataset, modality, patient_id):
    import cv2
    import tensorflow as tf

    ok, png = cv2.imencode(".png", np.round(np.clip(plane, 0, 1) * PNG16_MAX).astype(np.uint16))
    if not ok:
        raise ValueError("PNG encoding failed")

    def feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(png.tobytes()),
        "dataset": feature(str(dataset).encode()),
        "modality": feature(str(modality).encode()),
        "patient_id": feature(str(patient_id).encode()),
    })).SerializeToString()


def write_split(frame, split, out_dir, slices_per_shard=2048, progress=True):
    """Writes one split's shards; returns (number of slices written, skipped files)."""
    import tensorflow as tf
    from tqdm import tqdm

    out_dir = Path(out_dir)
    rows = frame[frame["split"] == split]
    lookup = rows.drop_duplicates("path").set_index("path")[["dataset", "patient_id"]]
    shard, count, in_shard, skipped, writer, tmp_ctx = 0, 0, 0, [], None, None

    def close():
        nonlocal writer, tmp_ctx
        if writer is not None:
            writer.close()
            tmp_ctx.__exit__(None, None, None)  # Renames the finished shard into place.
            writer, tmp_ctx = None, None

    for path, modality, slices in tqdm(volume_groups(rows), desc=f"{split} volumes", disable=not progress, unit="vol"):
        try:
            planes = read_normalized_slices(path, modality, slices)
        except ImageReadError as error:
            print(f"warning: {error} Skipped.", file=sys.stderr)
            skipped.append(path)
            continue
        dataset, patient_id = lookup.loc[path]
        for plane in planes:
            if writer is None:
                tmp_ctx = atomic_path(out_dir / f"{split}-{shard:05d}.tfrecord")
                writer = tf.io.TFRecordWriter(str(tmp_ctx.__enter__()))
            writer.write(_example(plane, dataset, modality, patient_id))
            count, in_shard = count + 1, in_shard + 1
            if in_shard == slices_per_shard:
                close()
                shard, in_shard = shard + 1, 0
    close()
    return count, skipped


def write_shards(manifest, out_dir, splits=("train", "val", "test"), slices_per_shard=2048, progress=True):
    """Writes every split's shards and an `index.json`; complete splits are skipped on a rerun."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = load_manifest(manifest)
    index_path = out_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for split in splits:
        if split not in set(frame["split"]):
            continue
        if split in index:
            print(f"{split}: {index[split]['slices']} slices already in shards; skipped")
            continue
        for stale in out_dir.glob(f"{split}-*.tfrecord"):
            stale.unlink()
        count, skipped = write_split(frame, split, out_dir, slices_per_shard, progress)
        index[split] = {"slices": count, "skipped_files": skipped}
        write_json(index_path, index)  # After each split, so a killed run keeps finished splits.
        print(f"{split}: {count} slices, {len(skipped)} unreadable files skipped")
    return index


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m preprocessing.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest CSV from preprocessing.manifest.")
    parser.add_argument("--out", required=True, help="folder for the shards.")
    parser.add_argument("--slices-per-shard", type=int, default=2048, help="slices per TFRecord file. Default: 2048.")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to write. Default: all.")
    return parser.parse_args(argv)


def run(args):
    index = write_shards(args.manifest, args.out, args.splits, args.slices_per_shard)
    print(f"wrote shards to {args.out}")
    return index


def main(argv=None):
    from preprocessing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
