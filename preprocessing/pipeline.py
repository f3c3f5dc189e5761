"""Stream a manifest split (or its TFRecord shards) to a GPU as float32 (B, H, W, 1) batches.

Each volume is read once per epoch for all of its sampled slices; volumes are
read in parallel (`interleave`), slices normalised by modality, randomly cropped
and resized (centre crop for evaluation), shuffled in a bounded buffer, batched
and prefetched. Memory depends on the buffer sizes, not on the corpus size.

Example:
>>> from preprocessing.pipeline import make_dataset          # doctest: +SKIP
>>> batches = make_dataset("manifest.csv", split="train", batch_size=32)
>>> next(iter(batches)).shape                                # doctest: +SKIP
TensorShape([32, 224, 224, 1])
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.errors import ImageReadError, InputError
from preprocessing.geometry import CROP_SIZE, IMAGE_SIZE, tf_crop_and_resize
from preprocessing.normalize import normalize_slice
from preprocessing.readers import read_image

SHARD_PATTERN = "{split}-*.tfrecord"
NO_SLICE_LEFT = "no slice is left to stream"
UINT16_MAX = 65535.0  # Shards store slices in [0, 1] as 16-bit integers (lossless to 1/65535).


def load_manifest(source, split=None):
    """A manifest DataFrame from a CSV path (or a DataFrame), optionally one split only."""
    if isinstance(source, pd.DataFrame):
        frame = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(path, "manifest does not exist")
        frame = pd.read_csv(path, dtype={"patient_id": str})
        missing = {"path", "slice_index", "modality", "split"} - set(frame.columns)
        if missing:
            raise InputError(path, f"is not a manifest (missing columns {sorted(missing)})")
        # Paths written relative (older manifests) are relative to the manifest's folder, not to the caller's.
        frame["path"] = [p if Path(p).is_absolute() else str((path.parent / p).resolve()) for p in frame["path"]]
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise InputError(
                source if not isinstance(source, pd.DataFrame) else "manifest", f"has no rows in split '{split}'"
            )
    return frame


def ordered(training):
    """The `deterministic` argument of parallel tf.data maps: in order when evaluating, and in training too when
    TensorFlow's op determinism is on (a run then replays exactly); otherwise first-come, which is faster."""
    from tensorflow.python.framework import config  # The public API can turn it on but not tell.

    return (not training) or config.is_op_determinism_enabled()


def volume_groups(frame):
    """[(path, modality, [slice indices])], one entry per file: the unit read at once."""
    groups = frame.groupby(["path", "modality"], sort=True)["slice_index"].apply(lambda s: sorted(int(v) for v in s))
    return [(path, modality, slices) for (path, modality), slices in groups.items()]


def read_normalized_slices(path, modality, slices, allow_outside_root=False):
    """The listed slices of one file, normalised to [0, 1]: float32 (n, H, W)."""
    array, meta = read_image(path, slices=slices, allow_outside_root=allow_outside_root)
    if array.ndim == 2:
        array = array[None]
    bit_depth = meta.get("bit_depth")
    return np.stack([normalize_slice(plane, modality, bit_depth) for plane in array])


def worker_share(items, share, source, what):
    """The items of one worker (`share` = (index, count)): every count-th item from index; all without a share.

    Workers of a multi-machine run each read their own share, so no item is read twice per pass.
    """
    if share is None:
        return items
    index, count = share
    mine = items[index::count]
    if not mine:
        raise InputError(source, f"has {len(items)} {what}, fewer than the {count} workers that share them")
    return mine


def _slices_from_manifest(frame, training, seed, share=None, source="manifest"):
    import tensorflow as tf

    groups = worker_share(volume_groups(frame), share, source, "volumes in this split")
    warned = set()

    def load(index):
        path, modality, slices = groups[int(index)]
        try:
            return read_normalized_slices(path, modality, slices)
        except ImageReadError as error:
            if path not in warned:  # A file can go bad after the manifest was built: skip, don't stop training.
                warned.add(path)
                print(f"warning: {error} Skipped.", file=sys.stderr)
            if len(warned) == len(groups):  # A whole pass without one slice would spin forever.
                raise ImageReadError(
                    path, f"and the other {len(groups) - 1} files of this split cannot be read; {NO_SLICE_LEFT}"
                ) from None
            return np.zeros((0, 1, 1), np.float32)

    def load_tensor(index):
        planes = tf.numpy_function(load, [index], tf.float32, stateful=False)
        planes.set_shape((None, None, None))
        return planes

    indices = tf.data.Dataset.range(len(groups))
    if training:
        indices = indices.shuffle(len(groups), seed=seed, reshuffle_each_iteration=True).repeat()
    # Volumes are read in parallel threads (file reading and decompression release the GIL),
    # each once for all its sampled slices, which are then streamed one by one.
    volumes = indices.map(load_tensor, num_parallel_calls=min(8, max(1, len(groups))), deterministic=ordered(training))
    return volumes.unbatch().map(lambda plane: plane[..., None])


SHARD_CYCLE = 64  # Shards read at once in training: with shards mixed when written, batches mix volumes.


def shard_records(shard_dir, split, training, seed, share=None):
    """The parsed records (a dict of tensors, see SHARD_FEATURES) of a split's shards.

    In training the shards are shuffled and up to SHARD_CYCLE are read at once, one record
    from each in turn, endlessly; otherwise in file order, once. With a `share`
    (index, count), only that worker's shards (see `worker_share`).
    """
    import tensorflow as tf

    files = sorted(str(p) for p in Path(shard_dir).glob(SHARD_PATTERN.format(split=split)))
    if not files:
        raise InputError(shard_dir, f"holds no '{SHARD_PATTERN.format(split=split)}' shards")
    files = worker_share(files, share, shard_dir, f"'{split}' shards (write smaller ones: --slices-per-shard)")
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(SHARD_CYCLE, len(files)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=ordered(training),
    )
    spec = shard_feature_spec()
    return dataset.map(lambda record: tf.io.parse_single_example(record, spec), num_parallel_calls=tf.data.AUTOTUNE)


def _slices_from_shards(shard_dir, split, training, seed, share=None):
    import tensorflow as tf

    return shard_records(shard_dir, split, training, seed, share).map(decode_image, num_parallel_calls=tf.data.AUTOTUNE)


SHARD_FEATURES = {  # name: kind. A record holds `raw` (with height, width) or, in PNG-encoded shards, `image`.
    "raw": "bytes",  # Normalised slice in [0, 1] as uint16, little-endian, row-major: the fast default.
    "height": "int64",
    "width": "int64",
    "image": "bytes",  # The same as a 16-bit PNG (`--encoding png`): about half the disk, slower to decode.
    "dataset": "bytes",
    "modality": "bytes",
    "patient_id": "bytes",
    "volume": "bytes",  # The file it came from (absent from shards of older versions).
}


def shard_feature_spec():
    """The tf.io parsing spec of SHARD_FEATURES (missing features read as empty / 0)."""
    import tensorflow as tf

    return {
        key: tf.io.FixedLenFeature([], tf.int64, default_value=0)
        if kind == "int64"
        else tf.io.FixedLenFeature([], tf.string, default_value="")
        for key, kind in SHARD_FEATURES.items()
    }


def decode_image(features):
    """A parsed shard record -> float32 (H, W, 1) in [0, 1], from its raw or its PNG bytes."""
    import tensorflow as tf

    def raw():
        pixels = tf.io.decode_raw(features["raw"], tf.uint16, little_endian=True)
        return tf.reshape(
            pixels, tf.stack([tf.cast(features["height"], tf.int32), tf.cast(features["width"], tf.int32), 1])
        )

    def png():
        return tf.io.decode_png(features["image"], channels=1, dtype=tf.uint16)

    image = tf.cond(tf.strings.length(features["raw"]) > 0, raw, png)
    return tf.cast(image, tf.float32) / UINT16_MAX


def make_dataset(
    source,
    split="train",
    batch_size=32,
    crop_size=CROP_SIZE,
    image_size=IMAGE_SIZE,
    training=None,
    shuffle_buffer=512,
    seed=0,
    drop_remainder=None,
    share=None,
):
    """A tf.data.Dataset of float32 (batch, image_size, image_size, 1) batches in [0, 1].

    Args:
        source: str, Path or DataFrame. A manifest CSV (or DataFrame), or a folder of
            TFRecord shards written by `python -m preprocessing.shards`.
        split: str. 'train', 'val' or 'test'. Defaults to 'train'.
        batch_size: int. Defaults to 32.
        crop_size: int. Side of the square crop; a smaller slice is cropped at its
            largest square instead. Defaults to 448 (thesis 3.1.8).
        image_size: int. Side after resizing. Defaults to 224.
        training: bool. Random crops, shuffling and an endless stream when True;
            centre crops, manifest order and one pass when False. Defaults to
            `split == 'train'`.
        shuffle_buffer: int. Slices held for shuffling. Defaults to 512.
        seed: int. Seeds the volume order and the shuffles. Defaults to 0.
        drop_remainder: bool. Defaults to `training`.
        share: (index, count) or None. Read only worker `index`'s share of the
            volumes or shards (of `count` workers). Defaults to all of them.
    """
    import tensorflow as tf

    training = (split == "train") if training is None else training
    drop_remainder = training if drop_remainder is None else drop_remainder
    if Path(str(source)).is_dir() and not isinstance(source, pd.DataFrame):
        slices = _slices_from_shards(source, split, training, seed, share)
    else:
        slices = _slices_from_manifest(
            load_manifest(source, split),
            training,
            seed,
            share,
            source if not isinstance(source, pd.DataFrame) else "manifest",
        )

    def crop(index, image):  # Slice i of the stream is cropped with the stateless seed (seed, i).
        return tf_crop_and_resize(
            image, crop_size, image_size, training=training, seed=tf.stack([tf.cast(seed, tf.int64), index])
        )

    dataset = slices.enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered(training))
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
