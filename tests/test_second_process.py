"""A second process on a busy output folder stops with one line and changes nothing in it.

The first process is played by a child process holding the folder's lock (`plumbing.lock.output_lock`)
and sleeping, as a running command does; each command is then started on that folder.
"""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN

from plumbing.errors import UsageError
from plumbing.fingerprint import file_sha256
from plumbing.lock import LOCK_FILE, output_lock

_HOLDER = """
import sys, time
from plumbing.lock import output_lock
with output_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def hold():
    """`hold(folder, name=LOCK_FILE)`: a live process of this machine takes the folder's lock and keeps it; its pid."""
    holders = []

    def take(folder, name=LOCK_FILE):
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), name], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder.pid

    yield take
    for holder in holders:
        holder.kill()
        holder.wait()


def snapshot(folder):
    """Every file and folder under `folder`: content hash and modification time."""
    return {
        str(path.relative_to(folder)): (file_sha256(path) if path.is_file() else "folder", path.stat().st_mtime_ns)
        for path in sorted(Path(folder).rglob("*"))
    }


def refused(main, argv, folder, pid, capsys):
    """Runs a command's `main` on `folder` held by `pid`; asserts one line naming the lock and nothing changed."""
    before = snapshot(folder)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err[-1].startswith(f"error: {folder}: is in use by process {pid} on {socket.gethostname()}"), err
    assert snapshot(folder) == before


@pytest.mark.slow
def test_pretraining_on_a_busy_out_changes_nothing(pretrained_run, demo_manifest, tmp_path, hold, capsys):
    from genesis2d.pretrain import main

    out = tmp_path / "run"
    shutil.copytree(pretrained_run[0], out)
    argv = ["--manifest", str(demo_manifest), "--out", str(out), *TINY_PRETRAIN, "--epochs", "1"]
    pid = hold(out)
    for extra in ([], ["--overwrite"], ["--resume", "--epochs", "2"]):  # Kept, replaced, continued.
        refused(main, [*argv, "--steps-per-epoch", "2", *extra], out, pid, capsys)
    # The worst case: a run stopped before its first checkpoint, which a free folder starts again from step 0.
    shutil.rmtree(out / "checkpoint")
    refused(main, [*argv, "--steps-per-epoch", "2"], out, pid, capsys)
    assert (out / "run.json").is_file() and (out / "history.csv").is_file() and (out / "logs").is_dir()


@pytest.mark.slow
def test_shards_on_a_busy_out_change_nothing(demo_manifest, tmp_path, hold, capsys):
    from preprocessing.shards import main, write_shards

    out = tmp_path / "shards"
    write_shards(demo_manifest, out, splits=("val",), progress=False)
    pid = hold(out)
    for extra in ([], ["--overwrite"], ["--seed", "1"]):
        refused(
            main,
            ["--manifest", str(demo_manifest), "--out", str(out), "--splits", "val", *extra],
            out,
            pid,
            capsys,
        )


@pytest.mark.slow
def test_a_manifest_being_written_is_not_written_twice(demo_dir, tmp_path, hold, capsys):
    from preprocessing.manifest import main

    out = tmp_path / "corpus" / "manifest.csv"
    out.parent.mkdir()
    out.write_text("dataset,path\n")
    pid = hold(out.parent, ".manifest.csv.lock")
    argv = ["--datasets", str(demo_dir / "pretrain" / "datasets.yaml"), "--root", str(demo_dir / "pretrain")]
    refused(main, [*argv, "--out", str(out)], out.parent, pid, capsys)
    # Only that manifest's files are locked: another manifest in the folder is written meanwhile.
    main([*argv, "--out", str(out.with_name("other.csv")), "--no-verify"])
    assert out.with_name("other.csv").is_file() and out.read_text() == "dataset,path\n"


@pytest.mark.slow
def test_patch_extraction_on_a_busy_out_changes_nothing(demo_dir, tmp_path, hold, capsys):
    from luna16.data import main

    out = tmp_path / "patches"
    (out / "subset0").mkdir(parents=True)
    (out / "subset0" / "done.json").write_text("{}")  # Stale: a free folder extracts it again.
    pid = hold(out)
    refused(main, ["--data", str(demo_dir / "LUNA16"), "--out", str(out), "--workers", "1"], out, pid, capsys)


@pytest.mark.slow
def test_a_downstream_run_on_a_busy_out_changes_nothing(demo_dir, tmp_path, hold, capsys):
    from mura.experiment import main

    out = tmp_path / "mura"
    (out / "repeat1").mkdir(parents=True)
    (out / "repeat1" / "history.csv").write_text("epoch,loss\n0,1.0\n")
    pid = hold(out)
    argv = ["--data", str(demo_dir), "--out", str(out), "--init", "scratch", "--backbone", "resnet18"]
    refused(main, argv, out, pid, capsys)


@pytest.mark.slow
def test_the_study_demo_stops_at_a_busy_stage_and_changes_nothing(tmp_path, hold, capsys):
    from study.command import main

    out = tmp_path / "study"
    busy = out / "pretrain" / "resnet18"  # The genesis arm's folder, which another process writes.
    pid = hold(busy)
    refused(main, ["--out", str(out), "--backbone", "resnet18"], busy, pid, capsys)
    assert sorted(path.name for path in out.iterdir()) == ["corpus", "pretrain", "steps"]  # No cell ran.
    assert sorted(path.name for path in (out / "pretrain").iterdir()) == ["resnet18"]


@pytest.mark.slow
def test_a_lock_leaves_no_empty_folder_it_made(tmp_path):
    with pytest.raises(UsageError):
        with output_lock(tmp_path / "new" / "out"):
            raise UsageError("--manifest", "is wrong")  # A command refused on its inputs, holding the lock.
    assert not (tmp_path / "new").exists()
    with output_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "result.json").write_text("{}")
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == ["result.json"]
