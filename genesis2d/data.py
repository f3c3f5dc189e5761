"""The data of a pretraining run: its source checked, and (distorted, target) batches of it.

Batch i of a run is one element of one stream (the files' order, the crops, the shuffle
buffer, the distortion seed first + i), whichever step a run resumed from starts it.
"""

import hashlib
import json
import sys
from pathlib import Path

from plumbing.errors import InputError
from plumbing.runtime import STREAM_TRAIN_DISTORTIONS, STREAM_VAL_DISTORTIONS, derive_seed


def demo_manifest():
    """The demo corpus's manifest, writing the corpus and the manifest on first use."""
    from preprocessing.demo import default_demo_dir, ensure_pretraining_corpus
    from preprocessing.manifest import ManifestOptions, write_manifest

    corpus = ensure_pretraining_corpus(default_demo_dir())
    manifest = corpus / "manifest.csv"  # Inside the corpus folder: rewritten with it.
    if not manifest.exists():
        # Few demo patients per dataset: 60/20/20 so that val and test are not empty.
        write_manifest(
            ManifestOptions(
                datasets=str(corpus / "datasets.yaml"), root=str(corpus), out=str(manifest), fractions=[0.6, 0.2, 0.2]
            )
        )
    return manifest


def data_source(manifest=None, shards=None):
    """(source path, {split: number of slices}, content hash) of the training data (the demo's without either)."""
    if shards:
        index_path = Path(shards) / "index.json"
        if not index_path.exists():
            raise InputError(shards, "has no index.json; write shards with `python -m preprocessing.shards`")
        counts = {split: entry["slices"] for split, entry in json.loads(index_path.read_text()).items()}
        return Path(shards), counts, hashlib.sha256(index_path.read_bytes()).hexdigest()[:16]
    import pandas as pd

    from preprocessing.manifest import manifest_hash

    manifest = Path(manifest) if manifest else demo_manifest()
    if not manifest.is_file():
        raise InputError(manifest, "manifest does not exist")
    from preprocessing.pipeline import load_manifest

    frame = load_manifest(manifest)
    files = pd.Series(frame["path"].unique())
    missing = files[~files.map(lambda p: Path(p).exists())]
    if len(missing) == len(files):
        raise InputError(
            manifest,
            f"none of its {len(files)} files exist (e.g. {missing.iloc[0]}); was it written "
            "for another machine or folder?",
        )
    if len(missing):
        print(
            f"warning: {manifest}: {len(missing)} of its {len(files)} files do not exist (e.g. {missing.iloc[0]}); "
            "their slices are skipped.",
            file=sys.stderr,
        )
    counts = frame["split"].value_counts().to_dict()
    return manifest, counts, manifest_hash(manifest)


def checked_data(config):
    """(source, {split: slices}, content hash) of the run's data, once it holds a training batch and a val split."""
    source, counts, data_hash = data_source(config.manifest, config.shards)
    check_split(source, counts, config.slices_per_batch)
    return source, counts, data_hash


def check_split(source, counts, slices_per_batch, fractions="`python -m preprocessing.manifest --fractions`"):
    """Refuses (InputError naming `source`) a split whose {split: slices} `counts` cannot pretrain: fewer training
    slices than one batch, or no validation slices; `fractions` says where the user sets the split."""
    if counts.get("train", 0) < slices_per_batch:
        raise InputError(
            source, f"has {counts.get('train', 0)} training slices, fewer than one batch of {slices_per_batch}"
        )
    if not counts.get("val", 0):
        raise InputError(
            source, f"has no validation slices, on which the best epoch is chosen; give it a val split ({fractions})"
        )


def pairs(source, split, config, training, first_seed, batch_size=None, share=None, first_batch=0):
    """(inputs, targets) batches of a PretrainConfig's data; batch i is made with seed first_seed + i.

    Restoration's (distorted, target) pairs, the contrastive objectives' views (`restoration`,
    `discrimination`, `both` below); `batch_size` counts images through the encoder, views
    included.

    `batch_size` defaults to config.batch_size; with a `share` (index, count) only worker
    `index`'s share of the data is read, in an order and crops seeded for that worker.
    `first_batch` starts the stream at that batch: the batches before it are read and
    dropped (not distorted), so the file order, the crops and the shuffle buffer are those
    of a run that never stopped (a resumed run continues the very same stream).
    """
    import tensorflow as tf

    from plumbing.runtime import STREAM_WORKER_DATA
    from preprocessing.pipeline import make_dataset, ordered

    seed = config.seed if share is None else derive_seed(config.seed, STREAM_WORKER_DATA, share[0])
    batch_size = batch_size or config.batch_size  # Images through the encoder: two views of half as many slices.
    images = make_dataset(
        source,
        split,
        batch_size // 2 if config.two_views else batch_size,
        config.crop_size,
        config.image_size,
        training=training,
        shuffle_buffer=config.shuffle_buffer,
        seed=seed,
        drop_remainder=training,
        share=share,
    )
    rates = config.distortions.make_pair_kwargs()
    if first_batch:
        images = images.skip(first_batch)
    make = {"genesis": restoration, "contrastive": discrimination, "genesis+contrastive": both}[config.objective]
    return (
        images.enumerate(start=first_batch)
        .map(
            lambda i, x: make(x, tf.cast(first_seed, tf.int64) + i, rates),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=ordered(training),
        )
        .prefetch(tf.data.AUTOTUNE)
    )


# One batch of each objective from a batch of slices and its seed: (inputs, targets) as the model's losses take them.
def restoration(images, seed, rates):
    """(distorted, target): Models Genesis's pair."""
    from genesis2d.transforms import tf_make_pair

    return tf_make_pair(images, seed, **rates)


def discrimination(images, seed, rates):
    """(views, unused targets): two views of each slice, interleaved (`genesis2d.contrastive.make_views`)."""
    import tensorflow as tf

    from genesis2d.contrastive import tf_make_views

    views = tf_make_views(images, seed)
    return views, tf.zeros(tf.shape(views)[:1])


def both(images, seed, rates):
    """(distorted views, {restored: views, embedding: unused}): the views, then Models Genesis's distortions."""
    import tensorflow as tf

    from genesis2d.contrastive import EMBEDDING, RESTORED, tf_make_views
    from genesis2d.transforms import tf_make_pair

    distorted, targets = tf_make_pair(tf_make_views(images, seed), seed, **rates)
    return distorted, {RESTORED: targets, EMBEDDING: tf.zeros(tf.shape(distorted)[:1])}


def worker_datasets(source, config, strategy, first_step, worker, workers):
    """(train, val, samples) on one worker of several: distributed training and validation data of its own share.

    Worker k's batch i is distorted with seed derive_seed(seed, stream, k) + i; `val` is a
    callable giving a fresh pass over the validation split; `samples` is this worker's
    first validation batch (the chief draws it in the epoch figures).
    """
    import tensorflow as tf

    def share(context):
        return context.input_pipeline_id, context.num_input_pipelines

    def train_fn(context):
        seed = derive_seed(config.seed, STREAM_TRAIN_DISTORTIONS, context.input_pipeline_id)
        return pairs(
            source,
            "train",
            config,
            True,
            seed,
            context.get_per_replica_batch_size(config.batch_size),
            share(context),
            first_batch=first_step,
        )

    def val_fn(context):
        seed = derive_seed(config.seed, STREAM_VAL_DISTORTIONS, context.input_pipeline_id)
        return pairs(
            source, "val", config, False, seed, context.get_per_replica_batch_size(config.batch_size), share(context)
        )

    train = strategy.distribute_datasets_from_function(train_fn)
    samples = val_fn(tf.distribute.InputContext(workers, worker, strategy.num_replicas_in_sync))
    return train, lambda: strategy.distribute_datasets_from_function(val_fn), samples
