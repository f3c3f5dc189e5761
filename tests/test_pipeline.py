import numpy as np
import pandas as pd

import preprocessing.pipeline as pipeline
from preprocessing.shards import write_shards


def test_manifest_batches_have_shape_dtype_range(demo_manifest):
    import tensorflow as tf

    batches = pipeline.make_dataset(demo_manifest, "train", batch_size=4, crop_size=96, image_size=48, seed=1)
    for batch in batches.take(3):
        assert batch.shape == (4, 48, 48, 1) and batch.dtype == tf.float32
        values = batch.numpy()
        assert values.min() >= 0.0 and values.max() <= 1.0 and np.isfinite(values).all()


def test_each_volume_is_read_once_per_pass(demo_manifest, monkeypatch):
    frame = pd.read_csv(demo_manifest, dtype={"patient_id": str})
    val = frame[frame["split"] == "val"]
    calls = []
    real = pipeline.read_image
    monkeypatch.setattr(pipeline, "read_image", lambda path, slices=None: calls.append(path) or real(path, slices))
    seen = sum(int(b.shape[0]) for b in pipeline.make_dataset(demo_manifest, "val", batch_size=5, crop_size=64,
                                                               image_size=32))
    assert seen == len(val)
    assert sorted(calls) == sorted(val["path"].unique())


def test_shards_hold_the_same_slices_as_the_manifest(demo_manifest, tmp_path):
    index = write_shards(demo_manifest, tmp_path / "shards", slices_per_shard=16, progress=False)
    frame = pd.read_csv(demo_manifest)
    assert index["val"]["slices"] == (frame["split"] == "val").sum()
    from_manifest = np.concatenate(list(pipeline.make_dataset(demo_manifest, "val", batch_size=8, crop_size=64,
                                                                image_size=64).as_numpy_iterator()))
    from_shards = np.concatenate(list(pipeline.make_dataset(tmp_path / "shards", "val", batch_size=8, crop_size=64,
                                                              image_size=64).as_numpy_iterator()))
    assert from_shards.shape == from_manifest.shape
    # Same volumes, same order, 16-bit quantisation apart.
    np.testing.assert_allclose(np.sort(from_shards.ravel()), np.sort(from_manifest.ravel()), atol=2e-5)
    # A rerun skips finished splits.
    again = write_shards(demo_manifest, tmp_path / "shards", progress=False)
    assert again == index
