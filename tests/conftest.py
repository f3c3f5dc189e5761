import os
from pathlib import Path

# Quiet TensorFlow and pick segmentation_models' tf.keras backend before anything imports them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json  # noqa: E402

import pytest  # noqa: E402

# Tests marked `learning` assert what a short training learned (a loss below a baseline, an AUC above chance, a
# contrast that separates): outcomes that another CPU's kernels, which round in another order, move like another
# seed. `tools/learning_margins.py` reruns them with LEARNING_SEED = 0, 1, 2 under both of TensorFlow's CPU
# kernel sets (TF_ENABLE_ONEDNN_OPTS=0 and 1) and collects what each measured (LEARNING_RECORD); each
# threshold's comment gives the range it found.
LEARNING_SEED = int(os.environ.get("LEARNING_SEED", "0"))


# The slow tier runs in two processes, a test file staying in one (`-n 2 --dist loadfile`), and the wall time is the
# busier process's. xdist hands out files in the order collected (`--no-loadscope-reorder`; by default it puts files
# with the most tests first, which left the files of a few long tests to the end); collected longest first, the last
# files are short and both processes end together. Seconds of each file's slow tests on 2 cores beside the other
# process (its durations, 2026-12-07); a file not listed is short and goes after these.
SLOW_TIER_SECONDS = {
    "test_experiment.py": 1340,
    "test_pretrain.py": 748,
    "test_contrastive.py": 642,
    "test_benchmarks.py": 637,
    "test_array.py": 585,
    "test_multiworker.py": 375,
    "test_determinism.py": 241,
    "test_transfer.py": 217,
    "test_signals.py": 176,
    "test_faults.py": 157,
    "test_mura.py": 154,
    "test_snippets.py": 124,
    "test_unet.py": 109,
    "test_portable.py": 103,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -SLOW_TIER_SECONDS.get(item.path.name, 0))  # Stable: a file's tests keep their order.


def load_tool(name):
    """The module of `tools/<name>.py`: tools are scripts, not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def record_learning(request):
    """record(quantity, value, threshold, kind): writes what a learning assertion measured to $LEARNING_RECORD, if set.

    `threshold` is the bound the test asserts, as the same kind of number as `value` (a ratio, an AUC, a gap),
    and `kind` whether the value must stay above it ("min") or below it ("max").
    """

    def record(quantity, value, threshold, kind):
        path = os.environ.get("LEARNING_RECORD")
        if path:
            row = {
                "test": request.node.nodeid,
                "quantity": quantity,
                "value": float(value),
                "threshold": float(threshold),
                "kind": kind,
                "seed": LEARNING_SEED,
                "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
            }
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    return record


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The demo tree (pretraining corpus, LUNA16, MURA), written once per test session."""
    from study.demo_data import write_all

    return write_all(tmp_path_factory.mktemp("demo") / "data", seed=0)


@pytest.fixture(scope="session")
def demo_manifest(demo_dir, tmp_path_factory):
    """A manifest of the demo pretraining corpus with non-empty val and test splits."""
    from preprocessing.manifest import main

    out = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    main(
        [
            "--datasets",
            str(demo_dir / "pretrain" / "datasets.yaml"),
            "--root",
            str(demo_dir / "pretrain"),
            "--out",
            str(out),
            "--fractions",
            "0.6",
            "0.2",
            "0.2",
        ]
    )
    return out


# Learning rate 0.01: the default 1.0 (Models Genesis, for 64x64x32 cubes and batch 6+) blows the encoder up at
# batch 4 and 32x32 (features ~1e13, a constant output); 0.01 restores better than the identity from step 1.
TINY_PRETRAIN = [
    "--backbone",
    "resnet18",
    "--image-size",
    "32",
    "--crop-size",
    "64",
    "--batch-size",
    "4",
    "--validation-steps",
    "1",
    "--verbose",
    "0",
    "--samples",
    "2",
    "--lr",
    "0.01",
]


@pytest.fixture(scope="session")
def pretrained_run(demo_manifest, tmp_path_factory):
    """A two-step genesis2d pretraining (resnet18, 32x32): (output folder, model card)."""
    from genesis2d.pretrain import parse_args, run

    out = tmp_path_factory.mktemp("pretrain") / "run"
    card = run(
        parse_args(
            [
                "--manifest",
                str(demo_manifest),
                "--out",
                str(out),
                *TINY_PRETRAIN,
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
            ]
        )
    )
    return out, card


def write_imagenet_standin(models, name="resnet18", recognisable=True):
    """A stand-in for a backbone's ImageNet file in Keras's cache folder `models`, in the real file's Keras-2
    HDF5 layout; returns the backbone it was written from. Its values are recognisable (a constant per array),
    or, with `recognisable=False`, a seeded random start that trains like a real one."""
    import h5py
    import keras
    import numpy as np
    import segmentation_models as sm
    from keras.src.legacy.saving import legacy_h5_format

    from genesis2d.backbones import BACKBONES

    keras.utils.set_random_seed(123)
    backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)(
        name, input_shape=(None, None, 3), weights=None, include_top=False
    )
    for weight in backbone.weights if recognisable else ():
        weight.assign(np.full(weight.shape, 0.01 * (1 + len(weight.path) % 7), dtype="float32"))
    Path(models).mkdir(parents=True, exist_ok=True)
    with h5py.File(Path(models) / BACKBONES[name].imagenet_file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)  # The Keras-2 layout of the real file.
    return backbone


@pytest.fixture(scope="session")
def keras_home(tmp_path_factory):
    """A KERAS_HOME holding a stand-in ImageNet file for resnet18, where Keras looks for it."""
    home = tmp_path_factory.mktemp("keras_home")
    backbone = write_imagenet_standin(home / "models", "resnet18")
    previous = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(home)
    yield home, backbone
    if previous is None:
        os.environ.pop("KERAS_HOME")
    else:
        os.environ["KERAS_HOME"] = previous
