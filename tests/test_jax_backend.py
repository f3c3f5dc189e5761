"""The model path without TensorFlow: the U-Net builds and trains under KERAS_BACKEND=jax (issue: the GPU image
holds JAX, not TensorFlow). Runs in a subprocess whose imports of `tensorflow` fail, so nothing can lean on it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install -e '.[test]' brings jax[cpu])"
)

# Refuses every import of TensorFlow (and tf_keras, which would pull it in): what a machine without it does.
NO_TENSORFLOW = """
import sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ImportError(f"No module named {name!r} (refused: this run checks the JAX path)")
sys.meta_path.insert(0, NoTensorFlow())
"""

TRAIN_UNDER_JAX = (
    NO_TENSORFLOW
    + """
import json, sys
import numpy as np
import keras
from genesis2d.pretrain import PretrainConfig, make_optimizer
from genesis2d.transforms import make_pair
from genesis2d.unet import build_unet

out = sys.argv[1]
keras.utils.set_random_seed(0)
float32 = build_unet("resnet18", (64, 64, 1))  # float32: the reference for the TensorFlow side.
float32.save_weights(f"{out}/unet.weights.h5")
images = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
np.save(f"{out}/predicted.npy", float32.predict(images, verbose=0))

keras.mixed_precision.set_global_policy("mixed_float16")
model = build_unet("resnet18", (64, 64, 1))
config = PretrainConfig(out="unused")  # The pretraining defaults: SGD, learning rate 1.0, momentum 0.9.
model.compile(optimizer=make_optimizer(config.optimizer, config.lr, config.momentum), loss="mse")
inputs, targets = make_pair(images, seed=1)
before = [np.array(w) for w in model.trainable_weights]
expected = float(np.mean((np.asarray(model(inputs, training=True), dtype=np.float64) - targets) ** 2))
losses = [float(model.train_on_batch(inputs, targets)) for _ in range(2)]
changed = sum(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.trainable_weights))
conv = model.get_layer("decoder_stage0a_conv")
print(json.dumps({"backend": keras.backend.backend(), "losses": losses, "expected_first": expected,
                  "changed": changed, "weights": len(before), "optimizer": type(model.optimizer).__name__,
                  "compute": conv.compute_dtype, "variable": conv.variable_dtype, "output": model.output.dtype,
                  "tensorflow_loaded": any(m.split(".")[0] == "tensorflow" for m in sys.modules)}))
"""
)


def run_without_tensorflow(code, *args):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("SM_FRAMEWORK", None)  # The tests' conftest picks tf.keras; here the module must choose by itself.
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_refusing_tensorflow_really_refuses_it():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW + "import tensorflow"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1 and "refused" in result.stderr


@pytest.mark.slow
def test_unet_trains_two_mixed_precision_steps_under_jax_and_matches_tensorflow(tmp_path):
    found = run_without_tensorflow(TRAIN_UNDER_JAX, str(tmp_path))
    assert found["backend"] == "jax" and not found["tensorflow_loaded"]
    assert found["compute"] == "float16" and found["variable"] == "float32" and found["output"] == "float32"
    assert found["optimizer"] == "LossScaleOptimizer"  # Keras wraps the optimizer under mixed_float16.
    first, second = found["losses"]
    assert np.isfinite([first, second]).all()
    # The first step's loss is the MSE of the model before its update (float16 activations: loose tolerance).
    assert first == pytest.approx(found["expected_first"], rel=1e-3)
    assert found["changed"] == found["weights"]  # Every trainable array moved.

    # The same weights give the same restoration under TensorFlow (this process's backend).
    import keras

    from genesis2d.unet import build_unet

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the comparison needs this process on the TensorFlow backend")
    model = build_unet("resnet18", (64, 64, 1))
    model.load_weights(tmp_path / "unet.weights.h5")
    images = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
    np.testing.assert_allclose(model.predict(images, verbose=0), np.load(tmp_path / "predicted.npy"), atol=2e-5)
