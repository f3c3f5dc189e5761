import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura.data import BODY_PARTS, body_parts_of, make_dataset, read_split
from mura.experiment import evaluate
from plumbing.errors import ImageReadError, InputError
from plumbing.runtime import STREAM_FOLD, derive_seed
from transfer.results import read_results

MURA_TINY = [
    "--image-size",
    "32",
    "--epochs",
    "1",
    "--warmup-epochs",
    "0",
    "--backbone",
    "resnet18",
    "--epoch-size",
    "96",
    "--batch-size",
    "32",
    "--verbose",
    "0",
]


def _csv(demo_dir, name):
    return pd.read_csv(demo_dir / "MURA-v1.1" / name, header=None)


def test_counts_match_the_csvs(demo_dir):
    for split in ("train", "valid"):
        listed = _csv(demo_dir, f"{split}_image_paths.csv")[0]
        studies = _csv(demo_dir, f"{split}_labeled_studies.csv")
        shoulder = read_split(demo_dir, split)
        assert len(shoulder) == listed.str.contains("/XR_SHOULDER/").sum()
        everything = read_split(demo_dir / "MURA-v1.1", split, body_parts_of("all"))
        assert len(everything) == len(listed) and everything["study"].nunique() == len(studies)
        labels = dict(zip(studies[0], studies[1]))
        assert (everything["study"].map(labels) == everything["label"]).all()
        assert (everything["label"] == everything["study"].str.contains("_positive").astype(int)).all()
    assert body_parts_of(["shoulder", "XR_HAND"]) == ("XR_SHOULDER", "XR_HAND") and len(body_parts_of("all")) == len(
        BODY_PARTS
    )
    with pytest.raises(ValueError, match="XR_KNEE"):
        body_parts_of("knee")


@pytest.fixture
def mura_copy(demo_dir, tmp_path):
    shutil.copytree(demo_dir / "MURA-v1.1", tmp_path / "MURA-v1.1")
    return tmp_path


def test_label_disagreement_names_the_study(mura_copy):
    path = mura_copy / "MURA-v1.1" / "train_labeled_studies.csv"
    studies = pd.read_csv(path, header=None)
    studies.loc[0, 1] = 1 - studies.loc[0, 1]
    studies.to_csv(path, header=False, index=False)
    with pytest.raises(InputError) as error:
        read_split(mura_copy, "train", BODY_PARTS)
    assert studies.loc[0, 0] in str(error.value) and "\n" not in str(error.value)


def test_missing_image_names_the_file(mura_copy):
    listed = _csv(mura_copy, "valid_image_paths.csv")[0]
    victim = mura_copy / listed.iloc[3]
    victim.unlink()
    with pytest.raises(ImageReadError, match="missing") as error:
        read_split(mura_copy, "valid", BODY_PARTS)
    assert str(victim) in str(error.value)


def test_study_aggregation_and_metrics_by_hand():
    images = pd.DataFrame(
        {
            "path": list("abcdefg"),
            "study": ["s1", "s1", "s2", "s3", "s3", "s3", "s4"],
            "label": [1, 1, 0, 1, 1, 1, 0],
            "probability": [0.9, 0.3, 0.2, 0.1, 0.5, 0.6, 0.7],
        }
    )
    studies, metrics = evaluate(images)
    np.testing.assert_allclose(
        studies.set_index("study")["probability"].loc[["s1", "s2", "s3", "s4"]], [0.6, 0.2, 0.4, 0.7]
    )
    # Studies: s1 (1, 0.6), s2 (0, 0.2), s3 (1, 0.4), s4 (0, 0.7). Pairs positive>negative: (s1,s2), (s3,s2) of 4.
    assert metrics["study_auc"] == pytest.approx(0.5)
    # At 0.5: s1 -> 1 (right), s2 -> 0 (right), s3 -> 0 (wrong), s4 -> 1 (wrong): kappa 0.
    assert metrics["study_kappa"] == pytest.approx(0.0) and metrics["study_sensitivity"] == 0.5
    assert metrics["image_auc"] == pytest.approx(roc_auc_score(images["label"], images["probability"]))


def test_images_are_gray_padded_resized_in_range(demo_dir):
    frame = read_split(demo_dir, "valid", BODY_PARTS)
    images, labels = next(iter(make_dataset(frame, 8, image_size=48)))
    assert images.shape == (8, 48, 48, 1) and images.dtype == "float32"
    assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 1
    augmented, _ = next(iter(make_dataset(frame, 8, image_size=48, training=True, seed=3)))
    assert augmented.shape == (8, 48, 48, 1)


def _demo_pngs(root):
    """Every image of a written demo tree, in [0, 1] and gray, by its path relative to `root`."""
    import cv2

    images = {}
    for path in sorted((root / "MURA-v1.1").rglob("*.png")):
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        images[str(path.relative_to(root))] = (pixels if pixels.ndim == 2 else pixels[..., 0]) / 255.0
    return images


def test_lesion_contrast_is_what_the_pngs_show(tmp_path):
    """Same seed, three contrasts: normals identical; each lesion's measured strength follows the contrast."""
    from mura.demo import write_mura

    trees = {}
    for contrast in (0.0, 0.2, 0.4):
        write_mura(tmp_path / str(contrast), np.random.default_rng(7), patients=(3, 2), lesion_contrast=contrast)
        trees[contrast] = _demo_pngs(tmp_path / str(contrast))
    assert trees[0.0].keys() == trees[0.2].keys() == trees[0.4].keys()
    strengths = {0.2: [], 0.4: []}
    for path, clean in trees[0.0].items():
        if "_negative/" in path:
            assert all(np.array_equal(clean, trees[c][path]) for c in strengths), path
            continue
        for contrast in strengths:
            change = trees[contrast][path] - clean
            lump = (change > 1.5 / 255) & (clean < 0.5)  # Brightened soft tissue: the full lesion there is 1.0.
            assert lump.sum() > 20 and (change < -1.5 / 255).any(), path  # A lump and a darker line.
            strengths[contrast].append(np.median(change[lump] / (1 - clean[lump])))
    low, high = np.array(strengths[0.2]), np.array(strengths[0.4])
    assert len(low) >= 4
    np.testing.assert_allclose(high, 2 * low, atol=0.02)  # The same lesions, twice as strong.
    for contrast, measured in strengths.items():  # Drawn from [c / 2, 3c / 2], median c.
        assert contrast / 2 - 0.02 <= min(measured) and max(measured) <= 1.5 * contrast + 0.02
        assert abs(np.mean(measured) - contrast) < 0.25 * contrast


@pytest.mark.slow
def test_a_demo_tree_of_another_contrast_or_generator_is_rewritten(tmp_path):
    from mura.demo import LESION_CONTRAST, ensure_demo

    marker = tmp_path / ".complete-MURA-v1.1"
    ensure_demo(tmp_path, lesion_contrast=0.3)
    faint = _demo_pngs(tmp_path)
    assert "lesion_contrast=0.3 " in marker.read_text()
    ensure_demo(tmp_path, lesion_contrast=0.6)
    plain = _demo_pngs(tmp_path)
    assert "lesion_contrast=0.6 " in marker.read_text() and faint.keys() == plain.keys()
    changed = [path for path in faint if not np.array_equal(faint[path], plain[path])]
    assert changed and all("_positive/" in path for path in changed)
    written = marker.stat().st_mtime_ns
    ensure_demo(tmp_path, lesion_contrast=0.6)  # Complete and the same: kept.
    assert marker.stat().st_mtime_ns == written
    marker.write_text("version=5 seed=0\n")  # What the generator before the contrast parameter wrote.
    ensure_demo(tmp_path)
    assert f"lesion_contrast={LESION_CONTRAST!r} " in marker.read_text()


@pytest.mark.parametrize("contrast", [-0.1, 1.5])
def test_a_lesion_contrast_outside_0_1_is_refused(contrast):
    from mura.demo import add_lesion

    with pytest.raises(ValueError, match=f"Received: contrast={contrast}"):
        add_lesion(np.zeros((8, 8), np.float32), np.random.default_rng(0), contrast)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["scratch", "genesis", "imagenet"])
def test_one_epoch_run_for_each_init(init, demo_dir, pretrained_run, keras_home, tmp_path):
    from mura.experiment import parse_args, run

    extra = {
        "scratch": ["--repeats", "2"],
        "genesis": ["--encoder", str(pretrained_run[0] / "encoder.h5")],
        "imagenet": [],
    }[init]
    out = tmp_path / init
    run(parse_args(["--data", str(demo_dir), "--out", str(out), "--init", init, *MURA_TINY, *extra]))
    written = json.loads((out / "metrics.json").read_text())
    contract = read_results(out)
    assert [level["name"] for level in contract.levels] == ["image", "study"]  # The thesis's level first.
    runs = [out] if init != "scratch" else [out / "repeat1", out / "repeat2"]
    for number, folder in enumerate(runs, start=1):
        images = pd.read_csv(folder / "predictions_images.csv")
        studies = pd.read_csv(folder / "predictions_studies.csv")
        assert list(images.columns) == ["path", "study", "label", "patient", "probability"]
        assert list(studies.columns) == ["study", "label", "probability"]
        assert len(images) == len(read_split(demo_dir, "valid"))
        assert (folder / "saliency.png").is_file()
        scored = contract.scores[(contract.scores["run"] == number) & (contract.scores["level"] == "image")]
        np.testing.assert_allclose(scored["probability"], images["probability"])
        assert (scored["group"].to_numpy() == images["patient"].to_numpy()).all()  # Resampled by patient.
        if init != "scratch":
            assert written["study_auc"] == pytest.approx(roc_auc_score(studies["label"], studies["probability"]))
            assert written["image_auc"] == pytest.approx(roc_auc_score(images["label"], images["probability"]))
            kappa = cohen_kappa_score(studies["label"], (studies["probability"] >= 0.5).astype(int))
            assert written["study_kappa"] == pytest.approx(kappa)
    if init == "scratch":  # Two repeats: each run's metrics, then their mean and standard deviation.
        per_run = [r["image_auc"] for r in written["runs"]]
        assert len(per_run) == 2 and written["image_auc"] == pytest.approx(np.mean(per_run))
        assert written["image_auc_std"] == pytest.approx(np.std(per_run, ddof=1))
        assert "ensemble" in written["ensemble_of_runs"]["note"]
    for name in ("roc.png", "loss_curves.png", "run.json"):
        assert (out / name).is_file()


def test_balanced_epochs_draw_both_classes_equally(demo_dir):
    frame = read_split(demo_dir, "train", ("XR_SHOULDER",))
    skewed = pd.concat([frame[frame["label"] == 1].iloc[:3], frame[frame["label"] == 0]], ignore_index=True)
    labels = np.concatenate(
        [y.numpy() for _, y in make_dataset(skewed, 16, 32, training=True, seed=1, balanced=True).take(12)]
    )
    assert len(labels) == 192 and abs(labels.mean() - 0.5) < 0.1  # 3 positives against ~30 negatives in the split.
    assert skewed["label"].mean() < 0.2


@pytest.mark.slow
def test_linear_probe_run_through_the_results_contract(demo_dir, pretrained_run, tmp_path):
    from mura.data import make_dataset
    from mura.experiment import parse_args, run
    from transfer.encoders import load_encoder
    from transfer.probe import encoder_features, fit_probe

    args = parse_args(
        [
            "--data",
            str(demo_dir),
            "--init",
            "genesis",
            "--encoder",
            str(pretrained_run[0] / "encoder.h5"),
            "--probe",
            *MURA_TINY,
        ]
    )
    assert args.out.endswith("mura_resnet18_genesis_probe")
    run(replace(args, out=str(tmp_path / "probe")))
    contract = read_results(tmp_path / "probe")
    assert contract.method == "linear probe" and contract.arm == "genesis probe"
    record = json.loads((tmp_path / "probe" / "run_metrics.json").read_text())["probe"]
    # The same probe by hand: the frozen encoder's pooled features of the training images, refitted at the chosen C.
    from mura.experiment import split_patients

    train_all = read_split(demo_dir, "train")
    train, _ = split_patients(train_all, args.validation_fraction, np.random.default_rng(args.seed), minimum=1)
    encoder = load_encoder("genesis", "resnet18", (32, 32, 1), pretrained_run[0] / "encoder.h5")
    features = encoder_features(encoder, make_dataset(train, 64, 32))
    model, again = fit_probe(
        features, train["label"].to_numpy(), train["patient"].to_numpy(), seed=derive_seed(args.seed, STREAM_FOLD, 0)
    )
    assert again["C"] == record["C"]
    valid = read_split(demo_dir, "valid")
    expected = model.predict_proba(encoder_features(encoder, make_dataset(valid, 64, 32)))[:, 1]
    images = pd.read_csv(tmp_path / "probe" / "predictions_images.csv")
    np.testing.assert_allclose(images["probability"], expected, rtol=1e-6)
    assert not (tmp_path / "probe" / "loss_curves.png").exists() and (tmp_path / "probe" / "saliency.png").is_file()


@pytest.mark.slow
def test_a_kept_run_is_refused_when_its_data_changed(demo_dir, tmp_path):
    """Reuse follows the data's content, not its path: a row deleted from valid's csv is named, not scored stale."""
    from mura.experiment import parse_args, run
    from plumbing.errors import UsageError

    data = tmp_path / "data"
    shutil.copytree(demo_dir / "MURA-v1.1", data / "MURA-v1.1")
    options = [
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--init",
        "scratch",
        "--probe",
        "--gallery",
        "0",
        *MURA_TINY,
    ]
    run(parse_args(options))
    moved = tmp_path / "moved"
    shutil.copytree(data, moved, copy_function=shutil.copy2)  # Same files elsewhere, times kept: still the same data.
    run(parse_args([*options[:1], str(moved), *options[2:]]))
    csv = moved / "MURA-v1.1" / "valid_image_paths.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(UsageError, match=r"data valid_image_paths\.csv '\w+' -> '\w+'.*--overwrite"):
        run(parse_args([*options[:1], str(moved), *options[2:]]))
