"""Every Python snippet of README.md, weights/README.md and MODEL_CARD.md runs as written, with the trained features.

Keras 3 (TensorFlow) and tf-keras run here; Keras 2.15 and Keras 3 on JAX and PyTorch
need environments of their own: `python tools/check_snippets.py` runs all five.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("snippets", ROOT / "tools" / "snippets.py")
snippets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snippets)

MARKDOWN = """# A page

```bash
python -m study
```

1. Load it:

   ```python
   import keras
   encoder = keras.models.load_model("weights/run/encoder.h5", compile=False)
   ```
2. In tf-keras:
```python
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
encoder = tf.keras.models.load_model('encoder.h5')
```

```python
import tensorflow as tf
encoder = tf.keras.models.load_model("a/b.h5", compile=False)
```
"""


def test_python_blocks_their_kinds_and_loaded_paths_are_read_from_the_markdown():
    blocks = snippets.python_blocks(MARKDOWN)
    assert blocks == [
        'import keras\nencoder = keras.models.load_model("weights/run/encoder.h5", compile=False)\n',
        'import os\nos.environ["TF_USE_LEGACY_KERAS"] = "1"\nimport tensorflow as tf\n'
        "encoder = tf.keras.models.load_model('encoder.h5')\n",
        'import tensorflow as tf\nencoder = tf.keras.models.load_model("a/b.h5", compile=False)\n',
    ]
    assert [snippets.kind_of(b) for b in blocks] == ["keras3", "tf_keras", "keras2"]
    assert [snippets.loaded_paths(b) for b in blocks] == [["weights/run/encoder.h5"], ["encoder.h5"], ["a/b.h5"]]
    with pytest.raises(ValueError, match="imports no Keras"):
        snippets.kind_of("import numpy as np\n")


def test_a_failing_snippet_is_reported_with_its_error(tmp_path):
    (tmp_path / "page.md").write_text('```python\nraise RuntimeError("no such layer")\nimport keras\n```\n')
    (tmp_path / "encoder.h5").write_bytes(b"")
    [result] = snippets.run_blocks(tmp_path / "page.md", "keras3", tmp_path / "encoder.h5", tmp_path / "out")
    assert not result["ok"] and result["error"].endswith("RuntimeError: no such layer")


def test_the_relative_difference_is_scaled_by_the_largest_expected_value():
    assert snippets.relative_difference([1.0, 2.5, -4.0], [1.0, 2.0, -4.0]) == pytest.approx(0.5 / 4)
    assert snippets.relative_difference([1.0], [1.0, 2.0]) == float("inf")


def test_the_card_has_a_snippet_for_each_keras(pretrained_run):
    out, _ = pretrained_run
    blocks = snippets.python_blocks((out / "MODEL_CARD.md").read_text())
    assert sorted(snippets.kind_of(b) for b in blocks) == ["keras2", "keras3", "tf_keras"]


@pytest.mark.slow
@pytest.mark.parametrize("document", ["README.md", "weights/README.md", "MODEL_CARD.md"])
@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_every_snippet_runs_as_written_with_the_trained_features(pretrained_run, document, kind, tmp_path):
    from genesis2d.unet import build_encoder

    out, _ = pretrained_run
    path = out / document if document == "MODEL_CARD.md" else ROOT / document
    expected_runs = sum(snippets.kind_of(b) == kind for b in snippets.python_blocks(path.read_text()))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    results = snippets.run_blocks(path, kind, out / "encoder.h5", tmp_path, env=env)
    assert len(results) == expected_runs
    assert all(r["ok"] for r in results), [r["error"] for r in results]
    # The reference takes the other road: the weights file into a freshly built encoder.
    reference = build_encoder("resnet18", (None, None, 1))
    reference.load_weights(out / "encoder.weights.h5")
    compared = 0
    for result in results:
        arrays = np.load(result["arrays"])
        if "features" in arrays and "images" in arrays:  # A block may only build on the encoder.
            expected = reference.predict(arrays["images"], verbose=0)
            assert snippets.relative_difference(arrays["features"], expected) < 1e-4  # Float32, other kernels.
            compared += 1
    assert compared or not results, f"no {kind} block of {document} defines images and their features"
