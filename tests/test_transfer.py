import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from plumbing.errors import UsageError
from transfer.encoders import InitError, keras_cache_dir, load_encoder
from transfer.finetune import build_classifier
from transfer.results import read_results

CV_TINY = [
    "--patch-size",
    "32",
    "--positive-copies",
    "2",
    "--negative-fraction",
    "0.05",
    "--epochs",
    "1",
    "--warmup-epochs",
    "0",
    "--backbone",
    "resnet18",
    "--batch-size",
    "256",
    "--verbose",
    "0",
]


def test_imagenet_init_loads_the_file_keras_caches(keras_home):
    home, backbone = keras_home
    assert keras_cache_dir() == home / "models"
    encoder = load_encoder("imagenet", "resnet18", (64, 64, 1))
    ours = [w for w in encoder.weights]
    assert len(ours) == len(backbone.weights)
    for a, b in zip(ours, backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_imagenet_init_offline_without_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(InitError) as error:
        load_encoder("imagenet", "resnet18", (64, 64, 1))
    message = str(error.value)
    assert "resnet18_imagenet_1000_no_top.h5" in message and "--imagenet-weights" in message
    with pytest.raises(InitError, match="does not exist"):
        load_encoder("imagenet", "resnet18", (64, 64, 1), imagenet_weights=tmp_path / "none.h5")


@pytest.mark.slow
def test_genesis_init_takes_the_pretrained_weights(pretrained_run):
    out, _ = pretrained_run
    for name in ("encoder.h5", "encoder.weights.h5"):
        encoder = load_encoder("genesis", "resnet18", (64, 64, 1), out / name)
        reference = load_encoder("genesis", "resnet18", (64, 64, 1), out / "encoder.weights.h5")
        for a, b in zip(encoder.get_weights(), reference.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(InitError, match="does not match backbone"):
        load_encoder("genesis", "vgg16", (64, 64, 1), out / "encoder.h5")


def test_head_is_the_thesis_head():

    encoder = load_encoder("scratch", "resnet18", (32, 32, 1))
    model = build_classifier(encoder, units=16, l2=1e-3, dropout=0.5)
    names = [type(layer).__name__ for layer in model.layers[2:]]
    assert names == ["GlobalAveragePooling2D", "Flatten", "Dropout", "Dense", "Dropout", "Dense"]
    assert model.get_layer("hidden").kernel_regularizer.l2 == pytest.approx(1e-3)
    assert model.output.dtype == "float32" and model.output_shape == (None, 1)
    encoder.trainable = False
    assert all(not w.trainable for w in encoder.weights)
    assert len(model.trainable_weights) == 4  # Only the head's two Dense layers train in the warm-up.
    with pytest.raises(ValueError, match="Received: dropout=1.5"):
        build_classifier(encoder, units=4, dropout=1.5)


def test_the_head_trains_under_mixed_bfloat16_and_answers_in_float32():
    """--precision mixed_bfloat16: the encoder computes in bfloat16, the probability stays float32, a step's loss is
    finite; 'auto' keeps float32 on a CPU, and an unknown name is refused."""
    import keras

    from plumbing.runtime import pick_precision

    try:
        assert pick_precision("mixed_bfloat16") == "mixed_bfloat16"
        encoder = load_encoder("scratch", "resnet18", (32, 32, 1))
        model = build_classifier(encoder, units=8, dropout=0.5)
        assert encoder.compute_dtype == "bfloat16" and model.output.dtype == "float32"
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="binary_crossentropy")
        rng = np.random.default_rng(0)
        loss = model.train_on_batch(rng.random((4, 32, 32, 1), dtype=np.float32), np.array([0.0, 1.0, 0.0, 1.0]))
        assert np.isfinite(loss)
        assert type(model.optimizer).__name__ == "SGD"  # No loss scaling: bfloat16 has float32's range.
        assert pick_precision("auto") == "float32"  # On this CPU.
        with pytest.raises(ValueError, match="precision must be one of"):
            pick_precision("bfloat16")
    finally:
        keras.config.set_dtype_policy("float32")


def test_predicting_a_streamed_fold_reads_it_to_the_end_without_a_warning():
    """A test fold streamed from a generator (its length unknown to Keras) is predicted whole and in order, without
    Keras's "ran out of data" warning, which a user would read as a training cut short."""
    import warnings

    import keras
    import tensorflow as tf

    from transfer.finetune import predict

    images = np.arange(10, dtype=np.float32).reshape(10, 1)
    stream = tf.data.Dataset.from_generator(
        lambda: (images[i : i + 4] for i in range(0, 10, 4)), output_signature=tf.TensorSpec((None, 1), tf.float32)
    )
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="ones")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = predict(model, stream)
    np.testing.assert_allclose(values, images.ravel())
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_a_probes_features_of_a_streamed_fold_come_without_a_warning():
    """The linear probe reads its encoder's pooled features of a streamed fold the same way: whole, in order, quiet."""
    import warnings

    import keras
    import tensorflow as tf

    from transfer.probe import encoder_features

    images = np.arange(10 * 2 * 2, dtype=np.float32).reshape(10, 2, 2, 1)
    stream = tf.data.Dataset.from_generator(
        lambda: ((images[i : i + 4], np.zeros(len(images[i : i + 4]))) for i in range(0, 10, 4)),
        output_signature=(tf.TensorSpec((None, 2, 2, 1), tf.float32), tf.TensorSpec((None,), tf.float64)),
    )
    inputs = keras.Input((2, 2, 1))
    encoder = keras.Model(inputs, keras.layers.Identity(name="encoder_output")(inputs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = encoder_features(encoder, stream)
    np.testing.assert_allclose(features, images.mean(axis=(1, 2)))  # Each image's mean over space, in order.
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def _check_cv_outputs(out, folds, trained=True):
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class", "probability"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["fold"]) == folds
    for row in summary.itertuples():
        fold = pd.read_csv(next(out.glob(f"fold{row.fold}_*/predictions.csv")))
        assert row.auc == pytest.approx(roc_auc_score(fold["class"], fold["probability"]))
    for name in ("summary.md", "roc_folds.png", "metrics.json", "run.json", *(["loss_curves.png"] if trained else [])):
        assert (out / name).is_file(), name
    if trained:
        assert any(out.glob("fold*/logs/**/events.out.tfevents.*")), "TensorBoard logs of each fold"
    for fold in folds:  # A saliency gallery per fold (Grad-CAM, or a probe's class activation maps).
        assert (next(out.glob(f"fold{fold}_*")) / "saliency.png").is_file()
    # The results contract: candidates (mean of views) first, then patches, grouped by scan, stratified by fold.
    contract = read_results(out)
    assert [level["name"] for level in contract.levels] == ["candidate", "patch"]
    candidates = contract.level("candidate")
    np.testing.assert_allclose(candidates["probability"], predictions["probability"])
    assert (candidates["group"].to_numpy() == predictions["seriesuid"].to_numpy()).all()
    patches = contract.level("patch")
    assert len(patches) == 3 * len(predictions)
    means = (
        patches.assign(candidate=patches["key"].str.rsplit(":", n=1).str[0])
        .groupby("candidate", sort=False)["probability"]
        .mean()
    )
    np.testing.assert_allclose(means.loc[candidates["key"]].to_numpy(), candidates["probability"], rtol=1e-6)
    return predictions


@pytest.mark.slow
@pytest.mark.parametrize("init", ["scratch", "genesis", "imagenet"])
def test_one_epoch_cross_validation_for_each_init(init, demo_dir, pretrained_run, keras_home, tmp_path_factory):
    from luna16.experiment import parse_args, run

    patches = tmp_path_factory.getbasetemp() / "cv_patches"
    out = tmp_path_factory.mktemp(f"cv_{init}")
    extra = ["--encoder", str(pretrained_run[0] / "encoder.h5")] if init == "genesis" else []
    args = parse_args(
        [
            "--data",
            str(demo_dir / "LUNA16"),
            "--patches",
            str(patches),
            "--out",
            str(out),
            "--init",
            init,
            "--folds",
            "1",
            *CV_TINY,
            *extra,
        ]
    )
    run(args)
    predictions = _check_cv_outputs(out, [1])
    candidates = pd.read_csv(demo_dir / "LUNA16" / "candidates_V2.csv")
    test_series = set(pd.read_csv(patches / "subset0" / "candidates.csv")["seriesuid"]) | set(
        pd.read_csv(patches / "subset1" / "candidates.csv")["seriesuid"]
    )
    assert set(predictions["seriesuid"]) == test_series
    assert len(predictions) == candidates["seriesuid"].isin(test_series).sum()  # Test fold never subsampled.
    if init == "scratch":  # A rerun keeps the finished fold rather than training it again.
        stamp = (out / "fold1_subsets0-1" / "predictions.csv").stat().st_mtime_ns
        run(args)
        assert (out / "fold1_subsets0-1" / "predictions.csv").stat().st_mtime_ns == stamp
        # ... but never under other settings: it stops and says what changed.
        other = parse_args(
            [
                "--data",
                str(demo_dir / "LUNA16"),
                "--patches",
                str(patches),
                "--out",
                str(out),
                "--init",
                init,
                "--folds",
                "1",
                *CV_TINY,
                "--epochs",
                "2",
                "--seed",
                "7",
            ]
        )
        with pytest.raises(UsageError, match=r"epochs 1 -> 2; seed 0 -> 7.*pass --overwrite"):
            run(other)
        assert (out / "fold1_subsets0-1" / "predictions.csv").stat().st_mtime_ns == stamp
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    if init == "genesis":  # The resolved encoder and its checksum are recorded.
        from plumbing.fingerprint import file_sha256

        assert settings["encoder_sha256"] == file_sha256(pretrained_run[0] / "encoder.h5")


# (epochs, warm-up, batch, factor, patience, momentum) of each thesis cell, from thesis Fig. 4.9 / 4.2.3 (LUNA16)
# and Fig. 4.33 / 4.38 (MURA; they give no patience: 3, the one value the thesis states, 4.2.3); momentum 0 where
# the thesis wrote SGD(lr=0.001), 0.9 where 4.2.3 states it. Written here from the thesis, not read from the tables.
THESIS_ROWS = {
    ("luna16", "vgg16", "scratch"): (18, 0, 32, 0.01, 3, 0.0),
    ("luna16", "vgg16", "genesis"): (13, 0, 32, 0.01, 3, 0.0),
    ("luna16", "vgg16", "imagenet"): (13, 0, 32, 0.01, 3, 0.0),
    ("luna16", "resnet50", "scratch"): (10, 0, 32, 0.1, 3, 0.9),
    ("luna16", "resnet50", "genesis"): (10, 0, 32, 0.1, 3, 0.9),
    ("luna16", "resnet50", "imagenet"): (10, 0, 32, 0.1, 3, 0.9),
    ("mura", "resnet50", "scratch"): (12, 0, 16, 0.01, 3, 0.0),
    ("mura", "resnet50", "genesis"): (9, 2, 16, 0.1, 3, 0.0),
    ("mura", "resnet50", "imagenet"): (3, 2, 16, 0.1, 3, 0.0),
    ("mura", "vgg16", "scratch"): (15, 0, 16, 0.01, 3, 0.0),
    ("mura", "vgg16", "genesis"): (12, 0, 16, 0.1, 3, 0.0),
    ("mura", "vgg16", "imagenet"): (5, 0, 16, 0.01, 3, 0.0),
}


@pytest.mark.parametrize(
    "task, backbone, init, expected",
    [
        *((*cell, row) for cell, row in THESIS_ROWS.items()),
        ("mura", "resnet18", "genesis", (9, 2, 16, 0.1, 3, 0.0)),  # Not in the thesis: its family's row, with a note.
        ("mura", "resnet50_keras", "radimagenet", (3, 2, 16, 0.1, 3, 0.0)),  # Neither: resnet50's imagenet row.
    ],
)
def test_schedules_follow_the_thesis_per_backbone_and_init(task, backbone, init, expected, capsys, tmp_path):
    from importlib import import_module

    experiment = import_module(f"{task}.experiment")
    (tmp_path / "encoder.h5").write_bytes(b"checked for existence at parse time")
    common = [
        "--data",
        "/nowhere",
        "--backbone",
        backbone,
        "--init",
        init,
        "--encoder",
        str(tmp_path / "encoder.h5"),
        "--radimagenet-weights",
        str(tmp_path / "encoder.h5"),
    ]
    args = experiment.parse_args(common)
    assert (
        args.epochs,
        args.warmup_epochs,
        args.batch_size,
        args.lr_factor,
        args.lr_patience,
        args.momentum,
    ) == expected
    assert ("the thesis did not train resnet18" in capsys.readouterr().out) == (backbone == "resnet18")
    override = experiment.parse_args([*common, "--epochs", "4"])
    assert override.epochs == 4 and override.lr_factor == expected[3]
    if task == "mura":  # An epoch draws as many images as the thesis's offline-augmented set held.
        assert args.steps_per_epoch == -(-(29_477 + 29_176) // 16)


def test_encoders_are_checked_before_any_data_and_never_chosen_silently(tmp_path, monkeypatch, capsys):
    import transfer.encoders as encoders
    from luna16.experiment import parse_args

    monkeypatch.setattr(encoders, "PROJECT_ROOT", tmp_path)
    with pytest.raises(InitError, match="does not exist .--encoder."):
        parse_args(["--data", "/nowhere", "--init", "genesis", "--encoder", str(tmp_path / "missing.h5")])
    with pytest.raises(InitError, match="holds no encoder folder whose card names backbone vgg16"):
        parse_args(["--data", "/nowhere", "--init", "genesis"])
    for name, backbone in (
        ("genesis2d_vgg16_batch", "vgg16"),
        ("my_run", "vgg16"),
        ("genesis2d_vgg16_old", "resnet18"),
    ):
        (tmp_path / "weights" / name).mkdir(parents=True)
        (tmp_path / "weights" / name / "encoder.h5").write_bytes(name.encode())
        (tmp_path / "weights" / name / "card.json").write_text(json.dumps({"backbone": backbone}))
    # The cards decide, not the folders' names: my_run is a vgg16 encoder, genesis2d_vgg16_old is not.
    with pytest.raises(InitError, match="holds 2 vgg16 encoders .genesis2d_vgg16_batch, my_run."):
        parse_args(["--data", "/nowhere", "--init", "genesis"])
    (tmp_path / "weights" / "my_run" / "card.json").unlink()
    args = parse_args(["--data", "/nowhere", "--init", "genesis"])
    assert args.encoder.endswith("genesis2d_vgg16_batch/encoder.h5") and len(args.encoder_sha256) == 64
    assert "genesis encoder:" in capsys.readouterr().out
    with pytest.raises(InitError, match="--imagenet-weights"):
        parse_args(["--data", "/nowhere", "--init", "imagenet", "--imagenet-weights", str(tmp_path / "none.h5")])


def test_the_encoder_folder_is_a_preset_its_card_names_the_backbone(tmp_path, capsys):
    from luna16.experiment import parse_args
    from plumbing.errors import UsageError

    folder = tmp_path / "any name"
    folder.mkdir()
    (folder / "encoder.h5").write_bytes(b"weights")
    (folder / "card.json").write_text(json.dumps({"backbone": "resnet18"}))
    for given in (folder, folder / "encoder.h5"):  # The folder, or a file inside it.
        options = parse_args(["--data", "/nowhere", "--init", "genesis", "--encoder", str(given)])
        assert options.backbone == "resnet18" and options.encoder == str(folder / "encoder.h5")
        assert "resnet18" in options.out and options.epochs is not None  # The card's backbone drives the rest.
    with pytest.raises(
        UsageError,
        match=r"--backbone: vgg16 contradicts the encoder's card \(.*card.json: backbone "
        r"resnet18\)",
    ):
        parse_args(["--data", "/nowhere", "--init", "genesis", "--encoder", str(folder), "--backbone", "vgg16"])
    (folder / "card.json").unlink()  # An encoder from before cards: loaded as --backbone, said in one line.
    options = parse_args(
        ["--data", "/nowhere", "--init", "genesis", "--encoder", str(folder), "--backbone", "resnet18"]
    )
    assert options.backbone == "resnet18"
    assert "no card.json beside it; assuming a resnet18 encoder" in capsys.readouterr().out


def test_an_unfinished_pretraining_is_refused_as_encoder_unless_asked(tmp_path, capsys):
    from genesis2d.checkpoint import mark_finished
    from luna16.experiment import parse_args
    from mura.experiment import parse_args as mura_args

    folder = tmp_path / "run"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "encoder.h5").write_bytes(b"weights")
    (folder / "card.json").write_text(json.dumps({"backbone": "resnet18"}))
    (folder / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 1, "step": 40}))  # As SIGTERM leaves it.
    for parse in (parse_args, mura_args):
        for given in (folder, folder / "encoder.h5"):
            with pytest.raises(InitError, match=r"run: holds a pretraining that was stopped before it finished"):
                parse(["--data", "/nowhere", "--init", "genesis", "--encoder", str(given)])
        options = parse(["--data", "/nowhere", "--init", "genesis", "--encoder", str(folder), "--unfinished-encoder"])
        assert options.encoder == str(folder / "encoder.h5")
        assert "pretraining unfinished; using its best epoch so far" in capsys.readouterr().out
    mark_finished(folder / "checkpoint")
    assert parse_args(["--data", "/nowhere", "--init", "genesis", "--encoder", str(folder)]).backbone == "resnet18"


@pytest.mark.slow
def test_fine_tune_sets_the_encoders_batch_norm_momentum(tmp_path):
    import keras
    import tensorflow as tf

    from transfer.encoders import EncoderSpec
    from transfer.finetune import Head, Schedule, fine_tune

    x = np.random.default_rng(0).random((8, 32, 32, 1), dtype=np.float32)
    y = np.array([0, 1] * 4, np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    schedule = Schedule(
        epochs=1,
        warmup_epochs=0,
        batch_size=4,
        lr=1e-3,
        momentum=0.0,
        lr_factor=0.1,
        lr_patience=3,
        selection="held-out",
        bn_momentum=0.8,
    )
    model, history, kept = fine_tune(
        EncoderSpec("scratch", "resnet18"),
        Head(units=8, l2=0.0, dropout=0.5),
        schedule,
        (32, 32, 1),
        data,
        data,
        tmp_path,
        seed=0,
        verbose=0,
    )
    norms = [layer for layer in model.get_layer("encoder").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == pytest.approx(0.8) for layer in norms) and len(history) == 1


@pytest.mark.slow
def test_linear_probe_cross_validation_groups_by_scan(demo_dir, tmp_path_factory):
    from luna16.experiment import parse_args, run

    patches = tmp_path_factory.getbasetemp() / "cv_patches"
    out = tmp_path_factory.mktemp("cv_probe")
    args = parse_args(
        [
            "--data",
            str(demo_dir / "LUNA16"),
            "--patches",
            str(patches),
            "--out",
            str(out),
            "--init",
            "scratch",
            "--probe",
            "--folds",
            "1",
            *CV_TINY,
        ]
    )
    run(args)
    predictions = _check_cv_outputs(out, [1], trained=False)
    contract = read_results(out)
    assert contract.arm == "scratch probe" and contract.metrics["settings"]["probe"] is True
    fold = json.loads((out / "fold1_subsets0-1" / "metrics.json").read_text())
    assert fold["probe"]["C"] in [float(c) for c in np.logspace(-4, 2, 7)] and fold["epochs_trained"] == 0
    assert np.isfinite(predictions["probability"]).all() and predictions["probability"].nunique() > 1
    assert "linear probe" in (out / "summary.md").read_text()


@pytest.mark.parametrize("backbone", ["resnet18", "vgg16"])
def test_imagenet_preprocessing_feeds_the_weights_their_own_input(backbone):
    """The encoder sees what its ImageNet weights were trained on: 0-255 (qubvel ResNet, whose bn_data normalises it)
    or caffe-style BGR minus the ImageNet means (VGG), computed here by hand; its weights are the same variables."""
    import keras

    from genesis2d.unet import build_encoder
    from transfer.encoders import CAFFE_MEANS_BGR, with_imagenet_input

    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    encoder = build_encoder(backbone, (32, 32, 1))
    converted = with_imagenet_input(encoder, backbone)
    assert all(a is b for a, b in zip(converted.weights, encoder.weights))
    if backbone == "resnet18":
        expected = encoder.predict(255 * x, verbose=0)
    else:
        rgb = np.concatenate([255 * x] * 3, axis=-1) - np.asarray(CAFFE_MEANS_BGR, np.float32)
        expected = keras.Model(encoder.get_layer("block1_conv1").input, encoder.output).predict(rgb, verbose=0)
    np.testing.assert_allclose(converted.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert not np.allclose(encoder.predict(x, verbose=0), expected, rtol=1e-2)


def test_imagenet_preprocessing_is_refused_for_inits_not_trained_on_imagenet(tmp_path):
    from luna16.experiment import parse_args

    with pytest.raises(UsageError, match="applies to --init imagenet or radimagenet"):
        parse_args(["--data", "/nowhere", "--init", "scratch", "--imagenet-preprocessing"])
