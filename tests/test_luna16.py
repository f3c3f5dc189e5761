import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna16.data import (
    FOLD_PAIRS,
    Subset,
    evaluation_arrays,
    evaluation_batches,
    evaluation_cases,
    evaluation_labels,
    extract_subsets,
    fold_subsets,
    keep_negatives,
    training_arrays,
    validation_series,
)
from luna16.froc import cap_candidates, cpm, evaluate
from luna16.patches import augment, extract, extract_cube, voxel_to_world, world_to_voxel
from preprocessing.demo import write_itk
from preprocessing.readers import read_image

# A rotated, flipped, anisotropic scan: x index runs along world -y, y index along world +x, z along -z.
DIRECTION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-120.0, 35.0, 210.0)
CENTER_ZYX = (12, 22, 31)


@pytest.fixture(scope="module")
def sphere_scan(tmp_path_factory):
    """A MetaImage with a bright 6 mm sphere at a known world point, in air."""
    shape = (24, 48, 64)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    offset = np.stack(
        [(xx - CENTER_ZYX[2]) * SPACING[0], (yy - CENTER_ZYX[1]) * SPACING[1], (zz - CENTER_ZYX[0]) * SPACING[2]], -1
    )
    volume = np.where(np.linalg.norm(offset, axis=-1) <= 6.0, 400, -1000).astype(np.int16)
    path = tmp_path_factory.mktemp("scan") / "sphere.mhd"
    write_itk(path, volume, SPACING, ORIGIN, DIRECTION)
    center_world = np.asarray(ORIGIN) + DIRECTION @ (np.array(CENTER_ZYX[::-1]) * SPACING)
    return path, center_world


def test_world_to_voxel_uses_direction_spacing_and_origin(sphere_scan):
    path, center = sphere_scan
    volume, meta = read_image(path)
    zyx = world_to_voxel(center, meta["origin"], meta["spacing"], meta["direction"])
    np.testing.assert_allclose(zyx, CENTER_ZYX, atol=1e-6)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(zyx[::-1], itk.TransformPhysicalPointToContinuousIndex(center.tolist()), atol=1e-6)
    assert volume[CENTER_ZYX] == 400
    # Ignoring the direction (as many public snippets do) lands elsewhere: outside the scan here.
    wrong = world_to_voxel(center, meta["origin"], meta["spacing"])
    assert np.abs(wrong - CENTER_ZYX).max() > 10
    points = np.random.default_rng(0).uniform(-50, 50, size=(5, 3))
    np.testing.assert_allclose(
        voxel_to_world(world_to_voxel(points, ORIGIN, SPACING, DIRECTION), ORIGIN, SPACING, DIRECTION),
        points,
        atol=1e-9,
    )


def test_three_views_are_centred_on_the_sphere(sphere_scan):
    path, center = sphere_scan
    volume, meta = read_image(path)
    views = extract(volume, meta, center, size=32, pixel_mm=0.5)
    assert views.shape == (3, 32, 32) and views.dtype == np.float32
    bright = (400 + 1000) / 2400
    for view in views:
        np.testing.assert_allclose(view[14:18, 14:18], bright, atol=1e-3)  # Inside the 6 mm sphere.
        np.testing.assert_allclose(view[:2, :2], 0.0, atol=1e-6)  # Air 11 mm away.
        # The sphere's disk: radius 6 mm = 12 pixels of 0.5 mm.
        area = (view > bright / 2).sum() * 0.25
        assert abs(area - np.pi * 36) / (np.pi * 36) < 0.15
    # Beyond the scan the patch reads air, not an error.
    outside = extract(volume, meta, center + np.array([0, 0, 200.0]), size=16)
    np.testing.assert_allclose(outside, 0.0)
    cube = extract_cube(volume, meta, center, size=16, pixel_mm=1.0)
    assert cube.shape == (16, 16, 16) and cube[7:9, 7:9, 7:9].min() > 0.5


def test_augmentation_keeps_the_nodule_in_the_patch(sphere_scan):
    path, center = sphere_scan
    volume, meta = read_image(path)
    rng = np.random.default_rng(0)
    bright = (400 + 1000) / 2400
    for _ in range(25):
        views = augment(volume, meta, center, rng, size=32, pixel_mm=0.5)
        # A shift of at most 1 mm per axis and a zoom of 10% keep the centre inside the 6 mm sphere.
        assert (views[:, 13:19, 13:19] > bright * 0.9).all()


def test_negative_subsampling_counts():
    labels = np.array([0] * 97 + [1] * 5)
    kept = keep_negatives(labels, 0.1, np.random.default_rng(0))
    assert (labels[kept] == 1).sum() == 5 and (labels[kept] == 0).sum() == 10
    assert len(set(kept)) == len(kept)
    few = np.array([0] * 4 + [1])
    assert (few[keep_negatives(few, 0.1, np.random.default_rng(0))] == 0).sum() == 1  # At least one negative.
    assert len(keep_negatives(np.array([-1, -1, 1]), 0.1, np.random.default_rng(0))) == 1


@pytest.fixture(scope="module")
def extracted(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("patches")
    counts = extract_subsets(demo_dir / "LUNA16", out, size=32, positive_copies=3, progress=False)
    return out, counts


def test_extraction_counts_and_folds(demo_dir, extracted):
    out, counts = extracted
    candidates = pd.read_csv(demo_dir / "LUNA16" / "candidates_V2.csv")
    assert sum(counts.values()) == len(candidates)
    subsets = {s: Subset(out / f"subset{s}") for s in range(10)}
    series = {s: set(subsets[s].candidates["seriesuid"]) for s in subsets}
    for pair in FOLD_PAIRS:
        train, test = fold_subsets(pair)
        assert set(train) | set(test) == set(range(10)) and not set(train) & set(test)
        assert not set().union(*(series[s] for s in train)) & set().union(*(series[s] for s in test))
    assert sum(len(v) for v in series.values()) == len(set().union(*series.values()))  # No series in two subsets.
    subset = subsets[0]
    positives = int((subset.candidates["class"] == 1).sum())
    assert len(subset.augmented) == 2 * positives  # 3 copies: the original and 2 augmented.
    assert subset.patches.shape == (len(subset.candidates), 3, 32, 32)
    # Training arrays: all positives with their copies, 10% of negatives, validation series left out.
    train_subsets = [subsets[s] for s in fold_subsets((0, 1))[0]]
    rng = np.random.default_rng(0)
    held = validation_series(train_subsets, 0.25, rng)
    images, labels = training_arrays(train_subsets, held, 0.1, rng)
    in_train = [sub.candidates[~sub.candidates["seriesuid"].isin(held)] for sub in train_subsets]
    expected_pos = sum(int((c["class"] == 1).sum()) for c in in_train) * 3
    negatives = [int((c["class"] == 0).sum()) for c in in_train]
    expected_neg = sum(max(1, round(0.1 * n)) if n else 0 for n in negatives)  # A fully held-out subset keeps none.
    assert labels.sum() == 3 * expected_pos and (labels == 0).sum() == 3 * expected_neg
    assert images.shape == (len(labels), 32, 32, 1)
    # A rerun skips finished subsets.
    stamp = (out / "subset0" / "patches.npy").stat().st_mtime_ns
    extract_subsets(demo_dir / "LUNA16", out, size=32, positive_copies=3, progress=False)
    assert (out / "subset0" / "patches.npy").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_extraction_over_worker_processes_writes_the_same_files(demo_dir, extracted, tmp_path):
    out, counts = extracted
    assert (
        extract_subsets(demo_dir / "LUNA16", tmp_path, size=32, positive_copies=3, progress=False, workers=2) == counts
    )
    for subset in range(10):
        for name in ("patches.npy", "augmented.npy", "candidates.csv", "augmented.csv"):
            assert (tmp_path / f"subset{subset}" / name).read_bytes() == (out / f"subset{subset}" / name).read_bytes()


def test_evaluation_batches_stream_the_evaluation_arrays(extracted):
    out, _ = extracted
    subsets = [Subset(out / f"subset{s}") for s in (0, 1)]
    series = set(subsets[0].candidates["seriesuid"][:3]) | set(subsets[1].candidates["seriesuid"][-2:])
    images, labels, table = evaluation_arrays(subsets, series)
    expected = np.concatenate(
        [np.asarray(s.patches[s.candidates["seriesuid"].isin(series).to_numpy()]) for s in subsets]
    ).reshape(-1, 32, 32, 1)  # Candidate by candidate, its 3 views.
    np.testing.assert_array_equal(images, expected)
    batches = list(evaluation_batches(subsets, series, batch_size=8))
    assert all(len(b) <= 8 and len(b) % 3 == 0 for b in batches) and batches[0].dtype == np.float16
    np.testing.assert_array_equal(np.concatenate(batches), images)
    streamed_labels, streamed_table = evaluation_labels(subsets, series)
    np.testing.assert_array_equal(streamed_labels, labels)
    pd.testing.assert_frame_equal(streamed_table, table)
    assert len(table) == len(images) // 3 and set(table["seriesuid"]) == series
    chosen = [len(table) - 1, 0, 2]  # A gallery's cases, by their place in the evaluation order.
    np.testing.assert_array_equal(evaluation_cases(subsets, chosen, series), images.reshape(-1, 3, 32, 32, 1)[chosen])


def test_cpm_on_a_hand_made_case():
    annotations = pd.DataFrame(
        {
            "seriesuid": ["a", "b", "b"],
            "coordX": [0.0, 50.0, -40.0],
            "coordY": [0.0] * 3,
            "coordZ": [0.0] * 3,
            "diameter_mm": [10.0, 6.0, 8.0],
        }
    )
    predictions = pd.DataFrame(
        {
            "seriesuid": ["a", "a", "a", "a", "b", "b", "b"],
            "coordX": [1.0, 30.0, 4.0, 100.0, 52.0, 90.0, 200.0],
            "coordY": [0.0] * 7,
            "coordZ": [0.0] * 7,
            "probability": [0.9, 0.8, 0.2, 0.3, 0.4, 0.5, 0.95],
        }
    )
    excluded = pd.DataFrame(
        {"seriesuid": ["b"], "coordX": [200.0], "coordY": [0.0], "coordZ": [0.0], "diameter_mm": [-1.0]}
    )
    result = evaluate(predictions, annotations, excluded, iterations=0)
    # Nodules: a@0 found at 0.9 (and 0.2), b@50 at 0.4, b@-40 never. False positives: 0.8, 0.3 (scan a),
    # 0.5 (scan b); 0.95 lies in an excluded finding. Thresholds 0.9, 0.8, 0.5, 0.4, 0.3 give
    # (FP/scan, sensitivity) = (0, 1/3), (0.5, 1/3), (1, 1/3), (1, 2/3), (1.5, 2/3).
    expected = np.mean([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])  # Hand-checked against the official script.
    assert result["cpm"] == pytest.approx(expected)
    assert result["nodules"] == 3 and result["found_at_any_threshold"] == 2
    # Without the exclusion 0.95 is a false positive: (0.5, 0), (0.5, 1/3), (1, 1/3), (1.5, 1/3),
    # (1.5, 2/3), (2, 2/3); interpolated at 1/8 .. 8: 0, 0, 1/3, 1/3, 2/3, 2/3, 2/3.
    value, at = cpm([0.9, 0.4, -np.inf], [0.8, 0.3, 0.5, 0.95], 2)
    np.testing.assert_allclose(at, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert value == pytest.approx(8 / 21)


def _frame(uids, xs, probability=None, diameter=None):
    frame = pd.DataFrame({"seriesuid": uids, "coordX": np.asarray(xs, float), "coordY": 0.0, "coordZ": 0.0})
    if probability is not None:
        frame["probability"] = probability
    if diameter is not None:
        frame["diameter_mm"] = diameter
    return frame


def test_froc_keeps_at_most_100_candidates_per_scan_as_the_official_script():
    # Scan a: nodule n1 at x=0 hit at 0.95 (rank 1), nodule n2 at x=1000 hit at 0.05 (rank 150), 148 false
    # positives in between; 19 more evaluated scans without predictions, so 20 scans in all.
    fps = np.linspace(0.9, 0.1, 148)
    predictions = _frame(["a"] * 150, [0.0, 1000.0, *(-100.0 - np.arange(148) * 10)], [0.95, 0.05, *fps])
    annotations = _frame(["a", "a"], [0.0, 1000.0], diameter=[6.0, 6.0])
    scans = ["a"] + [f"empty{i}" for i in range(19)]
    capped = evaluate(predictions, annotations, None, scans, iterations=0)
    # The cap keeps the 100 most probable: n2's only hit is dropped, so sensitivity is 1/2 at every rate.
    assert capped["cpm"] == pytest.approx(0.5)
    # Without it n2 is found at 148/20 = 7.4 FP per scan: 1/2 up to 4 FP per scan, 1 at 8.
    uncapped = evaluate(predictions, annotations, None, scans, iterations=0, limit=0)
    assert uncapped["cpm"] == pytest.approx((6 * 0.5 + 1.0) / 7)
    # Ties at the 101st probability keep fewer than 100, as the script's strict '>' does.
    tied = _frame(["a"] * 101, np.arange(101), [*np.linspace(0.99, 0.5, 98), 0.1, 0.1, 0.1])
    assert len(cap_candidates(tied)) == 98 and len(cap_candidates(tied.iloc[:100])) == 100


def test_froc_counts_scans_without_predictions_and_uses_strict_radius_and_excluded_rule():
    annotations = _frame(["a", "b", "c"], [0.0, 0.0, 0.0], diameter=[10.0, 10.0, 8.0])
    # a: a hit at 0.9 (1 mm away); b: a candidate exactly on the radius (5 mm) is no hit, a false positive;
    # c: no predictions at all.
    predictions = _frame(["a", "b"], [1.0, 5.0], [0.9, 0.8])
    result = evaluate(predictions, annotations, None, ["a", "b", "c"], iterations=0)
    # 3 nodules, 1 found at 0.9; one FP at 0.8 over 3 scans: sensitivity 1/3 at every rate.
    assert result["nodules"] == 3 and result["found_at_any_threshold"] == 1 and result["scans"] == 3
    assert result["cpm"] == pytest.approx(1 / 3)
    # Only predicted scans evaluated (the old behaviour): c's nodule dropped, sensitivity 1/2.
    assert evaluate(predictions, annotations, None, ["a", "b"], iterations=0)["cpm"] == pytest.approx(0.5)
    # An excluded finding of diameter 0 covers nothing; one of -1 covers 5 mm (a 10 mm default).
    far = _frame(["a", "a"], [1.0, 50.0], [0.9, 0.95])
    for diameter, expected_fp in ((0.0, True), (-1.0, False)):
        excluded = _frame(["a"], [52.0], diameter=[diameter])
        value = evaluate(far, annotations.iloc[:1], excluded, ["a"], iterations=0)["cpm"]
        # With the FP at 0.95 counted, the nodule is found only after 1 FP per scan: 0 below it.
        assert value == pytest.approx(4 / 7 if expected_fp else 1.0)


def test_froc_bootstrap_resamples_every_scan_and_holds_the_estimate():
    rng = np.random.default_rng(3)
    uids = [f"s{i}" for i in range(30)]
    annotations = _frame(uids[:20], np.zeros(20), diameter=np.full(20, 10.0))
    rows = []
    for i, uid in enumerate(uids[:25]):  # Five evaluated scans have no prediction.
        if i < 20:
            rows.append((uid, 1.0, rng.uniform(0.2, 1.0)))
        rows += [(uid, 100.0 + k * 20, rng.uniform(0, 0.9)) for k in range(4)]
    predictions = _frame([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    result = evaluate(predictions, annotations, None, uids, iterations=300)
    low, high = result["cpm_ci95"]
    assert low <= result["cpm"] <= high and high - low > 0.01


@pytest.mark.parametrize(
    "content, message",
    [
        ("seriesuid,coordX,coordY,coordZ,probability\na,0,0,0,nan\na,1,0,0,0.5\n", "1 rows whose probability"),
        ("seriesuid,coordX,coordY,coordZ,probability\n", "header only"),
        ("", "is empty (predictions)"),
        ("seriesuid,coordX,coordY,coordZ,probability\nzzz,0,0,0,0.5\n", "no prediction for any of the 1 evaluated"),
        ("seriesuid,coordX,coordY,coordZ,probability\na,x,0,0,0.5\n", "non-numeric"),
    ],
)
def test_froc_bad_predictions_are_one_line(tmp_path, capsys, content, message):
    from luna16.froc import main

    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,10\n")
    (tmp_path / "scans.txt").write_text("a\n")
    (tmp_path / "p.csv").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(tmp_path / "p.csv"),
                "--annotations",
                str(tmp_path / "annotations.csv"),
                "--seriesuids",
                str(tmp_path / "scans.txt"),
            ]
        )
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {tmp_path / 'p.csv'}: ") and message in error[0]


def test_froc_command_prints_cpm_last(tmp_path, capsys):
    from luna16.froc import main

    annotations = tmp_path / "annotations.csv"
    predictions = tmp_path / "predictions.csv"
    pd.DataFrame({"seriesuid": ["a"], "coordX": [0.0], "coordY": [0.0], "coordZ": [0.0], "diameter_mm": [10.0]}).to_csv(
        annotations, index=False
    )
    pd.DataFrame(
        {
            "seriesuid": ["a", "a"],
            "coordX": [1.0, 40.0],
            "coordY": [0.0, 0.0],
            "coordZ": [0.0, 0.0],
            "class": [1, 0],
            "probability": [0.7, 0.6],
        }
    ).to_csv(predictions, index=False)
    (tmp_path / "subset0").mkdir()
    (tmp_path / "subset0" / "a.mhd").write_text("")  # The evaluated scans: the LUNA16 layout by default.
    main([str(predictions), "--annotations", str(annotations), "--bootstrap", "50"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "CPM 1.0000"
    assert (tmp_path / "froc.png").is_file() and json.loads((tmp_path / "froc.json").read_text())["cpm"] == 1.0
