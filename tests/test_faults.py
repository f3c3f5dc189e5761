"""Breaking things on purpose: cut files, stale caches, killed writes, bad coordinates, full disks.

Each case ends either in a correct result or in one line that names the file and the problem.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PRETRAIN

from plumbing.errors import ImageReadError, InputError, UsageError
from preprocessing.demo import write_dicom_series, write_itk
from preprocessing.readers import read_image

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- readers


def test_short_raw_says_so(tmp_path):
    path = tmp_path / "scan.mhd"
    write_itk(path, np.zeros((4, 8, 8), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ImageReadError, match=r"scan.raw holds 100 bytes but the header needs 512"):
        read_image(path)
    raw.unlink()
    with pytest.raises(ImageReadError, match="names the data file scan.raw, which does not exist"):
        read_image(path)


def test_a_jpeg_saved_as_png_is_read_by_its_content(tmp_path):
    import cv2

    image = (np.arange(40 * 30).reshape(40, 30) % 251).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (tmp_path / "x.png").write_bytes(encoded.tobytes())
    array, meta = read_image(tmp_path / "x.png")
    assert array.shape == (40, 30) and np.abs(array - image).mean() < 2
    (tmp_path / "cut.png").write_bytes(encoded.tobytes()[: len(encoded) // 2])
    with pytest.raises(ImageReadError, match="truncated .a JPEG without its end-of-image marker"):
        read_image(tmp_path / "cut.png")


def test_a_dicom_series_with_a_missing_slice_warns(tmp_path, capsys):
    volume = np.stack([np.full((6, 5), 10.0 * k) for k in range(6)])
    folder = write_dicom_series(tmp_path / "series", volume, (0.7, 0.7, 2.0), (0, 0, 0), patient_id="p", rng=1)
    files = sorted(folder.iterdir(), key=lambda p: float(__import__("pydicom").dcmread(p).ImagePositionPatient[2]))
    files[3].unlink()  # The fourth of six positions.
    array, meta = read_image(folder)
    assert array.shape == (5, 6, 5) and meta["spacing"][2] == pytest.approx(2.0)
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {folder}: slices are missing between positions 4.00 and 8.00 mm")


# --------------------------------------------------------------------------- manifest


def _table(root, entries):
    lines = ["datasets:"]
    for name, files in entries:
        lines += [
            f"  - name: {name}",
            "    modality: CT",
            "    body_part: CHEST",
            f'    files: "{files}"',
            '    patient_id: "(p\\\\d+)"',
            "    slices_per_patient: all",
        ]
    (root / "table.yaml").write_text("\n".join(lines) + "\n")
    return root / "table.yaml"


def test_manifest_decodes_what_it_keeps_and_writes_absolute_paths(tmp_path, capsys, monkeypatch):
    from preprocessing.manifest import main

    root = tmp_path / "data"
    volume = np.linspace(-1000, 400, 4 * 16 * 16).reshape(4, 16, 16).astype(np.int16)
    write_itk(root / "mhd" / "p1.mhd", volume, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    write_itk(root / "mhd" / "p2.mhd", volume, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    raw = root / "mhd" / "p2.raw"
    raw.write_bytes(raw.read_bytes()[: raw.stat().st_size * 6 // 10])  # The header is fine, the data short.
    (root / "nii").mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.arange(16 * 16 * 40, dtype=np.int16).reshape(16, 16, 40), np.eye(4)),
        root / "nii" / "p3.nii.gz",
    )
    good = (root / "nii" / "p3.nii.gz").read_bytes()
    (root / "nii" / "p4.nii.gz").write_bytes(good[: len(good) * 6 // 10])  # A cut .nii.gz: its header reads.
    series = write_dicom_series(root / "dcm" / "p5", volume.astype(float), (1.0, 1.0, 2.0), (0, 0, 0), "p5", rng=0)
    cut = sorted(series.iterdir())[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])  # A DICOM cut at 60%.
    table = _table(root, [("MHD", "mhd/*.mhd"), ("NII", "nii/*.nii.gz"), ("DCM", "dcm/*/")])
    monkeypatch.chdir(tmp_path)
    frame = main(
        ["--datasets", str(table), "--root", "data", "--out", str(tmp_path / "m.csv"), "--fractions", "1", "0", "0"]
        + ["--min-side", "8"]  # Tiny stand-in images.
    )
    captured = capsys.readouterr()
    assert set(frame["patient_id"]) == {"p1", "p3"}  # Only what decodes.
    assert "3 unreadable files skipped" in captured.out
    for name in ("p2.mhd", "p4.nii.gz", "p5"):
        assert name in captured.err
    assert all(Path(p).is_absolute() for p in frame["path"])  # Built from a relative --root.
    unchecked = main(
        [
            "--datasets",
            str(table),
            "--root",
            "data",
            "--out",
            str(tmp_path / "u.csv"),
            "--no-verify",
            "--fractions",
            "1",
            "0",
            "0",
        ]
    )
    # Headers alone accept the cut NIfTI and DICOM (the .mhd's header check already sees its short .raw).
    assert {"p4", "p5"} <= set(unchecked["patient_id"]) and "p2" not in set(unchecked["patient_id"])


def test_pipeline_stops_when_no_file_of_a_split_can_be_read(tmp_path):
    import tensorflow as tf

    from preprocessing.pipeline import NO_SLICE_LEFT, make_dataset

    frame = pd.DataFrame(
        {
            "path": [str(tmp_path / f"gone{i}.nii.gz") for i in range(3)],
            "slice_index": 0,
            "modality": "CT",
            "split": "train",
        }
    )
    with pytest.raises(tf.errors.OpError, match=NO_SLICE_LEFT):
        next(iter(make_dataset(frame, "train", batch_size=2, crop_size=32, image_size=32)))


@pytest.mark.slow
def test_pretraining_refuses_a_manifest_whose_files_are_gone(demo_manifest, tmp_path, capsys):
    from genesis2d.pretrain import main

    frame = pd.read_csv(demo_manifest)
    frame["path"] = [f"moved/{Path(p).name}" for p in frame["path"]]
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), *TINY_PRETRAIN])
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'm.csv'}: none of its") and "files exist" in line


# --------------------------------------------------------------------------- pretraining outputs


@pytest.mark.slow
def test_finished_pretraining_is_never_replaced_by_accident(pretrained_run, tmp_path):
    from genesis2d.pretrain import parse_args, run

    out = tmp_path / "run"
    shutil.copytree(pretrained_run[0], out)
    manifest = json.loads((out / "run.json").read_text())["args"]["manifest"]
    options = ["--manifest", manifest, "--out", str(out), *TINY_PRETRAIN, "--epochs", "1", "--steps-per-epoch", "1"]
    with pytest.raises(
        UsageError,
        match=r"holds results made with other settings or inputs \(steps_per_epoch 2 -> 1\); "
        "pass --overwrite",
    ):
        run(parse_args(options))
    (out / "samples_epoch007.png").write_bytes(b"old")  # From an earlier, longer run.
    (out / "checkpoint" / ".tmp-ckpt-E0001.weights.h5").write_bytes(b"left by a kill")
    card = run(parse_args([*options, "--overwrite"]))
    assert card["epochs"] == 1 and not (out / "samples_epoch007.png").exists()
    assert not list((out / "checkpoint").glob(".tmp-*"))
    assert len(pd.read_csv(out / "history.csv")) == 1


def test_an_export_killed_half_way_is_finished_or_dropped(tmp_path):
    from genesis2d.pretrain import BEST_FILES, STAGING, commit_export

    out = tmp_path / "run"
    staging = out / STAGING
    staging.mkdir(parents=True)
    for name in BEST_FILES:
        (out / name).write_text(f"epoch 1 {name}")
    # Killed while moving epoch 2's files into place: staging complete (its card is there), two moved already.
    for name in BEST_FILES:
        (staging / name).write_text(f"epoch 2 {name}")
    for name in BEST_FILES[:2]:
        os.replace(staging / name, out / name)
    assert commit_export(out) is True
    assert all((out / n).read_text() == f"epoch 2 {n}" for n in BEST_FILES) and not staging.exists()
    # Killed while writing the staging folder (no card yet): the previous unit stays whole.
    staging.mkdir()
    (staging / "unet.keras").write_text("epoch 3, alone")
    assert commit_export(out) is False
    assert all((out / n).read_text() == f"epoch 2 {n}" for n in BEST_FILES) and not staging.exists()


def test_card_names_its_files_and_what_chose_the_best_epoch(pretrained_run):
    from plumbing.fingerprint import file_sha256

    out, card = pretrained_run
    saved = json.loads((out / "card.json").read_text())
    assert saved["best_epoch_chosen_on"].startswith("validation loss")
    for name, digest in saved["files"].items():
        assert file_sha256(out / name) == digest, name


@pytest.mark.slow
def test_validation_smaller_than_a_batch_still_validates(demo_manifest, tmp_path):
    from genesis2d.pretrain import parse_args, run

    frame = pd.read_csv(demo_manifest)
    val = frame[frame["split"] == "val"]
    small = pd.concat([frame[frame["split"] == "train"], val[val["path"] == val["path"].iloc[0]].head(3)])
    small.to_csv(tmp_path / "m.csv", index=False)
    run(
        parse_args(
            [
                "--manifest",
                str(tmp_path / "m.csv"),
                "--out",
                str(tmp_path / "o"),
                *TINY_PRETRAIN,
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
            ]
        )
    )
    history = pd.read_csv(tmp_path / "o" / "history.csv")
    assert "val_loss" in history and np.isfinite(history["val_loss"]).all()  # 3 slices, batch 4.
    frame[frame["split"] == "train"].to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(InputError, match="has no validation slices"):
        run(parse_args(["--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "n"), *TINY_PRETRAIN]))


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line(demo_manifest, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "genesis2d" / "train.py"),
            "--manifest",
            str(demo_manifest),
            "--out",
            str(tmp_path / "o"),
            *TINY_PRETRAIN,
            "--epochs",
            "1",
            "--steps-per-epoch",
            "4",
            "--lr",
            "1e30",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: training: diverged at epoch 1: the loss is ")
    assert result.stderr.strip().endswith("lower --lr (or check the inputs).")


def test_a_read_only_output_is_one_line(tmp_path, capsys):
    from plumbing.cli import run_command

    def write(_):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "card.json"))

    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda argv: None, write, [])
    assert exit_info.value.code == 1
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'ro' / 'card.json'}: cannot be written or read (Permission denied).\n"
    )


# --------------------------------------------------------------------------- LUNA16 caches and candidates


def _luna_copy(demo_dir, tmp_path):
    data = tmp_path / "LUNA16"
    data.mkdir()
    for name in ("candidates_V2.csv", "annotations.csv"):
        shutil.copy(demo_dir / "LUNA16" / name, data)
    shutil.copytree(demo_dir / "LUNA16" / "subset0", data / "subset0")
    return data


def test_patch_caches_follow_their_inputs_and_retry_failed_scans(demo_dir, tmp_path, capsys):
    from luna16.data import extract_subsets

    data, out = _luna_copy(demo_dir, tmp_path), tmp_path / "patches"
    extract_subsets(data, out, size=16, positive_copies=2, progress=False)
    record = json.loads((out / "subset0" / "done.json").read_text())
    stamp = (out / "subset0" / "patches.npy").stat().st_mtime_ns
    extract_subsets(data, out, size=16, positive_copies=2, progress=False)  # Same inputs: kept.
    assert (out / "subset0" / "patches.npy").stat().st_mtime_ns == stamp
    # Another data tree: one scan replaced by a corrupt file. Not reused; the scan is skipped and recorded.
    scan = sorted((data / "subset0").glob("*.mhd"))[0]
    raw = scan.with_suffix(".raw")
    good = raw.read_bytes()
    raw.write_bytes(good[:50])
    extract_subsets(data, out, size=16, positive_copies=2, progress=False)
    failed = json.loads((out / "subset0" / "done.json").read_text())
    assert failed["skipped_scans"] == [str(scan)] and failed["candidates"] < record["candidates"]
    assert "holds 50 bytes" in capsys.readouterr().err
    raw.write_bytes(good)  # Fixed: the failed scan is retried.
    extract_subsets(data, out, size=16, positive_copies=2, progress=False)
    assert json.loads((out / "subset0" / "done.json").read_text())["candidates"] == record["candidates"]
    # A kill after the arrays but before done.json: the subset is extracted again, not trusted.
    (out / "subset0" / "done.json").unlink()
    (out / "subset0" / "patches.npy").write_bytes(b"cut")
    extract_subsets(data, out, size=16, positive_copies=2, progress=False)
    assert np.load(out / "subset0" / "patches.npy").shape[0] == record["candidates"]


def test_candidates_outside_the_scan_or_without_coordinates_are_dropped_and_counted(demo_dir, tmp_path, capsys):
    from luna16.data import Subset, extract_subsets

    data, out = _luna_copy(demo_dir, tmp_path), tmp_path / "patches"
    candidates = pd.read_csv(data / "candidates_V2.csv")
    uid = sorted(p.stem for p in (data / "subset0").glob("*.mhd"))[0]
    extra = pd.DataFrame(
        {
            "seriesuid": [uid, uid, uid],
            "coordX": [np.nan, 5000.0, -5000.0],
            "coordY": [0.0, 0.0, 0.0],
            "coordZ": [0.0, 0.0, 0.0],
            "class": [0, 1, 0],
        }
    )
    pd.concat([candidates, extra]).to_csv(data / "candidates_V2.csv", index=False)
    extract_subsets(data, out, size=16, positive_copies=2, progress=False)
    subset = Subset(out / "subset0")
    assert subset.record["dropped_candidates"] == 3
    assert np.isfinite(subset.candidates[["coordX", "coordY", "coordZ"]].to_numpy()).all()
    assert "3 of its" in capsys.readouterr().err
    pd.concat([candidates, extra.assign(coordX=["x", 1, 2])]).to_csv(data / "candidates_V2.csv", index=False)
    with pytest.raises(InputError, match="1 rows with non-numeric coordinates or class"):
        extract_subsets(data, tmp_path / "p2", size=16, progress=False)


# --------------------------------------------------------------------------- MURA


def test_a_cut_or_empty_mura_image_is_named_when_the_split_is_read(demo_dir, tmp_path):
    from mura.data import read_split

    shutil.copytree(demo_dir / "MURA-v1.1", tmp_path / "MURA-v1.1")
    frame = read_split(tmp_path, "valid", ("XR_SHOULDER",))
    first, second = Path(frame["path"].iloc[0]), Path(frame["path"].iloc[1])
    first.write_bytes(first.read_bytes()[:200])
    second.write_bytes(b"")
    with pytest.raises(ImageReadError) as error:
        read_split(tmp_path, "valid", ("XR_SHOULDER",))
    assert str(error.value).startswith(f"{first}: is truncated") and "(1 more images fail too)" in str(error.value)


def test_input_errors_share_one_base():
    from transfer.encoders import InitError
    from transfer.results import ResultsError

    for kind in (ImageReadError, UsageError, InitError, ResultsError):
        assert issubclass(kind, InputError)


def test_a_malformed_tf_config_is_one_usage_error():
    from genesis2d.strategy import cluster_tasks

    assert cluster_tasks({}) == 0
    assert (
        cluster_tasks(
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "chief", "index": 0}}
                )
            }
        )
        == 3
    )
    with pytest.raises(UsageError, match="TF_CONFIG: is not a JSON object"):
        cluster_tasks({"TF_CONFIG": "{'cluster': "})


# ---- Writes that fail: the real file is named, nothing partial is left. ----
def test_a_failed_atomic_write_names_the_real_file_and_leaves_nothing(tmp_path):
    import errno

    from plumbing.atomic import TEMPORARY_PREFIX, atomic_path

    target = tmp_path / "encoder.h5"
    with pytest.raises(OSError) as caught:
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == [] and not list(tmp_path.glob(f"{TEMPORARY_PREFIX}*"))


def test_writing_the_bytes_a_file_already_holds_leaves_it_untouched(tmp_path):
    """A rerun that writes what it wrote before changes no modification time (a table, a text, a figure); other
    bytes, even of the same length, replace the file."""
    import os

    import numpy as np
    import pandas as pd

    from plumbing.atomic import TEMPORARY_PREFIX, write_csv, write_text
    from plumbing.figures import pyplot, save_figure

    def figure(values):
        plot = pyplot()
        drawing, axis = plot.subplots(figsize=(2, 2))
        axis.plot(values)
        return drawing

    table, text, picture = tmp_path / "t.csv", tmp_path / "r.md", tmp_path / "f.png"
    write_csv(table, pd.DataFrame({"a": [1, 2]}))
    write_text(text, "abc\n")
    save_figure(picture, figure(np.arange(3)))
    old = 1_000_000_000  # 2001: any write since would show.
    for path in (table, text, picture):
        os.utime(path, ns=(old, old))
    write_csv(table, pd.DataFrame({"a": [1, 2]}))
    write_text(text, "abc\n")
    save_figure(picture, figure(np.arange(3)))
    assert [p.stat().st_mtime_ns for p in (table, text, picture)] == [old] * 3
    write_csv(table, pd.DataFrame({"a": [1, 3]}))
    write_text(text, "abd\n")
    save_figure(picture, figure(np.arange(3) ** 2))
    assert all(p.stat().st_mtime_ns != old for p in (table, text, picture))
    assert table.read_text() == "a\n1\n3\n" and text.read_text() == "abd\n"
    assert not list(tmp_path.glob(f"{TEMPORARY_PREFIX}*"))


# =========================================================================== input: nothing read from outside the
# dataset, bad input is one line (exit 1 for data, 2 for usage), never a guess.


def _exit_line(main, argv, capsys):
    """(exit code, last stderr line) of a command expected to stop."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_a_metaimage_naming_a_file_outside_the_dataset_stops_the_manifest(tmp_path, capsys):
    from preprocessing.manifest import main

    root = tmp_path / "data"
    (tmp_path / "secret.txt").write_bytes(b"k" * 4096)
    write_itk(root / "mhd" / "p1.mhd", np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    text = (root / "mhd" / "p1.mhd").read_text()
    (root / "mhd" / "p2.mhd").write_text(text.replace("= p1.raw", "= ../../secret.txt"))
    table = _table(root, [("MHD", "mhd/*.mhd")])
    argv = [
        "--datasets",
        str(table),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "m.csv"),
        "--fractions",
        "1",
        "0",
        "0",
        "--min-side",
        "8",
    ]
    code, line = _exit_line(main, argv, capsys)
    assert code == 1 and line == (
        f"error: {root / 'mhd' / 'p2.mhd'}: names the data file ../../secret.txt, which lies "
        f"outside its folder {root / 'mhd'} (read only with --allow-outside-root)."
    )
    assert not (tmp_path / "m.csv").exists()
    frame = main([*argv, "--allow-outside-root"])  # Said explicitly: read.
    assert set(frame["patient_id"]) == {"p1", "p2"}


def test_a_symlink_leaving_the_root_stops_the_manifest(tmp_path, capsys):
    from preprocessing.manifest import main

    write_itk(tmp_path / "elsewhere" / "p9.mhd", np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    root = tmp_path / "data"
    write_itk(root / "mhd" / "p1.mhd", np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    (root / "mhd" / "p9.mhd").symlink_to(tmp_path / "elsewhere" / "p9.mhd")
    argv = [
        "--datasets",
        str(_table(root, [("MHD", "mhd/*.mhd")])),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "m.csv"),
    ]
    code, line = _exit_line(main, argv, capsys)
    assert code == 1 and line.startswith(f"error: {root / 'mhd' / 'p9.mhd'}: leads outside --root {root}")


@pytest.mark.parametrize(
    "body,message",
    [
        ("datasets:\n  - just a name\n", "dataset 1 is 'just a name', not a mapping of fields"),
        (
            'datasets:\n  - {name: A, modality: CT, body_part: X, files: "*.mhd", patient_id: "(p\\\\d+", '
            "slices_per_patient: all}\n",
            "dataset 'A' has patient_id '(p\\\\d+', which is not a regular expression",
        ),
        (
            'datasets:\n  - {name: A, modality: CT, body_part: X, files: "*.mhd", patient_id: "p\\\\d+", '
            "slices_per_patient: all}\n",
            "without a group; group 1 is the value",
        ),
        (
            'datasets:\n  - {name: A, modality: CT, body_part: X, files: "/etc/*", patient_id: "(p)", '
            "slices_per_patient: all}\n",
            "dataset 'A' has files '/etc/*', which leaves --root",
        ),
        (
            'datasets:\n  - {name: A, modality: CT, body_part: X, files: "../*/x.mhd", patient_id: "(p)", '
            "slices_per_patient: all}\n",
            "dataset 'A' has files '../*/x.mhd', which leaves --root",
        ),
        (
            'datasets:\n  - {name: A, modality: CT, body_part: X, files: "*.mhd", patient_id: "(p)", '
            "slices_per_patient: all, volumes: some}\n",
            "dataset 'A' has volumes='some', expected one of first, all",
        ),
        (b"datasets:\n  - name: \xe9t\xe9\n", "is not UTF-8 text"),
    ],
    ids=["not-a-mapping", "bad-regex", "no-group", "absolute-glob", "dotdot-glob", "volume-rule", "not-utf8"],
)
def test_a_bad_datasets_table_is_one_line(tmp_path, capsys, body, message):
    from preprocessing.manifest import main

    (tmp_path / "table.yaml").write_bytes(body if isinstance(body, bytes) else body.encode())
    code, line = _exit_line(
        main,
        ["--datasets", str(tmp_path / "table.yaml"), "--root", str(tmp_path), "--out", str(tmp_path / "m.csv")],
        capsys,
    )
    assert code == 1 and line.startswith(f"error: {tmp_path / 'table.yaml'}: ") and message in line, line


def _luna_tree(tmp_path, rows):
    data = tmp_path / "LUNA16"
    write_itk(data / "subset0" / "1.2.3.mhd", np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    (data / "candidates_V2.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n" + "".join(r + "\n" for r in rows))
    return data


def test_luna16_candidates_are_stripped_checked_and_deduplicated(tmp_path, capsys):
    from luna16.data import read_candidates

    data = _luna_tree(tmp_path, ["1.2.3 ,1,2,3,0", "1.2.3,1,2,3,0", " 1.2.3,4,5,6,1", "1.2.3,7,8,9,0"])
    frame = read_candidates(data)
    err = capsys.readouterr().err
    assert list(frame["seriesuid"]) == ["1.2.3"] * 3 and list(frame["class"]) == [0, 1, 0]  # Line 3 repeated line 2.
    assert (
        f"warning: {data / 'candidates_V2.csv'}: 2 seriesuids had spaces around them (first: line 2); stripped." in err
    )
    assert (
        f"warning: {data / 'candidates_V2.csv'}: 1 rows repeat an earlier row exactly (first: line 3); dropped." in err
    )


def test_a_v1_candidates_file_is_read_with_one_note(tmp_path, capsys):
    from luna16.data import read_candidates

    data = _luna_tree(tmp_path, ["1.2.3,1,2,3,0", "1.2.3,4,5,6,1"])
    (data / "candidates_V2.csv").rename(data / "candidates.csv")  # Only LUNA16's first release's file.
    for _ in range(3):  # Read again by later steps: said once.
        frame = read_candidates(data)
    assert list(frame["class"]) == [0, 1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"note: {data / 'candidates.csv'}: reading LUNA16's first")
    (data / "candidates.csv").rename(data / "candidates_V2.csv")
    read_candidates(data)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "is empty (the LUNA16 candidates file)"),
        (b"seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,2,3,0\n\xff\xfe,1,2,3,0\n", "is not UTF-8 text (byte"),
        (
            "seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,2,3,2\n",
            "1 rows whose class is not 0 or 1 (first: line 2, class 2",
        ),
        ("seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,2,3,0\n1.2.3,1,2,3,-1\n", "class is not 0 or 1 (first: line 3"),
        ("seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,2,3,0.5\n", "class is not 0 or 1 (first: line 2, class 0.5"),
        ("seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,2,3,0\n1.2.3,1,2,3,1\n", "gives 1 locations both classes"),
        ("seriesuid,coordX,coordY,coordZ,class\n", "holds no candidates (header only)"),
    ],
    ids=["empty", "not-utf8", "class-2", "class-minus-1", "class-half", "both-classes", "header-only"],
)
def test_bad_luna16_candidates_are_one_line(tmp_path, capsys, content, message):
    from luna16.data import read_candidates

    data = _luna_tree(tmp_path, [])
    path = data / "candidates_V2.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as error:
        read_candidates(data)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value) and "\n" not in str(error.value)


def test_a_luna16_scan_linked_from_outside_is_refused(tmp_path):
    from luna16.data import scans_by_subset

    data = _luna_tree(tmp_path, ["1.2.3,1,2,3,0"])
    write_itk(tmp_path / "elsewhere" / "9.9.mhd", np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    (data / "subset0" / "9.9.mhd").symlink_to(tmp_path / "elsewhere" / "9.9.mhd")
    with pytest.raises(InputError, match="9.9.mhd: leads outside the LUNA16 folder"):
        scans_by_subset(data)
    assert set(scans_by_subset(data, allow_outside_root=True)[0]) == {"1.2.3", "9.9"}
    # A header in the tree naming a file outside its folder: refused before any scan is read.
    from preprocessing.readers import OutsideRootError

    (data / "subset0" / "9.9.mhd").unlink()
    header = data / "subset0" / "1.2.3.mhd"
    header.write_text(header.read_text().replace("= 1.2.3.raw", "= ../../secret.txt"))
    with pytest.raises(OutsideRootError, match="1.2.3.mhd: names the data file ../../secret.txt, which lies outside"):
        scans_by_subset(data)


def _froc_files(tmp_path, annotations):
    predictions = tmp_path / "predictions.csv"
    pd.DataFrame(
        {"seriesuid": ["a", "b"], "coordX": [1.0, 40.0], "coordY": 0.0, "coordZ": 0.0, "probability": [0.7, 0.6]}
    ).to_csv(predictions, index=False)
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + annotations)
    (tmp_path / "uids.csv").write_text("a\nb\n")
    return [
        str(predictions),
        "--annotations",
        str(tmp_path / "annotations.csv"),
        "--seriesuids",
        str(tmp_path / "uids.csv"),
        "--bootstrap",
        "20",
    ]


def test_froc_without_nodules_in_the_evaluated_scans_is_one_line(tmp_path, capsys):
    from luna16.froc import main

    argv = _froc_files(tmp_path, "z,0,0,0,10\n")  # A nodule, but of a scan not evaluated.
    code, line = _exit_line(main, argv, capsys)
    assert code == 1 and line == (
        f"error: {tmp_path / 'annotations.csv'}: has no nodule in any of the 2 evaluated "
        "scans; the FROC measures how many nodules are found, so it needs at least one."
    )


def test_froc_out_must_name_a_figure_and_findings_are_stripped_and_deduplicated(tmp_path, capsys):
    from luna16.froc import main

    argv = _froc_files(tmp_path, "a ,0,0,0,10\na,0,0,0,10\n")
    code, line = _exit_line(main, [*argv, "--out", str(tmp_path / "x.json")], capsys)
    assert code == 2 and line.startswith("error: --out: names the figure, which must end in .png, .pdf, .svg")
    result = main([*argv, "--out", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    # One nodule (the repeated row dropped, the space stripped), found: sensitivity 1 at every rate.
    assert result["nodules"] == 1 and result["cpm"] == 1.0
    assert "1 seriesuids had spaces around them; stripped." in err and "1 rows repeat an earlier finding" in err
    assert json.loads((tmp_path / "f.json").read_text())["nodules"] == 1


def _mura_listing(mura_copy, name, transform):
    path = mura_copy / "MURA-v1.1" / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(transform(lines)) + "\n")
    return path


@pytest.fixture
def mura_copy(demo_dir, tmp_path):
    shutil.copytree(demo_dir / "MURA-v1.1", tmp_path / "MURA-v1.1")
    return tmp_path


def test_mura_paths_stay_inside_the_dataset(mura_copy, tmp_path):
    from mura.data import read_split

    before = read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)
    # Absolute paths into MURA-v1.1 are the same images (none dropped), parsed from their ends.
    _mura_listing(mura_copy, "valid_image_paths.csv", lambda lines: [str(mura_copy / line) for line in lines])
    absolute = read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)
    pd.testing.assert_frame_equal(absolute, before)
    # A path leaving the folder, with `..` or absolute, is refused unless allowed.
    outside = tmp_path / "outside" / "XR_SHOULDER" / "patient99999" / "study1_negative"
    outside.mkdir(parents=True)
    shutil.copy(before["path"].iloc[0], outside / "image1.png")
    first_study = before["study"].iloc[0]
    for entry in [
        str(outside / "image1.png"),
        "MURA-v1.1/../outside/XR_SHOULDER/patient99999/study1_negative/image1.png",
    ]:
        images = _mura_listing(mura_copy, "valid_image_paths.csv", lambda lines: [*lines, entry])
        with pytest.raises(InputError) as error:
            read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)
        listed = len(images.read_text().splitlines())
        assert str(error.value).startswith(
            f"{images}: line {listed} lists {entry}, which leads outside "
            f"{(mura_copy / 'MURA-v1.1').resolve()}; pass --allow-outside-root"
        )
        _mura_listing(mura_copy, "valid_image_paths.csv", lambda lines: lines[:-1])
    _mura_listing(mura_copy, "valid_labeled_studies.csv", lambda lines: [*lines, f"{outside},0"])
    _mura_listing(mura_copy, "valid_image_paths.csv", lambda lines: [*lines, str(outside / "image1.png")])
    allowed = read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False, allow_outside_root=True)
    assert len(allowed) == len(before) + 1 and allowed["patient"].iloc[-1] == "patient99999"
    assert first_study in set(allowed["study"])


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda lines: [lines[0].rsplit(",", 1)[0] + ",yes", *lines[1:]], "1 labels that are not 0 or 1 (first: study"),
        (lambda lines: [lines[0].rsplit(",", 1)[0] + ",", *lines[1:]], "label ''"),
        (lambda lines: [lines[0].rsplit(",", 1)[0] + ",2", *lines[1:]], "label '2'"),
        (
            lambda lines: [*lines, lines[0].rsplit(",", 1)[0] + f",{1 - int(lines[0].rsplit(',', 1)[1])}"],
            "gives 1 studies both labels",
        ),
        (lambda lines: [], "is empty"),
    ],
    ids=["text", "empty-label", "label-2", "both-labels", "empty-file"],
)
def test_bad_mura_labels_are_one_line(mura_copy, change, message):
    from mura.data import read_split

    path = _mura_listing(mura_copy, "valid_labeled_studies.csv", change)
    if not path.read_text().strip():
        path.write_text("")
    with pytest.raises(InputError) as error:
        read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_mura_repeated_rows_are_dropped_and_counted(mura_copy, capsys):
    from mura.data import read_split

    before = read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)
    path = _mura_listing(mura_copy, "valid_image_paths.csv", lambda lines: [*lines, lines[0], lines[0]])
    after = read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)
    assert len(after) == len(before)
    assert f"warning: {path}: 2 image paths repeat an earlier row" in capsys.readouterr().err
    (mura_copy / "MURA-v1.1" / "valid_labeled_studies.csv").write_bytes(b"\xff\xfe\x00bad\n")
    with pytest.raises(InputError, match="valid_labeled_studies.csv: is not UTF-8 text"):
        read_split(mura_copy, "valid", ("XR_SHOULDER",), verify=False)


def test_file_stamps_hash_small_files_time_large_ones_and_survive_a_move(tmp_path):
    import hashlib

    from plumbing.fingerprint import file_stamp, files_stamp, finished_with, rows_hash, stamp_changes

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("x,y\n1,2\n")
    (data / "sub" / "big.raw").write_bytes(b"\0" * 300)
    small, large = file_stamp(data / "a.csv", data), file_stamp(data / "sub" / "big.raw", data, hashed_below=100)
    assert small == {"path": "a.csv", "bytes": 8, "sha256": hashlib.sha256(b"x,y\n1,2\n").hexdigest()}
    assert large == {"path": "sub/big.raw", "bytes": 300, "mtime_ns": (data / "sub" / "big.raw").stat().st_mtime_ns}
    recorded = files_stamp([data / "a.csv", data / "sub" / "big.raw"], data, hashed_below=100)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # copy2: times kept, as `cp -a` keeps them.
    assert files_stamp([moved / "a.csv", moved / "sub" / "big.raw"], moved, hashed_below=100) == recorded
    (moved / "a.csv").write_text("x,y\n1,3\n")  # Same size, other content: the hash sees it.
    (moved / "c.csv").write_text("new")
    now = files_stamp([moved / "a.csv", moved / "c.csv"], moved, hashed_below=100)
    assert stamp_changes(recorded, now) == [
        "removed sub/big.raw",
        "added c.csv",
        "a.csv changed (same size, other content)",
    ]
    # A kept result with its inputs: reused when they match, refused naming the change otherwise.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"settings": {"epochs": 1}, "inputs": recorded}))
    assert finished_with(tmp_path / "run" / "metrics.json", {"epochs": 1}, inputs=recorded) is True
    with pytest.raises(
        UsageError,
        match=r"removed sub/big.raw; added c.csv; a.csv changed .same size, other content.\); "
        "pass --overwrite",
    ):
        finished_with(tmp_path / "run" / "metrics.json", {"epochs": 1}, inputs=now)
    assert finished_with(tmp_path / "run" / "metrics.json", {"epochs": 1}, overwrite=True, inputs=now) is False
    # A table's hash: the same rows under another root, in another order, match; a changed row does not.
    rows = pd.DataFrame({"path": [str(data / "a.csv"), str(data / "sub" / "big.raw")], "slice_index": [0, 3]})
    elsewhere = pd.DataFrame({"path": [str(moved / "sub" / "big.raw"), str(moved / "a.csv")], "slice_index": [3, 0]})
    assert rows_hash(rows) == rows_hash(elsewhere) != rows_hash(elsewhere.assign(slice_index=[3, 1]))


def test_a_file_matched_by_two_datasets_is_refused(tmp_path, capsys):
    from preprocessing.manifest import main

    root = tmp_path / "data"
    for name in ("p1", "p2"):
        write_itk(root / "mhd" / f"{name}.mhd", np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    table = _table(root, [("ALL", "mhd/*.mhd"), ("FIRST", "mhd/p1.mhd")])
    code, line = _exit_line(
        main, ["--datasets", str(table), "--root", str(root), "--out", str(tmp_path / "m.csv")], capsys
    )
    assert code == 1 and line == (
        f"error: {(root / 'mhd' / 'p1.mhd').resolve()}: is matched by datasets 'ALL' and "
        "'FIRST' (1 files are matched twice); give each file to one dataset by narrowing "
        "its glob."
    )


# ------------------------------------------------------------------------- pretraining: kills, refused reruns, exports


def _weight_arrays(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


@pytest.mark.slow
def test_a_kill_between_the_first_export_and_the_first_checkpoint_starts_again(pretrained_run, demo_manifest, tmp_path):
    import keras

    from genesis2d.checkpoint import load_state
    from genesis2d.pretrain import parse_args, run

    class KillAfterExport(keras.callbacks.Callback):  # Runs after the export, before the epoch's checkpoint.
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    out = tmp_path / "run"
    options = [
        "--manifest",
        str(demo_manifest),
        "--out",
        str(out),
        *TINY_PRETRAIN,
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
    ]  # The settings of `pretrained_run`.
    with pytest.raises(KeyboardInterrupt):
        run(parse_args(options), extra_callbacks=[KillAfterExport()])
    assert (out / "card.json").exists() and load_state(out / "checkpoint") is None
    card = run(parse_args(options))  # Neither "finished" nor stuck: started again, the study's way.
    assert card["epochs"] == 1 and load_state(out / "checkpoint")["finished"] is True
    again, whole = _weight_arrays(out / "encoder.weights.h5"), _weight_arrays(pretrained_run[0] / "encoder.weights.h5")
    assert again.keys() == whole.keys()
    for key in again:
        np.testing.assert_array_equal(again[key], whole[key], err_msg=key)


def test_refused_reruns_leave_a_finished_run_as_it_was(pretrained_run, tmp_path):
    from genesis2d.pretrain import parse_args, run

    out = tmp_path / "run"
    shutil.copytree(pretrained_run[0], out)
    before = {name: (out / name).read_bytes() for name in ("run.json", "card.json", "encoder.h5")}
    manifest = json.loads((out / "run.json").read_text())["args"]["manifest"]
    options = ["--manifest", manifest, "--out", str(out), *TINY_PRETRAIN, "--epochs", "2", "--steps-per-epoch", "2"]
    with pytest.raises(UsageError, match=r"other settings or inputs \(epochs 1 -> 2\)"):
        run(parse_args(options))
    with pytest.raises(UsageError) as other_backbone:
        run(parse_args([*options, "--resume", "--backbone", "vgg16"]))
    assert str(other_backbone.value) == (
        f"--backbone: {out} was trained with --backbone resnet18, not vgg16; resume it "
        "with --backbone resnet18 or choose another --out."
    )
    with pytest.raises(UsageError, match="--lr: .* was trained with --lr 0.01, not 0.5"):  # --resume: the same run.
        run(parse_args([*options, "--resume", "--lr", "0.5"]))
    frame = pd.read_csv(manifest)
    frame[frame["split"] == "train"].to_csv(tmp_path / "no_val.csv", index=False)
    with pytest.raises(InputError, match="has no validation slices"):  # Bad data with --overwrite: nothing cleared.
        run(parse_args(["--manifest", str(tmp_path / "no_val.csv"), *options[2:], "--overwrite"]))
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_finished_run_with_the_same_settings_and_data_is_kept(pretrained_run, tmp_path, capsys):
    """The one rule of every stage: a finished run is reused when it was made with the same settings and data."""
    from genesis2d.pretrain import parse_args, run

    out = tmp_path / "run"
    shutil.copytree(pretrained_run[0], out)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    manifest = json.loads((out / "run.json").read_text())["args"]["manifest"]
    options = ["--manifest", manifest, "--out", str(out), *TINY_PRETRAIN, "--epochs", "1", "--steps-per-epoch", "2"]
    card = run(parse_args([*options, "--verbose", "2", "--checkpoint-every", "7"]))  # Neither changes what it learns.
    assert (
        card == json.loads(before["card.json"])
        and "done earlier with these settings and data, kept" in capsys.readouterr().out
    )
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


def test_the_card_holds_paths_relative_to_the_run_folder(pretrained_run):
    out, _ = pretrained_run
    card = json.loads((out / "card.json").read_text())
    manifest = json.loads((out / "run.json").read_text())["args"]["manifest"]
    assert not Path(card["data"]).is_absolute() and (out / card["data"]).resolve() == Path(manifest).resolve()
    assert str(out.parent) not in (out / "MODEL_CARD.md").read_text() + json.dumps(card)


def test_a_full_disk_during_export_leaves_no_partial_file_and_names_the_real_one(tmp_path, monkeypatch, capsys):
    import keras

    from genesis2d import export
    from plumbing.atomic import atomic_path
    from plumbing.cli import run_command

    def export_encoder(model, backbone, out):
        with atomic_path(Path(out) / "encoder.weights.h5") as tmp:
            tmp.write_bytes(b"61 MB, cut")
            raise OSError(28, "No space left on device", str(tmp))

    monkeypatch.setattr(export, "export_encoder", export_encoder)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(SystemExit) as stopped:
        run_command(lambda argv: None, lambda _: export.export_best(model, "resnet18", out, {}), [])
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        f"error: {out / 'encoder.weights.h5'}: cannot be written or read (No space left on device).\n"
    )
    assert [p.name for p in out.rglob("*")] == []


def test_a_logs_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """TensorBoard's own error for an unwritable logs/ is no OSError: the folder is checked first, and named."""
    import tensorflow as tf

    from plumbing.cli import run_command
    from transfer.encoders import EncoderSpec
    from transfer.finetune import Head, Schedule, fine_tune

    (tmp_path / "logs").write_text("a file where the folder should be")
    x = np.zeros((4, 32, 32, 1), np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, np.array([0, 1, 0, 1], np.float32))).batch(4)
    schedule = Schedule(
        epochs=1,
        warmup_epochs=0,
        batch_size=4,
        lr=1e-3,
        momentum=0.0,
        lr_factor=0.1,
        lr_patience=3,
        selection="held-out",
    )

    def train(_):
        return fine_tune(
            EncoderSpec("scratch", "resnet18"),
            Head(units=4, l2=0.0, dropout=0.5),
            schedule,
            (32, 32, 1),
            data,
            data,
            tmp_path,
            seed=0,
            verbose=0,
        )

    with pytest.raises(SystemExit) as stopped:
        run_command(lambda argv: None, train, [])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'logs'}: cannot be written or read (File exists)."
