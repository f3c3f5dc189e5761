#!/usr/bin/env bash
# Loads an exported encoder.h5 in TensorFlow 2.15 / Keras 2.15 (a Keras 2 project's stack) and compares
# its outputs with the Keras 3 encoder of this project.
#
#   bash tools/check_keras2.sh weights/genesis2d_resnet50_batch/encoder.h5
#
# Builds its own virtual environment (python3.11, tensorflow-cpu 2.15.1) under ${VENV:-/tmp/keras2-venv}
# on first use; prints the largest absolute difference and exits non-zero when it exceeds 1e-3.
set -euo pipefail
encoder=$(realpath "$1")
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-/tmp/keras2-venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install --quiet "tensorflow-cpu==2.15.1" "numpy<2" h5py
fi
# Reference features from this project's Keras 3 on random slices of two sizes.
(cd "$here" && TF_CPP_MIN_LOG_LEVEL=3 python - "$encoder" "$work" <<'PY'
import sys, numpy as np, keras
encoder = keras.models.load_model(sys.argv[1], compile=False)
rng = np.random.default_rng(0)
for size in (64, 96):
    x = rng.random((2, size, size, 1), dtype=np.float32)
    np.save(f"{sys.argv[2]}/x{size}.npy", x)
    np.save(f"{sys.argv[2]}/y{size}.npy", encoder.predict(x, verbose=0))
PY
)
TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" - "$encoder" "$work" <<'PY'
import sys, numpy as np, tensorflow as tf
import keras as k2; print(f"TensorFlow {tf.__version__}, Keras {k2.__version__}")
encoder = tf.keras.models.load_model(sys.argv[1], compile=False)
worst = 0.0
for size in (64, 96):
    got = encoder.predict(np.load(f"{sys.argv[2]}/x{size}.npy"), verbose=0)
    worst = max(worst, float(np.abs(got - np.load(f"{sys.argv[2]}/y{size}.npy")).max()))
print(f"loaded {sys.argv[1]}; largest difference from Keras 3: {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
PY
