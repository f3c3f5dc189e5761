"""Encoders that load in any Keras project, a card that suffices, and options refused before any work."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from genesis2d.card import KERAS2_SNIPPET, KERAS3_SNIPPET

ROOT = Path(__file__).resolve().parents[1]


def _run_snippet(snippet, out, legacy):
    """Runs a card's loading snippet in a fresh process on two image sizes; returns the features."""
    script = textwrap.dedent(f"""
        import os
        os.chdir({str(out)!r})
        import numpy as np
        results = {{}}
        for size in (64, 96):
            images = np.load(f"x{{size}}.npy")
    """) + textwrap.indent(snippet, "    ") + "\n    results[str(size)] = features\nnp.savez('features.npz', **results)\n"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if not legacy:
        script = script.replace('os.environ["TF_USE_LEGACY_KERAS"] = "1"', "")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(np.load(out / "features.npz"))


@pytest.mark.parametrize("flavour", ["keras3", "keras2"])
def test_the_cards_snippets_load_encoder_h5_with_the_trained_outputs(pretrained_run, flavour, tmp_path):
    import shutil

    from genesis2d.unet import build_encoder

    out, _ = pretrained_run
    shutil.copy(out / "encoder.h5", tmp_path / "encoder.h5")
    reference = build_encoder("resnet18", (None, None, 1))
    reference.load_weights(out / "encoder.weights.h5")
    rng = np.random.default_rng(2)
    expected = {}
    for size in (64, 96):  # Trained at 32: any multiple of 32 works.
        x = rng.random((2, size, size, 1), dtype=np.float32)
        np.save(tmp_path / f"x{size}.npy", x)
        expected[str(size)] = reference.predict(x, verbose=0)
    snippet = KERAS3_SNIPPET if flavour == "keras3" else KERAS2_SNIPPET
    if flavour == "keras2":
        assert 'TF_USE_LEGACY_KERAS"] = "1"' in snippet
    features = _run_snippet(snippet, tmp_path, legacy=flavour == "keras2")
    for size, value in expected.items():
        np.testing.assert_allclose(features[size], value, rtol=1e-4, atol=2e-4)  # Float32, other kernels.
    assert features["96"].shape == (2, 3, 3, 512)


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
    assert KERAS2_SNIPPET in text and KERAS3_SNIPPET in text and "stride 32" in text
    assert card["versions"]["segmentation-models"] == "1.0.1"


def _command(*argv, cwd=None):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.parametrize("options, config, message", [
    (["--backbone", "resnet101"], None, "argument --backbone: invalid choice: 'resnet101'"),
    (["--image-size", "100"], None, "argument --image-size: must be a multiple of 32"),
    ([], {"optimizer": "rmsprop"}, "--optimizer must be one of sgd, adam. Received: 'rmsprop'"),
    ([], {"norm": "foo"}, "--norm must be one of batch, instance, none"),
    ([], {"precision": "bfloat16"}, "--precision must be one of auto, float32, mixed_float16"),
])
def test_bad_pretraining_options_are_refused_with_one_line(tmp_path, options, config, message):
    extra = []
    if config:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        extra = ["--config", str(tmp_path / "c.yaml")]
    result = _command(ROOT / "genesis2d" / "train.py", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "o",
                      *options, *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_a_wrong_encoder_is_refused_before_any_data_is_read(tmp_path):
    result = _command(ROOT / "luna16" / "cross_validate.py", "--data", tmp_path / "nowhere", "--init", "genesis",
                      "--encoder", tmp_path / "missing.h5", "--out", tmp_path / "o", "--patches", tmp_path / "p")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines == [f"error: {tmp_path / 'missing.h5'}: encoder file does not exist "
                                                "(--encoder)."], result.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()
