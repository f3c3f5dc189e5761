"""Training on several machines: MultiWorkerMirroredStrategy through TensorFlow's own training step.

Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585: it
stops at the first step), so a run whose TF_CONFIG (or Slurm allocation) names several
workers trains with the loop below instead:

- each worker reads its own share of the data (`distribute_datasets_from_function`, one
  input pipeline per worker, see `preprocessing.pipeline.worker_share`);
- a step runs on every replica (`strategy.run`); the loss is the mean over the *global*
  batch (`tf.nn.compute_average_loss`), and the optimizer sums the replicas' gradients,
  so one step equals one machine's step on the global batch;
- BatchNormalization is synchronised across workers (`synchronized=True`): its batch
  statistics are those of the global batch, as on one machine;
- under mixed precision the loss-scale update is taken on every replica alike;
- the chief (worker 0) writes every output; a checkpoint is read by the chief and
  broadcast to the others, so only the chief needs the output folder.

The Keras callbacks of a run (plateau, early stopping, logging, checkpoints) are called as
`fit` would call them, with the same logs on every worker, so every worker takes the same
decisions.
"""

import functools
import json
import sys
import time

import numpy as np

from genesis2d.checkpoint import ResumableCheckpoint, restore_counters


@functools.cache
def _broadcaster(strategy):
    """A tf.function giving every worker the chief's value of a float64 vector (an all-reduce of it and zeros)."""
    import tensorflow as tf

    def replica_fn(values):
        context = tf.distribute.get_replica_context()
        mine = tf.where(tf.equal(context.replica_id_in_sync_group, 0), values, tf.zeros_like(values))
        return context.all_reduce(tf.distribute.ReduceOp.SUM, mine)

    return tf.function(lambda values: strategy.run(replica_fn, args=(values,)), reduce_retracing=True)


def broadcast_from_chief(strategy, tensors):
    """The chief's values of a list of tensors (same shapes on every worker), on every worker."""
    import tensorflow as tf

    tensors = [tf.convert_to_tensor(t) for t in tensors]
    if not tensors:
        return []
    flat = tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in tensors], axis=0)
    reduced = strategy.experimental_local_results(_broadcaster(strategy)(flat))[0]
    out, start = [], 0
    for tensor in tensors:
        size = int(np.prod(tensor.shape))
        out.append(tf.cast(tf.reshape(reduced[start : start + size], tensor.shape), tensor.dtype))
        start += size
    return out


def broadcast_json(strategy, value):
    """The chief's JSON-able `value` on every worker (the others' `value` is ignored)."""
    import tensorflow as tf

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    (length,) = broadcast_from_chief(strategy, [tf.constant(len(data), tf.int64)])
    padded = np.zeros(int(length), np.uint8)
    padded[: min(len(data), len(padded))] = data[: len(padded)]
    (received,) = broadcast_from_chief(strategy, [tf.constant(padded)])
    return json.loads(received.numpy().astype(np.uint8).tobytes().decode())


def broadcast_variables(strategy, variables):
    """Gives every worker the chief's values of `variables` (after the chief alone loaded a checkpoint)."""
    values = broadcast_from_chief(strategy, [v.value for v in variables])
    for variable, value in zip(variables, values):
        variable.assign(value)


def synchronize_batch_norm(model):
    """Makes every BatchNormalization layer use the global batch's statistics (all-reduced across replicas)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def per_example_mse(model, inputs, targets, training):
    """Each example's mean squared error (float32), as Keras's 'mse' loss before it averages the batch."""
    import tensorflow as tf

    predictions = tf.cast(model(inputs, training=training), tf.float32)
    return tf.reduce_mean(tf.square(predictions - tf.cast(targets, tf.float32)), axis=[1, 2, 3])


def make_train_step(model, strategy, global_batch_size, per_example=per_example_mse):
    """A tf.function: one optimizer step on the next global batch of a distributed iterator; returns its mean loss.

    `per_example(model, inputs, targets, training)` gives each example's loss (default: the
    restoration's MSE; `genesis2d.contrastive.per_example_loss` for the other objectives).
    """
    import keras
    import tensorflow as tf

    optimizer = model.optimizer
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(
                per_example(model, inputs, targets, True), global_batch_size=global_batch_size
            )
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            objective = optimizer.scale_loss(loss) if scaled else loss
        gradients = tape.gradient(objective, model.trainable_variables)
        if scaled:
            # Each replica decides from its own gradients whether to skip the step and halve the
            # loss scale; a single overflow anywhere must make every replica decide the same.
            context = tf.distribute.get_replica_context()
            overflow = tf.cast(
                tf.logical_not(
                    tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None])
                ),
                tf.float32,
            )
            overflow = context.all_reduce(tf.distribute.ReduceOp.SUM, overflow)
            gradients = [
                g if g is None else tf.where(overflow > 0, tf.fill(tf.shape(g), tf.cast(np.nan, g.dtype)), g)
                for g in gradients
            ]
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    @tf.function
    def step(iterator):
        inputs, targets = next(iterator)
        losses = strategy.run(replica_step, args=(inputs, targets))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return step


def make_evaluate(model, strategy, per_example=per_example_mse):
    """A function: the mean per-example loss over a finite distributed dataset, every worker's share counted."""
    import tensorflow as tf

    def replica_step(inputs, targets):
        errors = per_example(model, inputs, targets, False)
        return tf.reduce_sum(errors), tf.cast(tf.size(errors), tf.float32)

    @tf.function
    def step(inputs, targets):
        total, count = strategy.run(replica_step, args=(inputs, targets))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None),
        )

    def evaluate(dataset, max_steps=None):
        # Workers whose share is used up send empty batches until every worker is done.
        total = count = 0.0
        for index, (inputs, targets) in enumerate(dataset):
            if max_steps is not None and index >= max_steps:
                break
            batch_total, batch_count = step(inputs, targets)
            total, count = total + float(batch_total), count + float(batch_count)
        return total / count if count else float("nan")

    return evaluate


def _print_epoch(epoch, epochs, logs, seconds):
    items = " - ".join(f"{key}: {value:.4g}" for key, value in logs.items())
    print(f"Epoch {epoch + 1}/{epochs} - {seconds:.0f}s - {items}", flush=True)


def fit_multiworker(
    model,
    strategy,
    train,
    val,
    global_batch_size,
    epochs,
    steps_per_epoch,
    callbacks,
    checkpoint_dir,
    every_steps=500,
    state=None,
    chief=True,
    validation_steps=None,
    verbose=1,
    extra_state=None,
    per_example=per_example_mse,
):
    """Trains like `genesis2d.checkpoint.fit_resumable`, with the custom step above, on every worker.

    Args:
        model: a compiled Keras model built under `strategy.scope()`, with its optimizer built.
        strategy: the MultiWorkerMirroredStrategy.
        train: a distributed dataset of (inputs, targets), endless.
        val: a callable returning a fresh finite distributed dataset of (inputs, targets).
        global_batch_size: int. Examples per step over all workers.
        epochs, steps_per_epoch: int.
        callbacks: Keras callbacks, called as `fit` calls them (writers only on the chief).
        checkpoint_dir: folder of the chief's checkpoints.
        every_steps: int. Steps between mid-epoch checkpoints.
        state: dict or None. The (broadcast) checkpoint state to continue from; its weights
            must already be loaded and broadcast.
        chief: bool. Whether this worker writes (checkpoints, progress).
        validation_steps: int or None. Validation batches per worker at most.
        verbose: int. 0 silent, 1 or 2 one line per epoch (chief only).
        extra_state: callable returning a JSON-able dict saved with each checkpoint.
        per_example: each example's loss, as `make_train_step` takes it. Defaults to the MSE.
    """
    import keras

    train_step = make_train_step(model, strategy, global_batch_size, per_example)
    evaluate = make_evaluate(model, strategy, per_example)
    epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    if state and state.get("steps_per_epoch") != steps_per_epoch:
        step = 0  # Different epoch length: restart the interrupted epoch rather than guess.
    # The sum of the epoch's step losses so far, kept with each checkpoint: a resumed epoch's logged loss is then the
    # mean over all its steps, as the uninterrupted run's is, not over the resumed ones only.
    running = {"loss_sum": (state or {}).get("loss_sum", 0.0) if step else 0.0}
    checkpoint = ResumableCheckpoint(
        checkpoint_dir,
        steps_per_epoch,
        every_steps,
        start_step=step,
        tracked=callbacks,
        write=chief,
        keep_metrics=False,
        extra_state=lambda: {**(extra_state() if extra_state else {}), **running},
    )
    callback_list = keras.callbacks.CallbackList(
        [*callbacks, checkpoint], model=model, epochs=epochs, steps=steps_per_epoch, verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    restore_counters(callbacks, (state or {}).get("callbacks"))  # After on_train_begin, which resets them.
    iterator = iter(train)
    while epoch < epochs and not model.stop_training:
        started = time.time()
        callback_list.on_epoch_begin(epoch)
        for batch in range(steps_per_epoch - step):
            callback_list.on_train_batch_begin(batch)
            running["loss_sum"] += float(train_step(iterator))
            callback_list.on_train_batch_end(batch, {"loss": running["loss_sum"] / (step + batch + 1)})
        logs = {
            "loss": running["loss_sum"] / max(1, steps_per_epoch),
            "val_loss": evaluate(val(), validation_steps),
            "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        }
        if chief and verbose:
            _print_epoch(epoch, epochs, logs, time.time() - started)
        running["loss_sum"] = 0.0  # Before the epoch-end checkpoint, which starts the next epoch.
        callback_list.on_epoch_end(epoch, logs)
        epoch, step = epoch + 1, 0
    callback_list.on_train_end()
    sys.stdout.flush()
