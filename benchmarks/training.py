"""How fast do the pretraining U-Nets train, on either Keras backend, and how many cores keep them fed?

    KERAS_BACKEND=jax python benchmarks/training.py               # a GPU without TensorFlow (tools/gpu_benchmark.sh)
    python benchmarks/training.py --size cpu                     # this CPU: the same table at small sizes
    python benchmarks/training.py --size tiny                    # seconds: what tests/test_benchmarks.py runs

Three parts, each printed as a table:

1. Training images/s of the ResNet50 and VGG16 U-Nets at 224 (`--size full`), in
   mixed_float16, mixed_bfloat16 and float32, at batch 32 and, on a GPU, at the largest batch that
   fits in mixed_float16 (doubling from 64 until one fails), with `jit_compile` (always on under
   JAX; off and on under TensorFlow): fed from batches held in memory (what the
   accelerator can do) and from the numpy distortions made by worker processes
   (`benchmarks/feed.py`, one per core, up to 16: what the pretraining input
   delivers), with the peak GPU memory and the GPU's name. Each row runs in its own
   process, so its peak memory and an out-of-memory failure are its own. Figures
   are the median over `--repeats` timed epochs of `--steps` steps (the first
   epoch, which compiles, is left out).
2. Distorted pairs/s of that numpy input alone on 1, 2, 4, 8 and 16 worker
   processes (those the machine has): how many cores one GPU needs.
3. `--pretrain-steps` (300) pretraining steps on the demo corpus with the default
   recipe (SGD 1.0, momentum 0.9, the linear warm-up, BatchNorm momentum 0.9:
   `genesis2d.options`), the training loss printed every 50 steps, so a divergence of
   the defaults at the real size shows on a GPU. `benchmarks/pretrain_defaults.py`
   runs the pretraining command itself and also reads the validation loss against
   its baselines.

The slices for parts 1 and 2 are synthetic 512x512 (the size of real CT), so the
448 crop and resize cost what they cost on real data.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

WORKER_COUNTS = (1, 2, 4, 8, 16)
MAX_FEED_WORKERS = 16  # The device machines have 16 cores (/work/.library/device/KINDS.md).


@dataclasses.dataclass(frozen=True)
class Size:
    """One preset of every size the benchmark uses; each option left unset takes its preset's value."""

    backbones: tuple = ("resnet50", "vgg16")
    image_size: int = 224  # Thesis 3.1.8.
    crop_size: int = 448
    slice_size: int = 512
    batch_size: int = 32
    # Float16 first (the largest-batch search runs in it), then bfloat16 (auto's choice from compute capability 8.0),
    # then float32: one GPU run gives all three.
    precisions: tuple = ("mixed_float16", "mixed_bfloat16", "float32")
    steps: int = 20
    repeats: int = 3
    largest_limit: int = 1024  # The doubling search for the largest batch stops here (GPU only).
    feed_batches: int = 24
    feed_image_size: int = 224  # Part 2 always measures the real input (224), unless told otherwise.
    slices: int = 64
    pretrain_backbone: str = "resnet50"
    pretrain_image_size: int = 224
    pretrain_batch_size: int = 32
    pretrain_steps: int = 300
    log_every: int = 50


SIZES = {
    "full": Size(),
    # This CPU (a 224 px ResNet50 step of batch 8 takes ~8 s here): the same table at 64 px, in float32 only
    # (float16 has no fast kernels on a CPU: XLA's took minutes for one row).
    "cpu": Size(
        image_size=64,
        batch_size=8,
        precisions=("float32",),
        steps=5,
        repeats=2,
        feed_batches=8,
        slices=32,
        pretrain_backbone="resnet18",
        pretrain_image_size=64,
        pretrain_batch_size=8,
    ),
    "tiny": Size(
        backbones=("resnet18",),
        image_size=32,
        crop_size=64,
        slice_size=96,
        batch_size=4,
        precisions=("float32",),
        steps=2,
        repeats=1,
        feed_batches=2,
        feed_image_size=32,
        slices=8,
        pretrain_backbone="resnet18",
        pretrain_image_size=32,
        pretrain_batch_size=4,
        pretrain_steps=4,
        log_every=2,
    ),
}


# --------------------------------------------------------------------------- one measurement, in its own process


def backend_device():
    """(Keras backend, the accelerator's name or the CPU's core count, whether it is a GPU)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return backend, f"{device.device_kind} x{jax.device_count()}", True
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return backend, f"{details.get('device_name', 'GPU')} x{len(gpus)}", True
    return backend, f"CPU, {os.cpu_count()} cores", False


def peak_gpu_gib():
    """The peak GPU memory of this process so far in GiB, or None without a GPU."""
    backend, _, gpu = backend_device()
    if not gpu:
        return None
    if backend == "jax":
        import jax

        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30


def compiled_unet(backbone, image_size, precision, jit, bn_momentum=None):
    """A U-Net compiled as pretraining compiles it: the default optimizer and learning rate, the MSE."""
    import keras

    from genesis2d.pretrain import PretrainConfig, make_optimizer
    from genesis2d.unet import build_unet

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    config = PretrainConfig(out="unused")
    model = build_unet(backbone, (image_size, image_size, 1), config.norm)
    for layer in model.layers:  # As `genesis2d.pretrain` sets it.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum if bn_momentum is None else bn_momentum
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.lr, config.momentum, config.clipnorm),
        loss="mse",
        jit_compile=jit,
    )
    return model


def epoch_rates(model, data, steps, repeats, batch_size):
    """Images/s of each epoch after the first (which compiles)."""
    import keras

    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(data, epochs=repeats + 1, steps_per_epoch=steps, verbose=0, callbacks=[Clock()])
    return [steps * batch_size / t for t in times[1:]]


def held_batches(recipe):
    """Two distinct batches of pairs, held in memory: cycled, they show the accelerator's own speed."""
    from benchmarks.feed import make_batch

    return [make_batch(recipe, i) for i in range(2)]


def cycled(batches):
    """The batches, over and over (a generator: a form `fit` takes on every backend)."""
    while True:
        yield from batches


def measure_training(task):
    """{'memory': img/s, 'workers': img/s or None, 'peak_gib', 'device', 'backend'} of one row of part 1."""
    from benchmarks.feed import BatchRecipe, pair_batches

    recipe = BatchRecipe(task["store"], task["batch_size"], task["crop_size"], task["image_size"])
    model = compiled_unet(task["backbone"], task["image_size"], task["precision"], task["jit"])
    held = held_batches(recipe)
    found = {
        "memory": float(np.median(epoch_rates(model, cycled(held), task["steps"], task["repeats"], task["batch_size"])))
    }
    del held
    found["workers"] = None
    if task["workers"]:
        stream = pair_batches(recipe, task["workers"])
        try:
            found["workers"] = float(
                np.median(epoch_rates(model, stream, task["steps"], task["repeats"], task["batch_size"]))
            )
        finally:
            stream.close()
    backend, device, _ = backend_device()
    return {**found, "peak_gib": peak_gpu_gib(), "device": device, "backend": backend}


def measure_pretraining(task):
    """The mean loss of each `log_every` steps of pretraining on the demo corpus, and the steps' images/s."""
    from benchmarks.feed import BatchRecipe, pair_batches

    recipe = BatchRecipe(task["store"], task["batch_size"], task["crop_size"], task["image_size"])
    model = compiled_unet(task["backbone"], task["image_size"], task["precision"], "auto")
    stream = pair_batches(recipe, task["workers"])
    from genesis2d.pretrain import PretrainConfig
    from genesis2d.schedule import LinearWarmUp

    defaults = PretrainConfig()
    start = time.perf_counter()
    try:
        history = model.fit(
            stream,
            epochs=task["steps"] // task["log_every"],
            steps_per_epoch=task["log_every"],
            verbose=0,
            callbacks=[LinearWarmUp(defaults.lr, defaults.warmup_steps)],
        )
    finally:
        stream.close()
    seconds = time.perf_counter() - start
    backend, device, _ = backend_device()
    return {
        "losses": [float(v) for v in history.history["loss"]],
        "seconds": seconds,
        "device": device,
        "backend": backend,
    }


def measure_device(task):
    backend, device, gpu = backend_device()
    return {"backend": backend, "device": device, "gpu": gpu}


def run_task(task):
    """Runs one measurement in a fresh process: {'error': ...} when it fails (out of memory, most often)."""
    result = subprocess.run(
        [sys.executable, __file__, "--task", json.dumps(task)], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        memory = any(word in result.stderr for word in ("RESOURCE_EXHAUSTED", "out of memory", "OOM"))
        return {"error": "out of memory" if memory else (lines[-1] if lines else f"exit {result.returncode}")}
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the three parts


def training_table(size, store, jits, feed_workers, gpu):
    """Rows (backbone, precision, jit, batch, result) of part 1."""
    rows = []
    base = {
        "store": str(store),
        "crop_size": size.crop_size,
        "image_size": size.image_size,
        "steps": size.steps,
        "repeats": size.repeats,
        "kind": "training",
    }
    for backbone in size.backbones:
        for precision in size.precisions:
            for jit in jits:
                task = {
                    **base,
                    "backbone": backbone,
                    "precision": precision,
                    "jit": jit,
                    "batch_size": size.batch_size,
                    "workers": feed_workers,
                }
                rows.append((backbone, precision, jit, size.batch_size, run_task(task)))
                print_row(rows[-1], flush=True)
                batch = size.batch_size * 2
                # The largest batch that fits, from memory only, in the first precision (the one training uses).
                while gpu and precision == size.precisions[0] and batch <= size.largest_limit:
                    result = run_task({**task, "batch_size": batch, "workers": 0})
                    rows.append((backbone, precision, jit, batch, result))
                    print_row(rows[-1], flush=True)
                    if "error" in result:
                        break
                    batch *= 2
    return rows


def training_header():
    return (
        f"{'backbone':<10} {'precision':<14} {'jit':<5} {'batch':>5} {'memory img/s':>13} "
        f"{'workers img/s':>14} {'ratio':>6} {'peak GiB':>9}"
    )


def print_row(row, flush=False):
    backbone, precision, jit, batch, found = row
    if "error" in found:
        print(f"{backbone:<10} {precision:<14} {str(jit):<5} {batch:>5} {found['error']}", flush=flush)
        return
    workers = f"{found['workers']:14.1f}" if found["workers"] is not None else f"{'-':>14}"
    ratio = f"{found['workers'] / found['memory']:6.2f}" if found["workers"] is not None else f"{'-':>6}"
    peak = f"{found['peak_gib']:9.2f}" if found["peak_gib"] is not None else f"{'-':>9}"
    print(
        f"{backbone:<10} {precision:<14} {str(jit):<5} {batch:>5} {found['memory']:13.1f} {workers} {ratio} {peak}",
        flush=flush,
    )


def feed_table(size, store, counts):
    """{workers: pairs/s} of part 2."""
    from benchmarks.feed import BatchRecipe, pairs_per_second

    recipe = BatchRecipe(str(store), size.batch_size, size.crop_size, size.feed_image_size)
    return {n: pairs_per_second(recipe, n, size.feed_batches * n) for n in counts}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        default="full",
        choices=sorted(SIZES),
        help="preset of all sizes below: full (a GPU), cpu (minutes here), tiny (the test). Default: full.",
    )
    for field in dataclasses.fields(Size):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "tuple" or isinstance(field.default, tuple):
            parser.add_argument(flag, nargs="+", help=f"Default: the preset's ({' '.join(field.default)} in full).")
        else:
            parser.add_argument(
                flag, type=type(field.default), help=f"Default: the preset's ({field.default} in full)."
            )
    parser.add_argument(
        "--jit",
        nargs="+",
        choices=("off", "on"),
        help="jit_compile settings. Default: on under JAX (off would run eagerly); off and on otherwise.",
    )
    parser.add_argument(
        "--cores",
        nargs="+",
        type=int,
        default=list(WORKER_COUNTS),
        help="worker processes for part 2 (counts over this machine's cores are skipped). Default: 1 2 4 8 16.",
    )
    parser.add_argument(
        "--demo-slices",
        help="a slice store of the demo corpus (benchmarks/feed.py); "
        "default: read from the demo corpus, written on first use (needs the image readers).",
    )
    parser.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3], choices=(1, 2, 3), help="Default: 1 2 3.")
    parser.add_argument("--task", help=argparse.SUPPRESS)  # One measurement, in a child process.
    args = parser.parse_args(argv)
    if args.task:
        task = json.loads(args.task)
        measure = {"device": measure_device, "training": measure_training, "pretraining": measure_pretraining}
        print(json.dumps(measure[task["kind"]](task)))
        return None
    size = dataclasses.replace(
        SIZES[args.size],
        **{
            field.name: tuple(value) if isinstance(field.default, tuple) else value
            for field in dataclasses.fields(Size)
            if (value := getattr(args, field.name)) is not None
        },
    )
    if args.demo_slices and not (Path(args.demo_slices) / "shapes.npy").is_file():
        parser.error(
            f"--demo-slices {args.demo_slices}: not a slice store (no shapes.npy); write one with "
            "`bash tools/gpu_benchmark.sh prepare`"
        )
    return run(size, args.jit, args.cores, args.demo_slices, args.parts)


def run(size, jit, cores, demo_slices, parts):
    from benchmarks.feed import demo_store, synthetic_store

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    jits = [j == "on" for j in jit] if jit else ([True] if backend == "jax" else [False, True])
    feed_workers = min(os.cpu_count(), MAX_FEED_WORKERS)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "slices", size.slices, size.slice_size)
        probe = run_task({"kind": "device"})
        if "error" in probe:
            raise SystemExit(f"benchmarks/training.py: Keras does not start: {probe['error']}")
        gpu = probe["gpu"]
        if 1 in parts:
            print(
                f"Part 1. U-Net training at {size.image_size}x{size.image_size}, Keras backend {backend}, "
                f"{probe['device']}; median of {size.repeats} epochs of {size.steps} steps; workers: "
                f"{feed_workers} processes making the numpy distortions",
                flush=True,
            )
            print(training_header(), flush=True)
            results["training"] = training_table(size, store, jits, feed_workers, gpu)
        if 2 in parts:
            counts = [n for n in cores if n <= os.cpu_count()]
            results["feed"] = feed = feed_table(size, store, counts)
            print(
                f"\nPart 2. The numpy pretraining input ({size.slice_size}x{size.slice_size} slices, "
                f"{size.crop_size} crop, resize to {size.feed_image_size}, all distortions), batch {size.batch_size}; "
                f"this machine has {os.cpu_count()} cores"
            )
            print(f"{'workers':>7} {'pairs/s':>9} {'speed-up':>9}")
            for n in cores:
                if n in feed:
                    print(f"{n:>7} {feed[n]:9.1f} {feed[n] / feed[counts[0]] * counts[0]:9.2f}")
                else:
                    print(f"{n:>7} {'-':>9} {'-':>9}  (more than this machine's cores)")
        if 3 in parts:
            slices = Path(demo_slices) if demo_slices else demo_store(Path(tmp) / "demo")
            precision = "mixed_float16" if gpu else "float32"  # As `genesis2d.pretrain` picks it.
            task = {
                "kind": "pretraining",
                "store": str(slices),
                "backbone": size.pretrain_backbone,
                "precision": precision,
                "batch_size": size.pretrain_batch_size,
                "crop_size": size.crop_size,
                "image_size": size.pretrain_image_size,
                "steps": size.pretrain_steps,
                "log_every": size.log_every,
                "workers": feed_workers,
            }
            results["pretraining"] = found = run_task(task)
            print(
                f"\nPart 3. {size.pretrain_steps} pretraining steps of the {size.pretrain_backbone} U-Net at "
                f"{size.pretrain_image_size}, batch {size.pretrain_batch_size}, {precision}, on the demo corpus "
                f"({len(np.load(slices / 'shapes.npy'))} training slices), default optimizer (SGD, learning rate "
                "1.0, momentum 0.9)"
            )
            if "error" in found:
                print(f"failed: {found['error']}")
            else:
                print(f"{'steps':>9} {'mean loss':>10}")
                for k, loss in enumerate(found["losses"]):
                    print(f"{k * size.log_every + 1:>4}-{(k + 1) * size.log_every:<4} {loss:10.5f}")
                steps = len(found["losses"]) * size.log_every
                verdict = (
                    "diverged (non-finite loss)"
                    if not np.isfinite(found["losses"]).all()
                    else "falling"
                    if found["losses"][-1] < found["losses"][0]
                    else "NOT falling"
                )
                print(
                    f"loss {verdict}; {steps * size.pretrain_batch_size / found['seconds']:.1f} images/s "
                    "over all steps (compilation included)"
                )
    return results


if __name__ == "__main__":
    main()
