import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import preprocessing.pipeline as pipeline
from plumbing.errors import InputError
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
    monkeypatch.setattr(
        pipeline, "read_image", lambda path, slices=None, **options: calls.append(path) or real(path, slices, **options)
    )
    seen = sum(
        int(b.shape[0]) for b in pipeline.make_dataset(demo_manifest, "val", batch_size=5, crop_size=64, image_size=32)
    )
    assert seen == len(val)
    assert sorted(calls) == sorted(val["path"].unique())
    # Two workers of a multi-machine run: each reads its own volumes, together all of them, none twice.
    shares = []
    for worker in range(2):
        calls.clear()
        seen = sum(
            int(b.shape[0])
            for b in pipeline.make_dataset(
                demo_manifest, "val", batch_size=5, crop_size=64, image_size=32, share=(worker, 2)
            )
        )
        shares.append((seen, sorted(calls)))
    assert shares[0][0] + shares[1][0] == len(val)
    assert not set(shares[0][1]) & set(shares[1][1])
    assert sorted(shares[0][1] + shares[1][1]) == sorted(val["path"].unique())


def test_shards_hold_the_same_slices_as_the_manifest(demo_manifest, tmp_path):
    index = write_shards(demo_manifest, tmp_path / "shards", slices_per_shard=16, progress=False)
    frame = pd.read_csv(demo_manifest)
    assert index["val"]["slices"] == (frame["split"] == "val").sum()
    from_manifest = np.concatenate(
        list(pipeline.make_dataset(demo_manifest, "val", batch_size=8, crop_size=64, image_size=64).as_numpy_iterator())
    )
    from_shards = np.concatenate(
        list(
            pipeline.make_dataset(
                tmp_path / "shards", "val", batch_size=8, crop_size=64, image_size=64
            ).as_numpy_iterator()
        )
    )
    assert from_shards.shape == from_manifest.shape
    # Same volumes, same order, 16-bit quantisation apart.
    np.testing.assert_allclose(np.sort(from_shards.ravel()), np.sort(from_manifest.ravel()), atol=2e-5)
    # A rerun with the same rows and settings keeps finished splits.
    again = write_shards(demo_manifest, tmp_path / "shards", slices_per_shard=16, progress=False)
    assert again == index
    # PNG-encoded shards (and those of older versions, all PNG) hold the same pixels.
    write_shards(demo_manifest, tmp_path / "png", splits=["val"], progress=False, encoding="png")
    from_png = np.concatenate(
        list(
            pipeline.make_dataset(
                tmp_path / "png", "val", batch_size=8, crop_size=64, image_size=64
            ).as_numpy_iterator()
        )
    )
    np.testing.assert_array_equal(np.sort(from_png.ravel()), np.sort(from_shards.ravel()))
    # Workers' shares of the shards: disjoint, together every slice; more workers than shards is one line.
    shares = [
        [
            r["volume"] + b"#" + r["raw"]
            for r in pipeline.shard_records(
                tmp_path / "shards", "val", training=False, seed=0, share=(k, 2)
            ).as_numpy_iterator()
        ]
        for k in range(2)
    ]
    assert len(shares[0]) + len(shares[1]) == index["val"]["slices"] and not set(shares[0]) & set(shares[1])
    shards = len(list((tmp_path / "shards").glob("val-*.tfrecord")))
    with pytest.raises(InputError, match=f"has {shards} 'val' shards .*, fewer than the {shards + 1} workers"):
        pipeline.shard_records(tmp_path / "shards", "val", training=False, seed=0, share=(shards, shards + 1))


def test_shards_mix_volumes_and_modalities_in_every_batch(tmp_path):
    """130 volumes of three modalities: a training batch of 32 from the shards holds many of them."""
    import nibabel as nib

    from preprocessing.demo import write_png
    from preprocessing.pipeline import shard_records

    rng = np.random.default_rng(0)
    rows = []
    for modality, volumes, depth in (("CT", 40, 8), ("MR", 30, 8), ("XR", 160, 1)):
        for v in range(volumes):
            if modality == "XR":
                path = tmp_path / "xr" / f"p{v}.png"
                write_png(path, rng.random((24, 24)))
            else:
                path = tmp_path / modality / f"v{v}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(rng.integers(0, 1000, (24, 24, depth)).astype(np.int16), np.eye(4)), path)
            rows += [(f"D{modality}", modality, "X", f"{modality}{v}", str(path), z, "train") for z in range(depth)]
    frame = pd.DataFrame(
        rows, columns=["dataset", "modality", "body_part", "patient_id", "path", "slice_index", "split"]
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    write_shards(tmp_path / "m.csv", tmp_path / "shards", slices_per_shard=32, progress=False)
    records = shard_records(tmp_path / "shards", "train", training=True, seed=0).batch(32).take(20)
    share = frame["modality"].value_counts(normalize=True)
    distinct, complete, shares = [], 0, []
    for batch in records.as_numpy_iterator():
        modalities = pd.Series([m.decode() for m in batch["modality"]])
        distinct.append(len(set(batch["volume"])))
        complete += set(modalities) == {"CT", "MR", "XR"}
        shares.append(modalities.value_counts(normalize=True).reindex(share.index, fill_value=0))
    assert np.median(distinct) >= 20  # Slices of at least 20 volumes in a typical batch of 32 ...
    assert complete >= 18  # ... of all three modalities (in 18 of 20 batches or more) ...
    np.testing.assert_allclose(pd.concat(shares, axis=1).mean(axis=1), share, atol=0.06)  # ... in their proportions.


def test_shards_record_what_made_them_and_say_what_changed(demo_dir, demo_manifest, tmp_path, capsys):
    from plumbing.errors import UsageError

    frame = pd.read_csv(demo_manifest, dtype={"patient_id": str})
    frame = frame[frame["split"] == "val"]
    frame.to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "shards"
    index = write_shards(tmp_path / "m.csv", out, slices_per_shard=16, progress=False)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("val-*.tfrecord")}
    # The same rows over a moved data folder (a manifest rebuilt there): kept.
    moved = tmp_path / "moved"
    shutil.copytree(demo_dir / "pretrain", moved)
    relocated = frame.assign(path=[str(moved / Path(p).relative_to(demo_dir / "pretrain")) for p in frame["path"]])
    relocated.to_csv(tmp_path / "moved.csv", index=False)
    assert write_shards(tmp_path / "moved.csv", out, slices_per_shard=16, progress=False) == index
    assert "made from these rows and settings; kept" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("val-*.tfrecord")} == stamp
    # Another encoding, or rows removed from the manifest: stop, name it, write nothing.
    with pytest.raises(UsageError, match=r"val: --encoding 'raw' -> 'png'\); pass --overwrite"):
        write_shards(tmp_path / "m.csv", out, slices_per_shard=16, progress=False, encoding="png")
    frame.iloc[:-2].to_csv(tmp_path / "fewer.csv", index=False)
    with pytest.raises(
        UsageError, match=f"val: the manifest's val rows \\({len(frame):,} rows then, {len(frame) - 2:,} now\\)"
    ):
        write_shards(tmp_path / "fewer.csv", out, slices_per_shard=16, progress=False)
    changed = frame.copy()
    changed.loc[changed.index[0], "slice_index"] += 1
    changed.to_csv(tmp_path / "changed.csv", index=False)
    with pytest.raises(UsageError, match=f"the manifest's val rows \\({len(frame):,} rows, other content\\)"):
        write_shards(tmp_path / "changed.csv", out, slices_per_shard=16, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("val-*.tfrecord")} == stamp
    # --overwrite writes them again, from the new rows.
    redone = write_shards(tmp_path / "fewer.csv", out, slices_per_shard=16, progress=False, overwrite=True)
    assert redone["val"]["slices"] == len(frame) - 2
    assert write_shards(tmp_path / "fewer.csv", out, slices_per_shard=16, progress=False) == redone
