"""Kept work is reused only for the same content: shards name a changed image, --resume names a changed setting."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_PRETRAIN
from test_second_process import snapshot

from plumbing.errors import UsageError
from preprocessing.shards import write_shards


@pytest.fixture
def corpus_copy(demo_dir, demo_manifest, tmp_path):
    """A copy of the demo corpus and a manifest of it: (manifest, corpus folder)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_dir / "pretrain", corpus)
    frame = pd.read_csv(demo_manifest, dtype={"patient_id": str})
    frame["path"] = frame["path"].str.replace(str(demo_dir / "pretrain"), str(corpus), regex=False)
    manifest = tmp_path / "manifest.csv"
    frame.to_csv(manifest, index=False)
    return manifest, corpus, frame


def _touch_bytes(path, offset=-1):
    """Changes one byte of `path` in place, keeping its size; its time moves on."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [".mhd", ".png", "dicom"])
def test_a_changed_image_is_named_and_its_shards_are_not_kept(corpus_copy, tmp_path, kind, capsys):
    manifest, corpus, frame = corpus_copy
    split = "val"
    paths = frame.loc[frame["split"] == split, "path"].unique()
    if kind == "dicom":
        folder = next(p for p in map(Path, paths) if p.is_dir())
        changed = sorted(folder.iterdir())[0]
    else:
        changed = next(p for p in map(Path, paths) if p.suffix == kind)
        if kind == ".mhd":  # The pixels are in the data file the header names.
            changed = changed.with_suffix(".raw") if changed.with_suffix(".raw").exists() else changed
    out = tmp_path / "shards"
    recorded = write_shards(manifest, out, splits=(split,), progress=False)[split]["inputs"]["images"]
    write_shards(manifest, out, splits=(split,), progress=False)  # Same rows and images: kept.
    assert "kept" in capsys.readouterr().out
    before = snapshot(out)
    _touch_bytes(changed)
    with pytest.raises(UsageError) as refused:
        write_shards(manifest, out, splits=(split,), progress=False)
    assert f"the {split} images ({changed.relative_to(corpus).as_posix()} changed (same size, other content))" in str(
        refused.value
    )
    assert snapshot(out) == before
    index = write_shards(manifest, out, splits=(split,), progress=False, overwrite=True)
    assert index[split]["inputs"]["images"] != recorded
    capsys.readouterr()
    write_shards(manifest, out, splits=(split,), progress=False)  # Recorded anew: kept.
    assert "kept" in capsys.readouterr().out


def test_shards_of_an_earlier_version_without_image_records_are_named(corpus_copy, tmp_path):
    manifest, _, _ = corpus_copy
    out = tmp_path / "shards"
    write_shards(manifest, out, splits=("val",), progress=False)
    index = json.loads((out / "index.json").read_text())
    del index["val"]["inputs"]["images"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="written before shards recorded their images' content"):
        write_shards(manifest, out, splits=("val",), progress=False)


@pytest.mark.parametrize(
    "change, named",
    [
        (["--lr", "0.02"], "--lr"),
        (["--seed", "3"], "--seed"),
        (["--batch-size", "8"], "--batch-size"),
        (["--manifest", "OTHER"], "--manifest/--shards"),
    ],
)
def test_resume_with_a_setting_that_changes_the_run_stops_naming_it(
    pretrained_run, demo_manifest, tmp_path, change, named, capsys
):
    from genesis2d.pretrain import main

    out = tmp_path / "run"
    shutil.copytree(pretrained_run[0], out)
    other = tmp_path / "other.csv"  # The same slices but one: other data.
    pd.read_csv(demo_manifest).iloc[1:].to_csv(other, index=False)
    change = [str(other) if value == "OTHER" else value for value in change]
    argv = ["--manifest", str(demo_manifest), "--out", str(out), *TINY_PRETRAIN, "--steps-per-epoch", "2"]
    before = snapshot(out)
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--epochs", "2", "--resume", *change])  # More epochs: a continuation, but of another run.
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {named}: {out} was trained")
    assert snapshot(out) == before  # run.json and the card untouched.


def test_an_image_gone_is_named_as_removed(corpus_copy, tmp_path, capsys):
    manifest, corpus, frame = corpus_copy
    gone = next(Path(p) for p in frame.loc[frame["split"] == "val", "path"].unique() if p.endswith(".png"))
    out = tmp_path / "shards"
    write_shards(manifest, out, splits=("val",), progress=False)
    gone.unlink()
    with pytest.raises(UsageError, match=f"the val images \\(removed {gone.relative_to(corpus).as_posix()}\\)"):
        write_shards(manifest, out, splits=("val",), progress=False)
