"""Runs the Python code blocks of a Markdown file as written, in whatever Keras environment runs this file.

Needs only the standard library and NumPy, so it runs in environments that lack this
project (Keras 3 on JAX or PyTorch without TensorFlow, TensorFlow 2.15):

    python tools/snippets.py run MODEL_CARD.md --kind keras3 --encoder encoder.h5 --out results/

For every ```python block of that kind it makes a fresh folder, puts the encoder at each
path the block passes to `load_model`, executes the block unchanged in a fresh process
and keeps the `images` and `features` arrays the block defines (`results/<n>.npz`), so
the features can be compared with another Keras's. `tests/test_snippets.py` and
`tools/check_snippets.py` both use it.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# Which Keras a block runs in follows from its code, as it does for a user: setting
# TF_USE_LEGACY_KERAS routes tf.keras to tf-keras (TensorFlow 2.16+); `import keras`
# is Keras 3 (or 2.15 under TensorFlow 2.15); keras taken from tensorflow without the
# variable is Keras 2.15 only on TensorFlow 2.15 (on 2.16+ it would be Keras 3 again).
KINDS = {
    "tf_keras": re.compile(r"TF_USE_LEGACY_KERAS"),
    "keras3": re.compile(r"^import keras\b", re.MULTILINE),
    "keras2": re.compile(r"^(from tensorflow import keras|import tensorflow as tf)\b", re.MULTILINE),
}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL
)
LOADED_PATH = re.compile(r"load_model\(\s*[\"']([^\"']+)[\"']")


def python_blocks(markdown):
    """The ```python blocks of a Markdown text, dedented (a block inside a list item is indented), in order."""
    return [textwrap.dedent(m["body"]) for m in FENCE.finditer(markdown) if m["info"].strip() == "python"]


def kind_of(block):
    """'tf_keras', 'keras3' or 'keras2': the Keras environment a block's own code asks for."""
    for kind, pattern in KINDS.items():
        if pattern.search(block):
            return kind
    raise ValueError(f"a Python block imports no Keras, so no environment can run it. Received: block={block[:80]!r}")


def loaded_paths(block):
    """The paths a block passes to `load_model`, as written."""
    return LOADED_PATH.findall(block)


def execute(block_file, out):
    """Executes one block unchanged (in this process: called in a fresh one); saves its images and features."""
    import numpy as np

    namespace = {"__name__": "__main__"}
    exec(compile(Path(block_file).read_text(), str(block_file), "exec"), namespace)
    arrays = {name: np.asarray(namespace[name]) for name in ("images", "features") if name in namespace}
    np.savez(out, **arrays)


def run_blocks(markdown_file, kind, encoder, out, python=sys.executable, env=None):
    """Runs the `kind` blocks of `markdown_file` (each in a fresh folder and process, with `encoder` where it is
    loaded).

    Returns one dict per block: `block` (its number among the file's Python blocks),
    `ok`, `error` (the last lines of what it printed, on failure) and `arrays` (the
    .npz of its images and features, on success).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for number, block in enumerate(python_blocks(Path(markdown_file).read_text())):
        if kind_of(block) != kind:
            continue
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            for path in loaded_paths(block):
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(encoder, folder / path)
            (folder / "block.py").write_text(block)
            arrays = (
                out / f"{'_'.join(Path(markdown_file).parts[-2:])}.{number}.npz"
            )  # README.md twice: keep its folder.
            result = subprocess.run(
                [python, str(Path(__file__).resolve()), "execute", "block.py", str(arrays)],
                cwd=folder,
                capture_output=True,
                text=True,
                env=env,
            )
        ok = result.returncode == 0
        results.append(
            {
                "block": number,
                "ok": ok,
                "arrays": str(arrays) if ok else None,
                "error": None if ok else "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:]),
            }
        )
    return results


def relative_difference(got, expected):
    """Largest absolute difference relative to the largest expected value: scale-free, and not fooled by near zeros."""
    import numpy as np

    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), np.finfo(np.float32).tiny))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a Markdown file's blocks of one kind; print their results as JSON")
    run.add_argument("markdown", type=Path)
    run.add_argument("--kind", required=True, choices=sorted(KINDS))
    run.add_argument("--encoder", required=True, type=Path, help="the encoder.h5 put where a block loads one")
    run.add_argument("--out", required=True, type=Path, help="folder for each block's images and features")
    execute_one = commands.add_parser("execute", help="execute one block file here (run calls it)")
    execute_one.add_argument("block", type=Path)
    execute_one.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "execute":
        execute(args.block, args.out)
    else:
        print(json.dumps(run_blocks(args.markdown, args.kind, args.encoder.resolve(), args.out.resolve())))


if __name__ == "__main__":
    main()
