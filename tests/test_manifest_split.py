import shutil

import numpy as np
import pandas as pd
import pytest

from preprocessing.manifest import COLUMNS, evenly_spaced, load_table, main
from preprocessing.split import check_no_leak, patient_split


def test_evenly_spaced():
    np.testing.assert_array_equal(evenly_spaced(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(evenly_spaced(3, 5), [0, 1, 2])
    np.testing.assert_array_equal(evenly_spaced(4, "all"), [0, 1, 2, 3])


def test_thesis_table_has_its_17_datasets_and_slice_counts():
    from pathlib import Path

    import preprocessing

    entries = load_table(Path(preprocessing.__file__).with_name("datasets.yaml"))
    counts = {e["name"]: e["slices_per_patient"] for e in entries}
    assert len(entries) == 17
    assert counts["MRNET"] == 81 and counts["COLON"] == 80 and counts["CARDIAC MRI"] == 200
    assert counts["CHEST X-RAY14"] == 20 and counts["HEPATICVESSEL"] == 69 and counts["DEEP LESION"] == 8


def test_demo_manifest(demo_manifest, capsys):
    frame = pd.read_csv(demo_manifest, dtype={"patient_id": str})
    assert list(frame.columns) == COLUMNS
    per_patient = frame.groupby(["dataset", "patient_id"]).size()
    # 20 DICOM slices per patient, 12 sampled; MetaImage 'all' = 10 slices; X-ray 8-bit: 3 images, 2 sampled.
    assert (per_patient["DEMO CT DICOM"] == 12).all()
    assert (per_patient["DEMO CT MHD"] == 10).all()
    assert (per_patient["DEMO XRAY 8BIT"] == 2).all()
    # Evenly spaced through the 20-slice series: the first and last are both taken.
    dicom = frame[frame["dataset"] == "DEMO CT DICOM"].groupby("patient_id")["slice_index"].agg(["min", "max"])
    assert (dicom["min"] == 0).all() and (dicom["max"] == 19).all()
    check_no_leak(frame)
    assert set(frame["split"]) == {"train", "val", "test"}
    charts = list(demo_manifest.parent.glob("manifest_*.png"))
    assert len(charts) >= 4


def test_unreadable_files_are_skipped_and_counted(demo_dir, tmp_path, capsys):
    root = tmp_path / "pretrain"
    shutil.copytree(demo_dir / "pretrain", root)
    good = root / "ct_nifti" / "ct000.nii.gz"
    (root / "ct_nifti" / "ct999.nii.gz").write_bytes(good.read_bytes()[:300])
    (root / "xr_png8" / "p999_0.png").write_bytes(b"not a png")
    frame = main(["--datasets", str(root / "datasets.yaml"), "--root", str(root), "--out", str(tmp_path / "m.csv")])
    captured = capsys.readouterr()
    assert "2 unreadable files skipped" in captured.out
    assert captured.err.count("warning:") == 2 and "ct999.nii.gz" in captured.err
    assert "ct999" not in set(frame["patient_id"]) and (tmp_path / "m.csv").exists()


def test_images_too_small_to_train_on_are_skipped_and_counted(demo_dir, tmp_path, capsys):
    """A 1x1 PNG and a 1x1x1 NIfTI used to enter the manifest and the shards, and were trained on as constant
    slices; one of 32 x 40, the smallest side kept, still enters."""
    import nibabel as nib
    from PIL import Image

    root = tmp_path / "pretrain"
    shutil.copytree(demo_dir / "pretrain", root)
    Image.fromarray(np.full((1, 1), 7, np.uint8)).save(root / "xr_png8" / "p997_0.png")
    Image.fromarray(np.full((31, 64), 7, np.uint8)).save(root / "xr_png8" / "p998_0.png")
    Image.fromarray(np.arange(32 * 40, dtype=np.uint16).reshape(32, 40).astype(np.uint8)).save(
        root / "xr_png8" / "p999_0.png"
    )
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)), root / "ct_nifti" / "ct999.nii.gz")
    frame = main(["--datasets", str(root / "datasets.yaml"), "--root", str(root), "--out", str(tmp_path / "m.csv")])
    captured = capsys.readouterr()
    assert "3 unreadable files skipped" in captured.out
    for name, size in (
        ("xr_png8/p997_0.png", "1 x 1"),
        ("xr_png8/p998_0.png", "31 x 64"),
        ("ct_nifti/ct999.nii.gz", "1 x 1"),
    ):
        line = f"warning: {root / name}: its slices are {size} pixels, fewer than the 32 a side the networks need"
        assert f"{line} (--min-side). Skipped." in captured.err.splitlines(), captured.err
    kept = set(frame["path"])
    assert str((root / "xr_png8" / "p999_0.png").resolve()) in kept
    assert not {str((root / n).resolve()) for n in ("xr_png8/p997_0.png", "ct_nifti/ct999.nii.gz")} & kept


def test_the_manifest_options_are_read_off_their_fields(demo_dir, tmp_path, capsys):
    """One way to declare options: a YAML --config sets them as flags do; a datasets table there is named."""
    from preprocessing.manifest import ManifestOptions, main

    options = tmp_path / "options.yaml"
    options.write_text(
        f"datasets: {demo_dir / 'pretrain' / 'datasets.yaml'}\nroot: {demo_dir / 'pretrain'}\n"
        f"out: {tmp_path / 'm.csv'}\nfractions: [0.6, 0.2, 0.2]\nno_verify: true\n"
    )
    with pytest.raises(SystemExit) as unknown:  # YAML keys are the options' names (verify is --no-verify's dest).
        main(["--config", str(options)])
    assert unknown.value.code == 2 and "unknown options no_verify" in capsys.readouterr().err
    options.write_text(options.read_text().replace("no_verify: true", "verify: false"))
    frame = main(["--config", str(options)])
    assert sorted(frame["split"].unique()) == ["test", "train", "val"] and (tmp_path / "m.csv").is_file()
    assert ManifestOptions().fractions == [0.9, 0.05, 0.05]  # Thesis 3.1.7, written once.
    with pytest.raises(SystemExit) as table:
        main(["--config", str(demo_dir / "pretrain" / "datasets.yaml"), "--root", str(tmp_path)])
    assert table.value.code == 2 and "is a datasets table: pass it as --datasets" in capsys.readouterr().err
    with pytest.raises(SystemExit) as missing:
        main(["--out", str(tmp_path / "x.csv")])
    assert missing.value.code == 2 and "error: --root: is required." in capsys.readouterr().err


def test_split_is_by_patient_near_90_5_5_and_reproducible():
    rng = np.random.default_rng(0)
    rows = [("A" if p % 3 else "B", f"p{p}") for p in range(600) for _ in range(rng.integers(1, 30))]
    frame = pd.DataFrame(rows, columns=["dataset", "patient_id"])
    frame["split"] = patient_split(frame, seed=7)
    check_no_leak(frame)
    shares = frame["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.90) < 0.02 and abs(shares["val"] - 0.05) < 0.015
    assert abs(shares["test"] - 0.05) < 0.015
    again = patient_split(frame, seed=7)
    assert (again == frame["split"]).all()
    assert not (patient_split(frame, seed=8) == frame["split"]).all()


def test_leak_check_names_a_patient():
    frame = pd.DataFrame({"dataset": ["A", "A"], "patient_id": ["p1", "p1"], "split": ["train", "test"]})
    with pytest.raises(ValueError, match="p1"):
        check_no_leak(frame)


def test_hold_out_groups_takes_whole_groups_by_count():
    from preprocessing.split import hold_out_groups

    groups = [f"s{i % 23}" for i in range(200)]  # 23 series, many rows each.
    held = hold_out_groups(groups, 0.1, np.random.default_rng(0))
    assert len(held) == round(0.1 * 23) and held <= set(groups)
    assert held == hold_out_groups(groups, 0.1, np.random.default_rng(0))  # Seeded.
    assert len(hold_out_groups(groups[: 3 * 23 : 23], 0.1, np.random.default_rng(0), minimum=1)) == 1
    assert hold_out_groups(groups, 0.0, np.random.default_rng(0)) == set()
    assert hold_out_groups(groups, 1.0, np.random.default_rng(0)) == set(groups)


# Thesis Fig. 3.1 (modality, body part) and 3.1.5 (slices sampled per patient), transcribed by hand.
THESIS_DATASETS = {
    "CHEST X-RAY14": ("XR", "CHEST", 20),
    "MURA": ("XR", None, "all"),
    "CQ500": ("CT", "BRAIN", 100),
    "CT LYMPH NODES": ("CT", None, 100),
    "LIVER": ("CT", "LIVER", 100),
    "PANCREAS": ("CT", "PANCREAS", 80),
    "DEEP LESION": ("CT", "INFORMATION NOT AVAILABLE", 8),
    "HEPATICVESSEL": ("CT", "HEPATICVESSEL", 69),
    "COLON": ("CT", "COLON", 80),
    "SPLEEN": ("CT", "SPLEEN", "all"),
    "OASIS": ("MR", "BRAIN", 100),
    "IBSR": ("MR", "BRAIN", "all"),
    "BrainTumour": ("MR", "BRAIN", "all"),
    "MRNET": ("MR", "KNEE", 81),
    "CARDIAC MRI": ("MR", "CARDIAC", 200),
    "CHAOS": ("MR", "ABDOMEN", "all"),
    "PROSTATE": ("MR", "PROSTATE", "all"),
}


def test_datasets_table_is_the_thesis_corpus():
    from pathlib import Path

    entries = {
        e["name"]: e for e in load_table(Path(__file__).resolve().parents[1] / "preprocessing" / "datasets.yaml")
    }
    assert set(entries) == set(THESIS_DATASETS)  # The 17 datasets of Fig. 3.1.
    for name, (modality, body_part, per_patient) in THESIS_DATASETS.items():
        entry = entries[name]
        assert (entry["modality"], entry["slices_per_patient"]) == (modality, per_patient), name
        if body_part:
            assert entry["body_part"] == body_part, name
    # Decathlon sets: training cases only, as Fig. 3.1 counts them; Liver's 201 are training + test.
    for name in ("PANCREAS", "HEPATICVESSEL", "COLON", "SPLEEN", "PROSTATE"):
        assert "/imagesTr/" in entries[name]["files"], name
    assert "/images*/" in entries["LIVER"]["files"]
    # BrainTumour is the figshare set of single-slice .mat files, its patient named inside each file.
    assert entries["BrainTumour"]["files"].endswith(".mat") and entries["BrainTumour"]["patient_id"] == "header"


def test_manifest_reads_the_patient_from_brain_tumour_mat_files(demo_manifest):
    frame = pd.read_csv(demo_manifest, dtype={"patient_id": str})
    rows = frame[frame["dataset"] == "DEMO BRAIN TUMOUR MAT"]
    assert len(rows) == 8 and rows["patient_id"].nunique() == 4  # Two slices per patient, one per file.
    assert set(rows["patient_id"]) == {str(100000 + p) for p in range(4)} and (rows["slice_index"] == 0).all()
    assert (rows.groupby("patient_id")["split"].nunique() == 1).all()


def _cardiac_table(root, extra=""):
    (root / "table.yaml").write_text(
        "datasets:\n  - name: CARDIAC MRI\n    modality: MR\n    body_part: CARDIAC\n"
        '    files: "CardiacMRI/sol_yxzt_pat*.mat"\n    patient_id: "pat(\\\\d+)\\\\.mat$"\n'
        f"    slices_per_patient: 10\n    thesis: {{patients: 33, slices: 7980, sampled: 6340}}\n{extra}"
    )
    return root / "table.yaml"


def test_cardiac_mri_as_distributed_and_the_comparison_with_fig_3_1(tmp_path, capsys):
    from preprocessing.demo import write_cardiac_mat
    from preprocessing.manifest import compare_with_thesis

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for patient, (z, version) in enumerate([(3, "5"), (2, "7.3")], start=1):  # 4 frames x z slices.
        write_cardiac_mat(
            root / "CardiacMRI" / f"sol_yxzt_pat{patient}.mat",
            rng.integers(1, 900, size=(32, 32, z, 4)).astype(np.uint16),
            version,
        )
    table = _cardiac_table(root, "    volumes: all\n")
    frame = main(
        ["--datasets", str(table), "--root", str(root), "--out", str(tmp_path / "m.csv"), "--fractions", "1", "0", "0"]
    )
    per_patient = frame.groupby("patient_id")["slice_index"].agg(["size", "max"])
    # Patient 1: 12 frames x slices, 10 taken evenly (the last is 11); patient 2: all 8.
    assert per_patient.loc["1", "size"] == 10 and per_patient.loc["1", "max"] == 11
    assert per_patient.loc["2", "size"] == 8 and per_patient.loc["2", "max"] == 7
    comparison = compare_with_thesis(frame, load_table(table))
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "m_beside_thesis.csv", index_col="dataset"), comparison, check_dtype=False
    )
    row = comparison.loc["CARDIAC MRI"]
    assert (row["patients"], row["thesis_patients"], row["slices"], row["thesis_sampled"]) == (2, 33, 18, 6340)
    assert row["differs"]  # 2 of 33 patients: far more than 2x apart.
    captured = capsys.readouterr()
    assert "  CARDIAC MRI                    2        33        18     6,340            7,980" in captured.out
    assert (
        "warning: dataset 'CARDIAC MRI': 2 patients and 18 slices, the thesis 33 and 6,340: more than 2x"
        in captured.err
    )
    # Within 2x of the thesis on both counts: no warning.
    close = compare_with_thesis(
        pd.DataFrame({"dataset": ["CARDIAC MRI"] * 3200, "patient_id": np.arange(3200) % 17}), load_table(table)
    )
    assert not close.loc["CARDIAC MRI", "differs"]
    # The table must state the rule its 4D files are read by.
    with pytest.raises(SystemExit) as exit_info:
        main(["--datasets", str(_cardiac_table(root)), "--root", str(root), "--out", str(tmp_path / "x.csv")])
    assert exit_info.value.code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "holds 4 volumes, of which the reader makes slices of all, but dataset 'CARDIAC MRI' states volumes: first."
        )
    )


def test_demo_manifest_says_it_has_nothing_to_compare(demo_dir, tmp_path, capsys):
    main(
        [
            "--datasets",
            str(demo_dir / "pretrain" / "datasets.yaml"),
            "--root",
            str(demo_dir / "pretrain"),
            "--out",
            str(tmp_path / "m.csv"),
            "--no-verify",
        ]
    )
    assert "(no dataset of this table is one of the thesis's: nothing to compare)" in capsys.readouterr().out
