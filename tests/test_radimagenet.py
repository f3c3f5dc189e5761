"""--init radimagenet: RadImageNet's keras.applications ResNet50 weights, from a stand-in file written here."""

import h5py
import numpy as np
import pytest

from plumbing.errors import UsageError
from transfer.encoders import InitError, load_encoder, radimagenet_file


@pytest.fixture(scope="module")
def radimagenet_standin(tmp_path_factory):
    """A file in the layout of RadImageNet-ResNet50_notop.h5 (Keras-2 HDF5 weights of keras.applications' ResNet50,
    no top), with recognisable values: (path, the ResNet50 it was written from)."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    for k, weight in enumerate(backbone.weights):
        weight.assign(np.full(weight.shape, 0.001 * (1 + k % 13), dtype="float32"))
    path = tmp_path_factory.mktemp("radimagenet") / "RadImageNet-ResNet50_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    return path, backbone


def test_radimagenet_weights_load_into_the_encoder(radimagenet_standin):
    path, backbone = radimagenet_standin
    encoder = load_encoder("radimagenet", "resnet50_keras", (64, 64, 1), radimagenet_weights=path)
    assert encoder.output_shape == (None, 2, 2, 2048)
    assert len(encoder.weights) == len(backbone.weights)
    for ours, theirs in zip(encoder.weights, backbone.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_wrong_missing_or_unavailable_radimagenet_weights_are_one_line(
    radimagenet_standin, keras_home, tmp_path, monkeypatch
):
    home, _ = keras_home
    wrong = home / "models" / "resnet18_imagenet_1000_no_top.h5"  # A real file of another layout.
    with pytest.raises(InitError, match="not RadImageNet's resnet50_keras weights") as error:
        load_encoder("radimagenet", "resnet50_keras", (64, 64, 1), radimagenet_weights=wrong)
    assert "\n" not in str(error.value)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(InitError) as error:
        radimagenet_file("resnet50_keras")
    message = str(error.value)
    assert "RadImageNet-ResNet50_notop.h5" in message and "github.com/BMEII-AI/RadImageNet" in message
    assert "--radimagenet-weights" in message and "\n" not in message
    with pytest.raises(UsageError, match="RadImageNet publishes no resnet18 weights.*--backbone resnet50_keras"):
        radimagenet_file("resnet18")
    (tmp_path / "models").mkdir()
    cached = tmp_path / "models" / "RadImageNet-ResNet50_notop.h5"
    cached.write_bytes(radimagenet_standin[0].read_bytes())
    assert radimagenet_file("resnet50_keras") == cached  # Keras's cache is the default place.


def test_genesis_u_net_has_the_radimagenet_encoder(radimagenet_standin):
    """Pretraining on --backbone resnet50_keras: its U-Net's encoder is the network RadImageNet's weights fit."""
    from genesis2d.unet import build_unet, encoder_of

    unet = build_unet("resnet50_keras", (64, 64, 1), "batch")
    assert unet.output_shape == (None, 64, 64, 1)
    radimagenet = load_encoder("radimagenet", "resnet50_keras", (64, 64, 1), radimagenet_weights=radimagenet_standin[0])
    encoder = encoder_of(unet)
    encoder.set_weights(radimagenet.get_weights())  # Same arrays, same order: one architecture.
    np.testing.assert_allclose(
        encoder.predict(np.ones((1, 64, 64, 1)), verbose=0),
        radimagenet.predict(np.ones((1, 64, 64, 1)), verbose=0),
        rtol=1e-5,
    )


@pytest.mark.slow
def test_luna16_cross_validation_with_radimagenet_end_to_end(radimagenet_standin, demo_dir, tmp_path_factory, capsys):
    from luna16.experiment import parse_args, run
    from plumbing.fingerprint import file_sha256
    from transfer.results import read_results

    path, _ = radimagenet_standin
    out = tmp_path_factory.mktemp("cv_radimagenet")
    args = parse_args(
        [
            "--data",
            str(demo_dir / "LUNA16"),
            "--patches",
            str(tmp_path_factory.getbasetemp() / "cv_patches"),
            "--out",
            str(out),
            "--init",
            "radimagenet",
            "--backbone",
            "resnet50_keras",
            "--radimagenet-weights",
            str(path),
            "--folds",
            "1",
            "--patch-size",
            "32",
            "--positive-copies",
            "2",
            "--negative-fraction",
            "0.05",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "64",
            "--gallery",
            "2",
            "--verbose",
            "0",
        ]
    )
    assert "using its resnet50 schedule for --init imagenet" in capsys.readouterr().out
    run(args)
    contract = read_results(out)
    assert contract.init == "radimagenet" and contract.backbone == "resnet50_keras"
    assert contract.metrics["settings"]["encoder_sha256"] == file_sha256(path)
    assert np.isfinite(contract.level("candidate")["probability"]).all()
