"""Encoders that load in any Keras project, a card that suffices, and options refused before any work."""

import importlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from genesis2d.card import LOADING

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["keras", "tf_keras"])
def keras_module(request):
    """Keras 3 and tf-keras (Keras 2), side by side in this process: each is its own package."""
    return importlib.import_module(request.param)


@pytest.mark.slow
def test_a_classifier_on_a_loaded_encoder_trains_a_step(pretrained_run, keras_module):
    """`encoder(x)` is one tensor, so a head fits on it; one SGD step moves the head as the gradient says."""
    keras = keras_module
    out, _ = pretrained_run
    encoder = keras.models.load_model(out / "encoder.h5", compile=False)
    x = keras.Input((None, None, 1))
    features = encoder(x)
    assert not isinstance(features, (list, tuple)), type(features)
    encoder.trainable = False  # BatchNormalization then uses its moving statistics, as predict does.
    head = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros")
    classifier = keras.Model(x, head(keras.layers.GlobalAveragePooling2D()(features)))
    rate = 0.1
    classifier.compile(optimizer=keras.optimizers.SGD(learning_rate=rate), loss="binary_crossentropy")
    images = np.random.default_rng(3).random((4, 64, 64, 1), dtype=np.float32)
    labels = np.array([[0.0], [1.0], [1.0], [0.0]], np.float32)
    loss = classifier.train_on_batch(images, labels)
    # With a zero head every probability is 1/2: the loss is log 2 and the cross-entropy gradient
    # of the head is mean((1/2 - y) * pooled features) for the kernel, mean(1/2 - y) for the bias.
    pooled = encoder.predict(images, verbose=0).astype(np.float64).mean(axis=(1, 2))
    kernel, bias = head.get_weights()
    np.testing.assert_allclose(float(np.ravel(loss)[0]), np.log(2), rtol=1e-5)
    np.testing.assert_allclose(
        kernel, -rate * pooled.T @ (0.5 - labels) / len(labels), rtol=1e-4, atol=1e-6 * rate * np.abs(pooled).max()
    )
    np.testing.assert_allclose(bias, -rate * np.mean(0.5 - labels, keepdims=True)[0], rtol=1e-5)


@pytest.mark.parametrize("outputs", [1, 2])
def test_a_portable_file_keeps_one_output_a_tensor_and_several_a_list(tmp_path, keras_module, outputs):
    import h5py
    import keras as keras3

    from genesis2d.portable import make_portable

    image = keras3.Input((None, None, 1), name="image")
    skip = keras3.layers.Conv2D(2, 3, padding="same", name="skip")(image)
    deep = keras3.layers.Conv2D(3, 3, strides=2, padding="same", name="deep")(skip)
    saved = keras3.Model(image, deep if outputs == 1 else [deep, skip])
    saved.save(tmp_path / "model.h5")
    make_portable(tmp_path / "model.h5")
    with h5py.File(tmp_path / "model.h5", "r+") as handle:  # Back to what earlier versions wrote: lists of one.
        config = json.loads(handle.attrs["model_config"])
        old = {
            key: config["config"][key] if isinstance(config["config"][key][0], list) else [config["config"][key]]
            for key in ("input_layers", "output_layers")
        }
        handle.attrs["model_config"] = json.dumps({**config, "config": {**config["config"], **old}})
    make_portable(tmp_path / "model.h5")  # Rewriting such a file repairs it.
    with h5py.File(tmp_path / "model.h5") as handle:
        assert json.loads(handle.attrs["model_config"]) == config
    loaded = keras_module.models.load_model(tmp_path / "model.h5", compile=False)
    symbolic = loaded(keras_module.Input((None, None, 1)))
    if outputs == 1:
        assert not isinstance(symbolic, (list, tuple)), type(symbolic)
    else:
        assert isinstance(symbolic, (list, tuple)) and len(symbolic) == 2
    x = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    got, expected = loaded.predict(x, verbose=0), saved.predict(x, verbose=0)
    assert len(got) == len(expected) if outputs > 1 else got.shape == expected.shape
    for got_one, expected_one in zip(*((got, expected) if outputs > 1 else ([got], [expected]))):
        np.testing.assert_allclose(got_one, expected_one, rtol=1e-6, atol=1e-6)


def test_the_card_tells_how_to_feed_the_encoder(pretrained_run):
    import keras

    from plumbing.fingerprint import file_sha256

    out, _ = pretrained_run
    card = json.loads((out / "card.json").read_text())
    encoder = keras.models.load_model(out / "encoder.h5", compile=False)
    x = np.zeros((1, 64, 64, 1), np.float32)
    features = encoder.predict(x, verbose=0)
    assert features.shape[-1] == card["output"]["channels"] and 64 // features.shape[1] == card["output"]["stride"]
    assert card["input"]["shape"] == [None, None, None, 1] and card["input"]["range"] == [0.0, 1.0]
    assert set(card["input"]["normalisation"]) == {"CT", "MR", "XR"}
    unet = keras.models.load_model(out / "unet.keras", compile=False)
    for name in (*card["architecture"]["layers"]["skips_deepest_first"], "gray_to_rgb", "encoder_output"):
        unet.get_layer(name)  # Every named layer exists.
    for name, digest in card["files"].items():
        assert file_sha256(out / name) == digest
    text = (out / "MODEL_CARD.md").read_text()
    assert card["loading"] == [asdict(snippet) for snippet in LOADING]
    assert all(s.code in text and s.needs in text for s in LOADING) and "stride 32" in text
    assert card["versions"]["segmentation-models"] == "1.0.1"


def _command(*argv, cwd=None):
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "options, config, message",
    [
        (
            ["--backbone", "resnet101"],
            None,
            "argument --backbone: must be one of resnet18, resnet34, resnet50, resnet50_keras, vgg16, vgg19. Received: "
            "'resnet101'",
        ),
        (["--image-size", "100"], None, "argument --image-size: must be a multiple of 32"),
        ([], {"optimizer": "rmsprop"}, "--optimizer: must be one of sgd, adam. Received: 'rmsprop'"),
        ([], {"norm": "foo"}, "--norm: must be one of batch, instance, none"),
        ([], {"precision": "bfloat16"}, "--precision: must be one of auto, float32, mixed_float16"),
    ],
)
def test_bad_pretraining_options_are_refused_with_one_line(tmp_path, options, config, message):
    extra = []
    if config:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        extra = ["--config", str(tmp_path / "c.yaml")]
    result = _command(
        ROOT / "genesis2d" / "train.py", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "o", *options, *extra
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_wrong_encoder_is_refused_before_any_data_is_read(tmp_path):
    result = _command(
        ROOT / "luna16" / "cross_validate.py",
        "--data",
        tmp_path / "nowhere",
        "--init",
        "genesis",
        "--encoder",
        tmp_path / "missing.h5",
        "--out",
        tmp_path / "o",
        "--patches",
        tmp_path / "p",
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines == [
        f"error: {tmp_path / 'missing.h5'}: encoder folder or file does not exist (--encoder)."
    ], result.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()
