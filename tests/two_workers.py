"""Helper processes of tests/test_multiworker.py (not a test module).

    python tests/two_workers.py worker MANIFEST OUT STEPS   # with TF_CONFIG: one worker of the real `run`
    python tests/two_workers.py reference MANIFEST OUT STEPS  # one process, the same global batches
    python tests/two_workers.py worker MANIFEST OUT STEPS --objective genesis+contrastive --batch-size 8
    python tests/two_workers.py joined MANIFEST OUT STEPS     # one process, that objective's global batches

A worker saves its final weights to weights-<worker>.npz beside OUT; the reference trains
plain Keras loops (GradientTape, SGD) on the concatenation of both workers' batches, as
`genesis2d.pretrain.pairs` documents them (see `reference`).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

WORKERS, GLOBAL_BATCH, LR = 2, 4, 0.1


def options(manifest, out, steps):
    return [
        "--manifest",
        manifest,
        "--out",
        out,
        "--backbone",
        "resnet18",
        "--image-size",
        "32",
        "--crop-size",
        "64",
        "--batch-size",
        str(GLOBAL_BATCH),
        "--lr",
        str(LR),
        "--warmup-steps",  # The reference trains at LR from its first step.
        "0",
        "--epochs",
        "1",
        "--steps-per-epoch",
        str(steps),
        "--validation-steps",
        "1",
        "--samples",
        "1",
        "--verbose",
        "0",
        "--deterministic",
    ]


def save(path, model):
    """The model's trainable weights (the BatchNorm moving statistics are compared through them)."""
    np.savez(path, *[np.asarray(w) for w in model.trainable_weights])


def worker(manifest, out, steps, *extra):
    import keras

    from genesis2d.pretrain import parse_args, run
    from genesis2d.strategy import pick_strategy, worker_role

    strategy = pick_strategy()
    index, _, _ = worker_role(strategy)

    class SaveWeights(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            save(Path(out).parent / f"weights-{index}.npz", self.model)

    run(parse_args([*options(manifest, out, steps), *extra]), strategy=strategy, extra_callbacks=[SaveWeights()])


def worker_batches(manifest, config, steps):
    """[[worker 0's batch i, worker 1's batch i] for each step i], as `genesis2d.pretrain.pairs` documents them."""
    from genesis2d.pretrain import pairs
    from plumbing.runtime import STREAM_TRAIN_DISTORTIONS, configure_determinism, derive_seed, set_seed

    configure_determinism(True)
    set_seed(config.seed)  # Before the data, as `run` does: TensorFlow's global seed seeds the pipeline too.
    per_worker = config.batch_size // WORKERS
    streams = [
        iter(
            pairs(
                manifest,
                "train",
                config,
                True,
                derive_seed(config.seed, STREAM_TRAIN_DISTORTIONS, k),
                per_worker,
                (k, WORKERS),
            )
        )
        for k in range(WORKERS)
    ]
    return [[next(stream) for stream in streams] for _ in range(steps)]


def reference(manifest, out, steps):
    """Three single-process runs on the workers' batches, saved as weights-<name>.npz.

    'reference': the global batch (worker 0's half, then worker 1's), BatchNorm over it;
    'reordered': the same with the halves swapped, which changes only the order of float sums:
    its distance to 'reference' is the floor of float differences at this size;
    'local-bn': BatchNorm statistics of each worker's half alone (what unsynchronised
    BatchNorm would give): a wrong answer the comparison must tell apart.
    """
    import keras
    import tensorflow as tf

    from genesis2d.distributed import synchronize_batch_norm
    from genesis2d.pretrain import parse_args
    from genesis2d.unet import build_unet
    from plumbing.runtime import set_seed

    config = parse_args(options(manifest, out, steps))
    batches = worker_batches(manifest, config, steps)

    def train(order, local_bn):
        set_seed(config.seed)
        model = build_unet(config.backbone, (config.image_size, config.image_size, 1), config.norm)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
        if not local_bn:
            synchronize_batch_norm(model)  # The run's model; on one replica the same as plain BatchNorm.
        optimizer = keras.optimizers.SGD(learning_rate=LR, momentum=config.momentum)
        initial = [np.asarray(w) for w in model.trainable_weights]
        for halves in batches:
            halves = [halves[k] for k in order]
            targets = tf.concat([h[1] for h in halves], 0)
            with tf.GradientTape() as tape:
                if local_bn:
                    restored = tf.concat([model(h[0], training=True) for h in halves], 0)
                else:
                    restored = model(tf.concat([h[0] for h in halves], 0), training=True)
                loss = keras.losses.MeanSquaredError()(targets, restored)
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return initial, model

    folder = Path(out).parent
    initial, model = train((0, 1), False)
    np.savez(folder / "weights-initial.npz", *initial)
    save(folder / "weights-reference.npz", model)
    save(folder / "weights-reordered.npz", train((1, 0), False)[1])
    save(folder / "weights-local-bn.npz", train((0, 1), True)[1])


JOINED = ["--objective", "genesis+contrastive", "--batch-size", "8"]  # 4 views (2 slices) a worker.


def joined(manifest, out, steps):
    """The joined objective in one process on both workers' batches: BatchNorm over the global batch, each worker's
    share contrasted within itself, 10 x MSE + InfoNCE per view averaged over the global batch. Saved as
    weights-joined.npz; 'joined-global' contrasts the whole global batch instead (a wrong answer to tell apart)."""
    import keras
    import tensorflow as tf

    from genesis2d.contrastive import EMBEDDING, RESTORED, build_pretrainer, info_nce
    from genesis2d.distributed import synchronize_batch_norm
    from genesis2d.pretrain import parse_args
    from plumbing.runtime import set_seed

    config = parse_args([*options(manifest, out, steps), *JOINED])
    batches = worker_batches(manifest, config, steps)

    def train(per_share):
        set_seed(config.seed)
        shape = (config.image_size, config.image_size, 1)
        model = build_pretrainer(config.objective, config.backbone, shape, config.norm, None, config.projection_dim)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
        synchronize_batch_norm(model)
        optimizer = keras.optimizers.SGD(learning_rate=LR, momentum=config.momentum)
        for halves in batches:
            inputs = tf.concat([h[0] for h in halves], 0)
            targets = tf.concat([h[1][RESTORED] for h in halves], 0)
            with tf.GradientTape() as tape:
                outputs = model(inputs, training=True)
                mse = tf.reduce_mean(tf.square(outputs[RESTORED] - targets), axis=[1, 2, 3])
                embeddings = outputs[EMBEDDING]
                if per_share:
                    contrast = tf.concat([info_nce(part, config.temperature) for part in tf.split(embeddings, 2)], 0)
                else:
                    contrast = info_nce(embeddings, config.temperature)
                loss = tf.reduce_mean(config.restoration_weight * mse + contrast)
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return model

    folder = Path(out).parent
    save(folder / "weights-joined.npz", train(True))
    save(folder / "weights-joined-global.npz", train(False))


if __name__ == "__main__":
    mode, manifest, out, steps = sys.argv[1:5]
    {"worker": worker, "reference": reference, "joined": joined}[mode](manifest, out, int(steps), *sys.argv[5:])
