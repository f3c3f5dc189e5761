"""Runs every loading snippet of README.md, weights/README.md and MODEL_CARD.md as written, in five Keras environments.

    python tools/check_snippets.py                       # a fresh resnet18 encoder, exported as pretraining does
    python tools/check_snippets.py --encoder weights/genesis2d_resnet50_batch/encoder.h5

Keras 3 on TensorFlow and tf-keras run in this project's environment; Keras 2.15
(TensorFlow 2.15), Keras 3 on JAX and Keras 3 on PyTorch (neither with TensorFlow)
each in a virtual environment this script builds under --envs on first use (a few
GB of downloads; later runs reuse them). A snippet runs in each environment its code
asks for (tools/snippets.py). Per environment and snippet it prints "snippet ran" and
the relative difference of the snippet's features from Keras 3 on TensorFlow's
(`load_model` of the same file), and exits 1 if a snippet fails or a difference
reaches --tolerance.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # This checkout's packages, whatever is installed.

from plumbing.cli import run_command  # noqa: E402
from plumbing.errors import InputError, UsageError  # noqa: E402

MARKDOWN = ("README.md", "weights/README.md")  # And the MODEL_CARD.md the card code writes.
TOLERANCE = 1e-4  # Float32 features through other kernels agree to ~1e-6 relative (measured); 1e-4 leaves room.


@dataclass(frozen=True)
class Environment:
    """One Keras a user may load the encoder in: which snippets it runs, and how to build it."""

    name: str
    kind: str  # The snippets it runs: a key of tools/snippets.py's KINDS.
    venv: str = ""  # Empty: this project's own environment.
    python: str = sys.executable  # The interpreter the virtual environment is made from.
    packages: tuple = ()
    variables: dict = field(default_factory=dict)
    versions: tuple = ("keras",)  # Packages whose versions the report names.


def _keras_version():
    from importlib.metadata import version

    return version("keras")


ENVIRONMENTS = (
    Environment(
        "Keras 3 on TensorFlow", "keras3", variables={"KERAS_BACKEND": "tensorflow"}, versions=("keras", "tensorflow")
    ),
    Environment("tf-keras", "tf_keras", versions=("tf_keras", "tensorflow")),
    # TensorFlow 2.15 ships wheels up to Python 3.11 and was built against NumPy 1.
    Environment(
        "Keras 2.15",
        "keras2",
        "keras2",
        "python3.11",
        ("tensorflow-cpu==2.15.1", "numpy<2", "h5py"),
        versions=("keras", "tensorflow-cpu"),
    ),
    # The same Keras as this project's, so that only the backend differs.
    Environment(
        "Keras 3 on JAX",
        "keras3",
        "jax",
        sys.executable,
        (f"keras=={_keras_version()}", "jax[cpu]", "h5py"),
        {"KERAS_BACKEND": "jax"},
        ("keras", "jax"),
    ),
    # torch 2.13.0: the CPU wheel kept on the machines this project is developed on; elsewhere
    # pip may fetch a CUDA build of several GB for the same version (it runs on the CPU too).
    Environment(
        "Keras 3 on PyTorch",
        "keras3",
        "torch",
        sys.executable,
        (f"keras=={_keras_version()}", "torch==2.13.0", "h5py"),
        {"KERAS_BACKEND": "torch"},
        ("keras", "torch"),
    ),
)
REFERENCE = ENVIRONMENTS[0]


def _snippets_module():
    spec = importlib.util.spec_from_file_location("snippets", ROOT / "tools" / "snippets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interpreter(environment, envs):
    """The Python of an environment, its virtual environment built (once) when it has one."""
    if not environment.venv:
        return sys.executable
    venv = Path(envs) / environment.venv
    python = venv / "bin" / "python"
    stamp = venv / "installed.json"
    if stamp.exists() and json.loads(stamp.read_text()) == list(environment.packages):
        return str(python)
    print(f"building {venv} ({', '.join(environment.packages)}) ...", flush=True)
    for command in (
        [environment.python, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", *environment.packages],
    ):
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            raise InputError(
                venv, f"building the {environment.name} environment failed: {' '.join(command)}: {error}"
            ) from None
    stamp.write_text(json.dumps(list(environment.packages)))
    return str(python)


def versions(python, packages):
    script = "import sys, importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))"
    return subprocess.run([python, "-c", script, *packages], capture_output=True, text=True, check=True).stdout.strip()


def export_fresh_encoder(backbone, out):
    """An encoder.h5 written by the exporter pretraining uses, from a randomly initialised U-Net."""
    import keras

    from genesis2d.pretrain import export_encoder
    from genesis2d.unet import build_unet

    keras.utils.set_random_seed(0)
    export_encoder(build_unet(backbone, (64, 64, 1)), backbone, out)
    return Path(out) / "encoder.h5"


def write_card(backbone, out):
    from genesis2d.card import card_markdown, encoder_card
    from genesis2d.pretrain import NORMALISATION

    path = Path(out) / "MODEL_CARD.md"
    path.write_text(card_markdown(encoder_card(backbone, NORMALISATION)))
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, help="an encoder.h5 (default: a fresh resnet18 encoder)")
    parser.add_argument(
        "--backbone", default="resnet18", help="the backbone of --encoder, for MODEL_CARD.md (default: resnet18)"
    )
    parser.add_argument(
        "--envs",
        type=Path,
        default=Path(tempfile.gettempdir()) / "genesis2d-envs",
        help="where the virtual environments are built (default: $TMPDIR/genesis2d-envs)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[e.venv or e.kind for e in ENVIRONMENTS],
        help="check these environments only (default: all)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"largest relative difference allowed (default: {TOLERANCE:g})",
    )
    args = parser.parse_args(argv)
    if args.encoder and not args.encoder.is_file():
        raise UsageError(args.encoder, "encoder file does not exist (--encoder)")
    return args


def run(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory(prefix="check_snippets_") as work:
        failures = check(args.encoder, args.backbone, args.envs, args.only, args.tolerance, Path(work))
    print("all snippets ran and agree" if not failures else f"{failures} failure(s)")
    return 1 if failures else 0


def check(encoder, backbone, envs, only, tolerance, work):
    """Runs the snippets in each environment (all, or those named in `only`); prints and counts the failures."""
    import keras
    import numpy as np

    snippets = _snippets_module()
    encoder = encoder.resolve() if encoder else export_fresh_encoder(backbone, work)
    markdown = [ROOT / name for name in MARKDOWN] + [write_card(backbone, work)]
    reference = keras.models.load_model(encoder, compile=False)
    base_env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    failures = 0
    for environment in ENVIRONMENTS:
        if only and (environment.venv or environment.kind) not in only:
            continue
        python = interpreter(environment, envs)
        print(f"{environment.name} ({versions(python, environment.versions)}):", flush=True)
        ran = 0
        for path in markdown:
            results = snippets.run_blocks(
                path,
                environment.kind,
                encoder,
                work / (environment.venv or environment.kind),
                python=python,
                env={**base_env, **environment.variables},
            )
            for result in results:
                where = (
                    f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name} block {result['block']}"
                )
                if not result["ok"]:
                    failures += 1
                    print(f"{where}: FAILED\n" + "\n".join(f"    {line}" for line in result["error"].splitlines()))
                    continue
                ran += 1
                arrays = np.load(result["arrays"])
                if "features" not in arrays or "images" not in arrays:
                    print(f"{where}: snippet ran (it defines no images and features to compare)")
                    continue
                difference = snippets.relative_difference(
                    arrays["features"], reference.predict(arrays["images"], verbose=0)
                )
                failures += difference >= tolerance
                print(
                    f"{where}: snippet ran; features {arrays['features'].shape}, relative difference from "
                    f"{REFERENCE.name} {difference:.1e}" + ("" if difference < tolerance else " TOO LARGE"),
                    flush=True,
                )
        if not ran:
            failures += 1
            print("  no snippet ran in this environment")
    return failures


if __name__ == "__main__":
    sys.exit(run_command(parse_args, run))
