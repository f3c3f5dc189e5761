#!/usr/bin/env bash
# The first GPU figures: benchmarks/training.py under Keras's JAX backend on a lent GPU machine, whose image holds
# JAX (CUDA 13), numpy, scipy, h5py, numba, opencv, scikit-image and six but no TensorFlow and no Keras
# (/work/.library/device/KINDS.md).
#
#   bash tools/gpu_benchmark.sh prepare     # here: the wheels it lacks and the demo slices, in runs/gpu_carry (~10 MB)
#   bash tools/gpu_benchmark.sh check       # the install and a U-Net build alone (a dry run: SITE=/tmp/x, a clean target)
#   bash tools/gpu_benchmark.sh run         # there, as the device tool's command, carrying runs/gpu_carry:
#       run(command="bash tools/gpu_benchmark.sh run", carry=["runs/gpu_carry"], timeout_s=540)
#
# `run` installs the wheels into /tmp/site (--no-deps: the image has the rest), checks that the U-Net builds
# without TensorFlow, and runs the benchmark's three parts within one 8-minute call: the numpy input's pairs/s
# per core count and the 300 default pretraining steps first (~2-3 min), then the training table, stopped after
# 4.5 minutes so the call ends within 8. Everything it prints is tee'd to $OUT/training.txt, so a cut run still
# brings back the rows it finished; $OUT/device.txt holds nvidia-smi and the versions.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
carry=$here/runs/gpu_carry
# The Keras this project pins and the packages the image lacks (keras's namex and optree; segmentation_models
# with its backbone libraries). Python 3.12 wheels: the image's python3.
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 segmentation-models==1.0.1 efficientnet==1.0.0
        image-classifiers==1.0.0 keras-applications==1.0.8)

prepare() {
  rm -rf "$carry" && mkdir -p "$carry/wheels"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$carry/wheels" "${WHEELS[@]}"
  # The demo corpus's training slices, normalised: the machine there has no DICOM, NIfTI or MetaImage reader.
  (cd "$here" && python3 -c "import sys; sys.path.insert(0, '.'); from benchmarks.feed import demo_store; \
demo_store('$carry/demo_slices')")
  du -sh "$carry" "$carry"/*
}

check() {  # Install the wheels, then build the U-Net under JAX with TensorFlow refused.
  out=${OUT:-$here/runs/gpu_out}
  mkdir -p "$out"
  site=${SITE:-/tmp/site}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$carry"/wheels/*.whl
  export PYTHONPATH=$site PYTHONUNBUFFERED=1 KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3
  # Let JAX take nearly all of the GPU, so "the largest batch that fits" is the card's, not a 75% share's.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
  { nvidia-smi || true; python3 -c "import jax, keras, numpy; print('jax', jax.__version__, jax.devices(), \
'keras', keras.__version__, 'numpy', numpy.__version__)"; } > "$out/device.txt" 2>&1
  cd "$here"
  python3 - <<'PY' 2>&1 | tee -a "$out/device.txt"
import sys
class NoTensorFlow:  # As on a machine without it, whatever is installed here.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTensorFlow())
from genesis2d.unet import build_unet
print("U-Net built under", __import__("keras").backend.backend(), "without TensorFlow:",
      build_unet("resnet50").count_params(), "parameters")
PY
}

run() {
  check
  python3 benchmarks/training.py --demo-slices "$carry/demo_slices" --parts 2 3 2>&1 | tee "$out/training.txt"
  # Rows come mixed_float16 first; whatever is cut by the limit is missing from the table, not wrong in it.
  timeout 270 python3 benchmarks/training.py --parts 1 --largest-limit 512 2>&1 | tee -a "$out/training.txt" || true
}

case "${1:-}" in
  prepare) prepare ;;
  check) check ;;
  run) run ;;
  *) echo "usage: bash tools/gpu_benchmark.sh prepare|check|run" >&2; exit 2 ;;
esac
