"""Models Genesis pretraining in 2D: restore distorted slices with a U-Net (thesis 4.1.1).

The command is `python genesis2d/train.py`; this module is its training loop. The
settings are in `genesis2d.options`, the data in `genesis2d.data`, the exported model
in `genesis2d.export`, the health checks in `genesis2d.health`.
"""

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from genesis2d.data import checked_data, data_source, demo_manifest, pairs, worker_datasets
from genesis2d.export import BEST_FILES, STAGING, commit_export, export_best, export_encoder, make_reporter
from genesis2d.options import DEMO_CONFIG, DistortionRates, PretrainConfig, build_parser, parse_args
from plumbing.atomic import remove_temporaries, writable_folder, write_csv, write_json
from plumbing.errors import ImageReadError, UsageError
from plumbing.runtime import STREAM_TRAIN_DISTORTIONS, STREAM_VAL_DISTORTIONS, derive_seed
from preprocessing.normalize import HU_MAX, HU_MIN

__all__ = [  # What callers (the study, the tests, `genesis2d/train.py`) import from here.
    "BEST_FILES", "DEMO_CONFIG", "STAGING", "DistortionRates", "PretrainConfig", "build_parser", "commit_export",
    "data_source", "demo_manifest", "export_best", "export_encoder", "main", "pairs", "parse_args", "run",
]

CROP_RULE = ("a square of side min(crop_size, height, width), at a random position in training and centred in "
             "validation, resized to the input size; small slices are never padded")
NORMALISATION = {
    "CT": f"clip HU to [{HU_MIN:g}, {HU_MAX:g}], scale to [0, 1]",
    "MR": "divide each slice by its maximum",
    "XR": "divide by 2**bit_depth - 1",
}


def make_optimizer(name, lr, momentum=0.9):
    """SGD with momentum (Models Genesis) or Adam."""
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam'. Received: optimizer={name!r}")


def clear_outputs(out):
    """Removes what a finished run wrote into `out` (for --overwrite)."""
    import shutil

    out = Path(out)
    for name in (*BEST_FILES, "history.csv", "loss_curves.png", "run.json"):
        (out / name).unlink(missing_ok=True)
    for path in out.glob("samples_epoch*.png"):
        path.unlink()
    for folder in ("checkpoint", "logs", STAGING):
        shutil.rmtree(out / folder, ignore_errors=True)


def trim_history(path, epochs):
    """Keeps the rows of history.csv for the first `epochs` epochs (a resumed run writes the rest again)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        return
    if not epochs:
        path.unlink()
        return
    history = pd.read_csv(path)
    write_csv(path, history[history["epoch"] < epochs].drop_duplicates("epoch", keep="last"))


MODEL_SETTINGS = ("backbone", "norm", "image_size", "optimizer")  # A checkpoint holds variables of these shapes.


def prepare_out(config):
    """Checks --out against --resume/--overwrite and returns the checkpoint state to resume from (or None).

    A run is finished when its checkpoint says so (`mark_finished`, written after the last
    card): outputs without any checkpoint are those of a run killed before its first one,
    which is started again from step 0 (the same run, bit for bit, on a CPU).
    """
    from genesis2d.checkpoint import load_state

    out = Path(config.out)
    commit_export(out)  # A run killed while exporting its best model: finish or drop that export.
    previous = load_state(out / "checkpoint")
    if previous and previous.get("finished") and not config.resume:
        if not config.overwrite:
            raise UsageError(out, "holds a finished run; pass --overwrite to replace it, --resume with more --epochs "
                             "to continue it, or choose another --out")
        clear_outputs(out)
        return None
    if previous and not config.resume:
        raise UsageError(out, "holds an unfinished run; pass --resume to continue it or choose another --out")
    if previous:
        check_same_model(out, config)
        return previous
    if any((out / name).exists() for name in (*BEST_FILES, "history.csv")):
        print(f"{out}: a run stopped before its first checkpoint; starting it again from step 0.", file=sys.stderr)
        clear_outputs(out)
    elif config.resume:
        raise UsageError(out, "has no checkpoint to resume from")
    return None


def check_same_model(out, config):
    """A UsageError naming the first of MODEL_SETTINGS in which --resume differs from the run in `out`."""
    record = Path(out) / "run.json"
    saved = json.loads(record.read_text()).get("args", {}) if record.exists() else {}
    for name in MODEL_SETTINGS:
        if name in saved and saved[name] != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(flag, f"{out} was trained with {flag} {saved[name]}, not {getattr(config, name)}; resume "
                             f"it with {flag} {saved[name]} or choose another --out")


def prepare_out_on_chief(config, strategy, chief):
    """`prepare_out` on the chief of a multi-machine run, its answer (state or error) given to every worker."""
    from genesis2d.distributed import broadcast_json

    answer = {}
    if chief:
        try:
            answer = {"state": prepare_out(config)}
        except UsageError as error:
            answer = {"error": [error.path, error.problem]}
    answer = broadcast_json(strategy, answer)
    if "error" in answer:
        raise UsageError(*answer["error"])
    return answer["state"]


def run(config, strategy=None, extra_callbacks=()):
    """Pretrains as a PretrainConfig says and writes every output into config.out; returns the model card (dict).

    On several machines (see `genesis2d.distributed`) every worker calls it; the chief
    (worker 0) writes the outputs and the others return None.
    """
    from genesis2d.strategy import pick_strategy, worker_role
    from plumbing.lock import output_lock

    data = checked_data(config)  # Before waiting for other machines, and before --overwrite clears anything.
    strategy = strategy or pick_strategy(config.cluster, config.cluster_timeout)  # A multi-worker strategy must precede other TF work.
    worker, workers, chief = worker_role(strategy)
    state = prepare_out(config) if workers == 1 else prepare_out_on_chief(config, strategy, chief)
    with output_lock(config.out) if chief else contextlib.nullcontext():  # One writer per --out.
        card = _train(config, strategy, state, chief, worker, workers, data, extra_callbacks)
    if workers > 1:  # Every worker waits for the chief's last writes, so none leaves the group early.
        from genesis2d.distributed import broadcast_json

        broadcast_json(strategy, {})
    return card


def _train(config, strategy, state, chief, worker, workers, data, extra_callbacks):
    """The run itself, once its folder and data are checked: set up, stream, build, fit, finish."""
    from genesis2d.checkpoint import mark_finished
    from plumbing.runtime import configure_determinism, pick_precision, set_seed, write_run_record

    out = Path(config.out)
    source, counts, data_hash = data
    if config.batch_size % strategy.num_replicas_in_sync:
        raise UsageError("--batch-size", f"{config.batch_size} is not a multiple of the {strategy.num_replicas_in_sync} "
                         "replicas that share it")
    if chief:
        out.mkdir(parents=True, exist_ok=True)  # Only once every check has passed: a refused run leaves no folder.
        for folder in (out, out / "checkpoint"):
            remove_temporaries(folder)
    deterministic = configure_determinism(config.deterministic)
    set_seed(config.seed)
    precision = pick_precision(config.precision)
    steps = config.steps_per_epoch or max(1, counts["train"] // config.batch_size)
    if chief:
        print(f"data: {source} ({counts.get('train', 0)} train / {counts.get('val', 0)} val slices); "
              f"precision {precision}; {strategy.num_replicas_in_sync} replica(s) on {workers} machine(s); "
              f"{steps} steps per epoch", flush=True)
    streams = _streams(config, source, counts, strategy, state, steps, worker, workers)
    model = _build_model(config, strategy, workers)
    card = _card(config, out, state, source, data_hash, precision, streams["identity"])
    if chief:
        write_run_record(out, config.record(), {"precision": precision, "deterministic": deterministic,
                                                "replicas": strategy.num_replicas_in_sync, "workers": workers})
        trim_history(out / "history.csv", state["epoch"] if state else 0)
    callbacks = [*_callbacks(config, model, out, chief, streams["samples"], card), *extra_callbacks]
    started = time.time()
    _fit(config, model, strategy, streams, steps, callbacks, state, chief, workers, source)
    if not chief:
        return None
    card["training_seconds"] = round(card.get("training_seconds", 0) + time.time() - started, 1)
    if "best_val_loss" not in card:  # No finite validation loss at all: still leave a usable encoder.
        export_best(model, config.backbone, out, card)
    write_json(out / "card.json", card)
    mark_finished(out / "checkpoint")  # Last: a run is finished once its card is complete.
    print(f"encoder: {out / 'encoder.h5'} (best validation loss {card.get('best_val_loss')}, epoch {card.get('best_epoch')})")
    return card


def _streams(config, source, counts, strategy, state, steps, worker, workers):
    """{train, val, validation_steps, samples, identity}: the run's data, its sample pair and the identity loss."""
    from genesis2d.health import identity_loss

    validation_steps = -(-counts["val"] // config.batch_size)
    if config.validation_steps:
        validation_steps = min(validation_steps, config.validation_steps)
    val_seed = derive_seed(config.seed, STREAM_VAL_DISTORTIONS)
    if workers == 1:
        def train(first_batch):  # Batch i of the run is batch i of one stream, whichever step it resumes from.
            return pairs(source, "train", config, training=True,
                         first_seed=derive_seed(config.seed, STREAM_TRAIN_DISTORTIONS), first_batch=first_batch)

        # Every validation slice counts, the last batch smaller when it must be, so validation never vanishes.
        val = sample_batch = pairs(source, "val", config, training=False, first_seed=val_seed)
    else:
        first_step = (state["epoch"] * steps + state["step"]) if state else 0
        train, val, sample_batch = worker_datasets(source, config, strategy, first_step, worker, workers)
    inputs, targets = next(iter(sample_batch.take(1)))
    # The bar restoration must clear: the validation loss of returning the distorted slices unchanged (on several
    # machines: the same slices, distorted as one machine distorts them).
    identity = identity_loss(pairs(source, "val", config, training=False, first_seed=val_seed), validation_steps)
    return {"train": train, "val": val, "validation_steps": validation_steps, "identity": identity,
            "samples": (inputs.numpy()[: config.samples], targets.numpy()[: config.samples])}


def _build_model(config, strategy, workers):
    """The compiled U-Net, under the strategy, its BatchNorm momentum set (and synchronised on several machines)."""
    import keras

    from genesis2d.unet import build_unet

    with strategy.scope():
        model = build_unet(config.backbone, (config.image_size, config.image_size, 1), config.norm, config.encoder_weights)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
        model.compile(optimizer=make_optimizer(config.optimizer, config.lr, config.momentum), loss="mse")
        if workers > 1:
            from genesis2d.distributed import synchronize_batch_norm

            synchronize_batch_norm(model)
            model.optimizer.build(model.trainable_variables)
    return model


def _card(config, out, state, source, data_hash, precision, identity):
    """The model card (the resumed run's, updated), before training."""
    from genesis2d.card import encoder_card
    from plumbing.runtime import versions

    card_path = out / "card.json"
    card = json.loads(card_path.read_text()) if (state and card_path.exists()) else {}
    card.update({
        "backbone": config.backbone, "norm": config.norm, "input_size": [config.image_size, config.image_size, 1],
        "crop_size": config.crop_size, "crop": CROP_RULE, "normalisation": NORMALISATION,
        "data": os.path.relpath(source, out), "data_hash": data_hash,  # Relative to the run folder: cards are published.
        "precision": precision, "versions": versions(), "encoder_output_layer": "encoder_output",
        "distortions": dataclasses.asdict(config.distortions),
        "best_epoch_chosen_on": "validation loss (MSE of restored validation slices)",
        "identity_val_loss": identity,
        **encoder_card(config.backbone, NORMALISATION),
    })
    return card


def _callbacks(config, model, out, chief, sample_pair, card):
    """The guards first (a broken run stops before it exports), the schedule, then the chief's writers."""
    import keras

    from genesis2d.health import health_guard
    from plumbing.runtime import divergence_guard

    callbacks = [
        divergence_guard(),
        health_guard(sample_pair, config.lr, config.checkpoint_every),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience,
                                          min_lr=config.min_lr, verbose=1 if chief else 0),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                      verbose=1 if chief else 0),
    ]
    if chief:
        callbacks += [
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
            keras.callbacks.TensorBoard(log_dir=str(writable_folder(out / "logs")), write_graph=False,
                                        update_freq="epoch"),
            make_reporter(model, out, config.backbone, sample_pair, card),
        ]
    return callbacks


def _fit(config, model, strategy, streams, steps, callbacks, state, chief, workers, source):
    """Trains on one machine (`fit_resumable`) or several (`fit_multiworker`), checkpointing into out/checkpoint."""
    import tensorflow as tf

    from genesis2d.checkpoint import fit_resumable
    from preprocessing.pipeline import NO_SLICE_LEFT

    checkpoint_dir = Path(config.out) / "checkpoint"
    try:
        if workers == 1:
            fit_resumable(model, streams["train"], config.epochs, steps, callbacks, checkpoint_dir,
                          every_steps=config.checkpoint_every, resume=config.resume, validation_data=streams["val"],
                          validation_steps=streams["validation_steps"], verbose=config.verbose, shuffle=False)
            return
        from genesis2d.distributed import broadcast_variables, fit_multiworker

        if chief and state and state.get("weights"):  # Only the chief reads the checkpoint; it is broadcast.
            model.load_weights(checkpoint_dir / state["weights"])
        broadcast_variables(strategy, [*model.variables, *model.optimizer.variables])
        fit_multiworker(model, strategy, streams["train"], streams["val"], config.batch_size, config.epochs, steps,
                        callbacks, checkpoint_dir, every_steps=config.checkpoint_every, state=state, chief=chief,
                        validation_steps=streams["validation_steps"], verbose=config.verbose)
    except tf.errors.OpError as error:
        if NO_SLICE_LEFT in str(error):  # Raised inside the input pipeline; said here as one line.
            raise ImageReadError(source, "no file of a split can be read (see the warnings above)") from None
        raise


def main(argv=None):
    from plumbing.cli import run_command

    def interrupted(config):
        return f"continue with `python genesis2d/train.py --resume --out {config.out}` (and the same options)."

    return run_command(parse_args, run, argv, interrupted=interrupted, tensorflow=True)
