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

from genesis2d.card import CARD_FILE, ENCODER_FILE
from genesis2d.contrastive import RESTORED, per_example_loss
from genesis2d.data import checked_data, data_source, demo_manifest, pairs, worker_datasets
from genesis2d.export import BEST_FILES, STAGING, commit_export, export_best, export_encoder, make_reporter
from genesis2d.options import (
    DEMO_CONFIG,
    DEMO_CONTRASTIVE_CONFIG,
    DistortionRates,
    PretrainConfig,
    build_parser,
    parse_args,
    resolve,
)
from genesis2d.schedule import make_optimizer
from plumbing.atomic import remove_temporaries, writable_folder, write_csv, write_json
from plumbing.errors import ImageReadError, UsageError
from plumbing.runtime import STREAM_TRAIN_DISTORTIONS, STREAM_VAL_DISTORTIONS, derive_seed
from preprocessing.normalize import HU_MAX, HU_MIN

__all__ = [  # What callers (the study, the tests, `genesis2d/train.py`) import from here.
    "BEST_FILES",
    "DEMO_CONFIG",
    "DEMO_CONTRASTIVE_CONFIG",
    "make_optimizer",
    "STAGING",
    "DistortionRates",
    "PretrainConfig",
    "build_parser",
    "commit_export",
    "data_source",
    "demo_manifest",
    "export_best",
    "export_encoder",
    "main",
    "pairs",
    "parse_args",
    "resolve",
    "run",
    "unfinished",
]

CROP_RULE = (
    "a square of side min(crop_size, height, width), at a random position in training and centred in "
    "validation, resized to the input size; small slices are never padded"
)
NORMALISATION = {
    "CT": f"clip HU to [{HU_MIN:g}, {HU_MAX:g}], scale to [0, 1]",
    "MR": "divide each slice by its maximum",
    "XR": "divide by 2**bit_depth - 1",
}


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


KEPT = "kept"  # What `prepare_out` answers for a finished run made with the same settings and data.


# Settings that change nothing for an objective: left out of its run's settings, so that a genesis run recorded before
# the contrastive objectives existed is the same run, and a contrastive run does not depend on distortion rates.
QUEUE_SETTINGS = ("negatives", "queue_size", "key_momentum")
CONTRAST_SETTINGS = ("objective", "temperature", "projection_dim", "restoration_weight", *QUEUE_SETTINGS)
UNUSED = {
    "genesis": CONTRAST_SETTINGS,
    "contrastive": ("restoration_weight", "norm", *(f.name for f in dataclasses.fields(DistortionRates))),
    "genesis+contrastive": (),
}


def run_settings(config, data_hash):
    """The settings that decide whether a finished run may be reused: every field that can change what it learns,
    and the data by content (`plumbing.options.reuse_settings`, as for a downstream unit); an objective's unused
    settings left out (UNUSED), and the queue's with in-batch negatives (runs recorded before the queue are kept)."""
    from plumbing.options import reuse_settings

    unused = UNUSED[config.objective] + (QUEUE_SETTINGS if config.negatives == "batch" else ())
    settings = {k: v for k, v in reuse_settings(config).items() if k not in unused}
    return {**settings, "data": data_hash}


def unfinished(out):
    """Whether `out` holds a pretraining run that was stopped before it finished (one to --resume)."""
    from genesis2d.checkpoint import load_state

    state = load_state(Path(out) / "checkpoint")
    return bool(state) and not state.get("finished")


def prepare_out(config, settings):
    """Checks --out against --resume/--overwrite: the checkpoint state to resume from, None to start, or KEPT.

    One rule decides, as for a downstream unit (`plumbing.fingerprint.finished_with`): a
    finished run is reused when it was made with the same settings and the same data, and
    otherwise stops the command naming what changed (--overwrite redoes it; --resume with
    more --epochs continues it). A run is finished when its checkpoint says so
    (`mark_finished`, written after the last card); outputs without any checkpoint are
    those of a run killed before its first one, started again from step 0 (the same run,
    bit for bit, on a CPU). Call it holding the folder's lock.
    """
    from genesis2d.checkpoint import STATE_FILE, load_state
    from plumbing.fingerprint import finished_with

    out = Path(config.out)
    commit_export(out)  # A run killed while exporting its best model: finish or drop that export.
    previous = load_state(out / "checkpoint")
    if previous and previous.get("finished") and not config.resume:
        if "settings" not in previous and not config.overwrite:  # Finished by a version that did not record them.
            raise UsageError(
                out,
                "holds a finished run whose settings were not recorded (an earlier version of this "
                "command); pass --overwrite to train it again, --resume with more --epochs to continue "
                "it, or choose another --out",
            )
        if finished_with(out / "checkpoint" / STATE_FILE, settings, config.overwrite):
            return KEPT
        clear_outputs(out)
        return None
    if previous and config.overwrite and not config.resume:  # --overwrite replaces whatever --out holds.
        clear_outputs(out)
        return None
    if previous and not config.resume:
        raise UsageError(
            out,
            "holds an unfinished run; pass --resume to continue it, --overwrite to start it again, "
            "or choose another --out",
        )
    if previous:
        check_same_run(out, previous, settings)
        return previous
    if any((out / name).exists() for name in (*BEST_FILES, "history.csv")):
        print(f"{out}: a run stopped before its first checkpoint; starting it again from step 0.", file=sys.stderr)
        clear_outputs(out)
    elif config.resume:
        raise UsageError(out, "has no checkpoint to resume from")
    return None


# --resume may train longer, and continue a run on other hardware in another precision (a checkpoint of float32
# variables loads either way); any other change would make another run.
RESUMABLE_CHANGES = ("epochs", "precision")


def check_same_run(out, state, settings):
    """A UsageError naming the first setting in which --resume differs from the run in `out` (but RESUMABLE_CHANGES)."""
    # A run recorded without an objective (genesis runs, and those made before objectives existed) restored.
    recorded = {"objective": "genesis", "negatives": "batch", **(state.get("settings") or legacy_settings(out))}
    for name, value in settings.items():
        if name in recorded and name not in RESUMABLE_CHANGES and recorded[name] != json_value(value):
            if name == "data":
                raise UsageError(
                    "--manifest/--shards",
                    f"{out} was trained on other data (content {recorded[name]}, "
                    f"now {value}); resume it on its own data or choose another --out",
                )
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                flag,
                f"{out} was trained with {flag} {recorded[name]}, not {value}; resume it with "
                f"{flag} {recorded[name]} or choose another --out",
            )


def legacy_settings(out):
    """The settings of a run written before checkpoints recorded them: its run.json's, for those it holds."""
    record = Path(out) / "run.json"
    return json.loads(record.read_text()).get("args", {}) if record.exists() else {}


def json_value(value):
    """`value` as it reads back from a JSON record."""
    return json.loads(json.dumps(value, default=str))


def prepare_out_on_chief(config, strategy, chief, settings):
    """`prepare_out` on the chief of a multi-machine run, its answer (state, KEPT or error) given to every worker."""
    from genesis2d.distributed import broadcast_json

    answer = {}
    if chief:
        try:
            answer = {"state": prepare_out(config, settings)}
        except UsageError as error:
            answer = {"error": [error.path, error.problem]}
    answer = broadcast_json(strategy, answer)
    if "error" in answer:
        raise UsageError(*answer["error"])
    return answer["state"]


@dataclasses.dataclass
class PretrainRun:
    """Where one pretraining run stands: its settings, machines, data and checkpoint state."""

    config: PretrainConfig
    settings: dict
    strategy: object
    worker: int
    workers: int
    chief: bool
    source: Path
    counts: dict
    data_hash: str
    state: dict | None = None

    @property
    def out(self):
        return Path(self.config.out)

    @property
    def steps(self):
        """Training steps per epoch."""
        # The same for every objective (equal compute: a step passes batch_size images through the encoder); a
        # contrastive epoch reads half the slices, two views each.
        return self.config.steps_per_epoch or max(1, self.counts["train"] // self.config.batch_size)


@dataclasses.dataclass
class Streams:
    """A run's data: the training stream (or its maker), validation, the sample pair and the baselines to beat."""

    train: object
    val: object
    validation_steps: int
    samples: tuple
    identity: float
    constant: float


def run(config, strategy=None, extra_callbacks=()):
    """Pretrains as a PretrainConfig says and writes every output into config.out; returns the model card (dict).

    A finished run in config.out made with the same settings and data is kept: its card is
    returned without training. On several machines (see `genesis2d.distributed`) every
    worker calls it; the chief (worker 0) writes the outputs and the others return None.
    """
    from genesis2d.strategy import pick_strategy, worker_role
    from plumbing.lock import output_lock

    source, counts, data_hash = checked_data(config)  # Before waiting for other machines or touching --out.
    settings = run_settings(config, data_hash)
    strategy = strategy or pick_strategy(
        config.cluster, config.cluster_timeout
    )  # A multi-worker strategy must precede other TF work.
    worker, workers, chief = worker_role(strategy)
    with output_lock(config.out) if chief else contextlib.nullcontext():  # One writer per --out, before it is read.
        state = (
            prepare_out(config, settings) if workers == 1 else prepare_out_on_chief(config, strategy, chief, settings)
        )
        if state == KEPT:
            print(f"done earlier with these settings and data, kept: {Path(config.out) / ENCODER_FILE}", flush=True)
            card = json.loads((Path(config.out) / CARD_FILE).read_text()) if chief else None
        else:
            run_ = PretrainRun(config, settings, strategy, worker, workers, chief, source, counts, data_hash, state)
            card = _train(run_, extra_callbacks)
    if workers > 1:  # Every worker waits for the chief's last writes, so none leaves the group early.
        from genesis2d.distributed import broadcast_json

        broadcast_json(strategy, {})
    return card


def _check_shares(config, replicas, workers, steps, train_slices):
    """Refuses a batch that the replicas cannot share, and a key queue that one GPU, an epoch or the data cannot
    fill: one line naming the flag."""
    from genesis2d import contrastive

    if config.batch_size % (2 * replicas if config.two_views else replicas):
        raise UsageError(
            "--batch-size",
            f"{config.batch_size} is not a multiple of the {replicas} replicas that share it"
            + (" (each replica takes whole pairs of views)" if config.two_views else ""),
        )
    if config.negatives == "queue" and (replicas > 1 or workers > 1):
        # MoCo shares keys between GPUs with a gather and shuffles BatchNorm across them; neither is built here.
        raise UsageError(
            "--negatives",
            f"queue runs on one GPU, not the {replicas} replicas on {workers} machine(s) found; use --negatives "
            "batch on several (or make one GPU visible with CUDA_VISIBLE_DEVICES)",
        )
    if config.negatives == "queue" and config.queue_size > steps * config.batch_size:
        raise UsageError(
            "--queue-size",
            f"{config.queue_size} keys outnumber the {steps * config.batch_size} views of an epoch "
            f"({steps} steps x {config.batch_size}): slices would meet their own keys as negatives; lower it",
        )
    queue_slices = contrastive.MAX_QUEUE_SHARE * train_slices
    if config.negatives == "queue" and config.queue_size / 2 > queue_slices:
        raise UsageError(
            "--queue-size",
            f"{config.queue_size} keys hold {config.queue_size // 2} slices, over {contrastive.MAX_QUEUE_SHARE:.0%} "
            f"of the {train_slices} training slices: slices would often meet their own earlier keys "
            f"as negatives; lower it to {2 * int(queue_slices)} or less, or contrast in the batch (--negatives batch)",
        )
    if config.two_views and config.batch_size // replicas < 4:
        # Each replica contrasts its own share: with one slice's two views alone the loss is 0 and nothing is learned.
        raise UsageError(
            "--batch-size",
            f"{config.batch_size} gives each of the {replicas} replicas {config.batch_size // replicas} views; "
            "contrast needs at least 4 (two slices) on each, and learns better with many more",
        )


def _train(run, extra_callbacks):
    """The run itself, once its folder and data are checked: set up, stream, build, fit, finish."""
    from genesis2d.checkpoint import mark_finished
    from plumbing.runtime import configure_determinism, pick_precision, set_seed, write_run_record

    config, out, strategy = run.config, run.out, run.strategy
    _check_shares(config, strategy.num_replicas_in_sync, run.workers, run.steps, run.counts.get("train", 0))
    if run.chief:
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, out / "checkpoint"):
            remove_temporaries(folder)
    deterministic = configure_determinism(config.deterministic)
    set_seed(config.seed)
    precision = pick_precision(config.precision)
    if run.chief:
        print(
            f"data: {run.source} ({run.counts.get('train', 0)} train / {run.counts.get('val', 0)} val slices); "
            f"precision {precision}; {strategy.num_replicas_in_sync} replica(s) on {run.workers} machine(s); "
            f"{run.steps} steps per epoch",
            flush=True,
        )
    streams = _streams(run)
    model = _build_model(config, strategy, run.workers)
    card = _card(run, precision, streams)
    if run.chief:
        write_run_record(
            out,
            config.record(),
            {
                "precision": precision,
                "deterministic": deterministic,
                "replicas": strategy.num_replicas_in_sync,
                "workers": run.workers,
            },
        )
        trim_history(out / "history.csv", run.state["epoch"] if run.state else 0)
    callbacks = [*_callbacks(config, model, out, run.chief, streams.samples, card), *extra_callbacks]
    started = time.time()
    _fit(run, model, streams, callbacks)
    if not run.chief:
        return None
    card["training_seconds"] = round(card.get("training_seconds", 0) + time.time() - started, 1)
    if "best_val_loss" not in card:  # No finite validation loss at all: still leave a usable encoder.
        export_best(model, config.backbone, out, card)
    write_json(out / CARD_FILE, card)
    mark_finished(out / "checkpoint", run.settings)  # Last: a run is finished once its card is complete.
    print(
        f"encoder: {out / ENCODER_FILE} (best validation loss {card.get('best_val_loss')}, "
        f"epoch {card.get('best_epoch')})"
    )
    return card


def _streams(run):
    """The run's `Streams`."""
    from genesis2d.health import restoration_baselines

    config, source, state = run.config, run.source, run.state
    validation_steps = -(-run.counts["val"] // config.slices_per_batch)
    if config.validation_steps:
        validation_steps = min(validation_steps, config.validation_steps)
    val_seed = derive_seed(config.seed, STREAM_VAL_DISTORTIONS)
    if run.workers == 1:

        def train(first_batch):  # Batch i of the run is batch i of one stream, whichever step it resumes from.
            return pairs(
                source,
                "train",
                config,
                training=True,
                first_seed=derive_seed(config.seed, STREAM_TRAIN_DISTORTIONS),
                first_batch=first_batch,
            )

        # Every validation slice counts, the last batch smaller when it must be, so validation never vanishes.
        val = sample_batch = pairs(source, "val", config, training=False, first_seed=val_seed)
    else:
        first_step = (state["epoch"] * run.steps + state["step"]) if state else 0
        train, val, sample_batch = worker_datasets(source, config, run.strategy, first_step, run.worker, run.workers)
    inputs, targets = next(iter(sample_batch.take(1)))
    # The bars restoration must clear: the validation loss of returning the distorted slices unchanged, and of the best
    # constant output (on several machines: the same slices, distorted as one machine distorts them). Contrast has its
    # own bar, the loss of telling nothing apart (the card's chance_val_loss).
    identity = constant = None
    if config.objective != "contrastive":
        identity, constant = restoration_baselines(
            pairs(source, "val", config, training=False, first_seed=val_seed), validation_steps
        )
    if isinstance(targets, dict):
        targets = targets[RESTORED]
    shown = 2 * config.samples if config.two_views else config.samples  # Whole pairs of views.
    samples = (inputs.numpy()[:shown], None if config.objective == "contrastive" else targets.numpy()[:shown])
    return Streams(train, val, validation_steps, samples, identity, constant)


def _build_model(config, strategy, workers):
    """The compiled U-Net, under the strategy, its BatchNorm momentum set (and synchronised on several machines)."""
    import keras

    from genesis2d.contrastive import build_pretrainer, compile_arguments

    with strategy.scope():
        model = build_pretrainer(
            config.objective,
            config.backbone,
            (config.image_size, config.image_size, 1),
            config.norm,
            config.encoder_weights,
            config.projection_dim,
            config.negatives,
            config.queue_size,
            config.temperature,
        )
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
        model.compile(
            optimizer=make_optimizer(config.optimizer, config.lr, config.momentum, config.clipnorm),
            **compile_arguments(config.objective, config.temperature, config.restoration_weight, config.negatives),
        )
        if workers > 1:
            from genesis2d.distributed import synchronize_batch_norm

            synchronize_batch_norm(model)
            model.optimizer.build(model.trainable_variables)
    return model


def _card(run, precision, streams):
    """The model card (the resumed run's, updated), before training."""
    from genesis2d.card import encoder_card
    from plumbing.runtime import versions

    config, out = run.config, run.out
    card_path = out / CARD_FILE
    card = json.loads(card_path.read_text()) if (run.state and card_path.exists()) else {}
    card.update(
        {
            "backbone": config.backbone,
            "norm": config.norm,
            "input_size": [config.image_size, config.image_size, 1],
            "crop_size": config.crop_size,
            "crop": CROP_RULE,
            "normalisation": NORMALISATION,
            "data": os.path.relpath(run.source, out),
            "data_hash": run.data_hash,  # Relative to the run folder: cards are published.
            "precision": precision,
            "versions": versions(),
            "encoder_output_layer": "encoder_output",
            "objective": config.objective,
            **objective_card(config, run.strategy.num_replicas_in_sync),
            "best_epoch_chosen_on": CHOSEN_ON[config.objective],
            "identity_val_loss": streams.identity,
            "constant_val_loss": streams.constant,
            **encoder_card(config.backbone, NORMALISATION),
        }
    )
    return card


CHOSEN_ON = {
    "genesis": "validation loss (MSE of restored validation slices)",
    "contrastive": "validation loss (InfoNCE of two views of each validation slice)",
    "genesis+contrastive": "validation loss (restoration weight x MSE + InfoNCE, two views of each validation slice)",
}


def objective_card(config, replicas=1):
    """What the card says of an objective: its distortions, views, loss and head, and the contrast's chance level.

    Each replica contrasts its own share of the batch, so the chance level is that of
    batch_size / replicas views.
    """
    from genesis2d import contrastive

    card = {}
    if config.objective != "contrastive":
        card["distortions"] = dataclasses.asdict(config.distortions)
    if config.two_views:
        card["views"] = {
            "crop_scale": list(contrastive.CROP_SCALE),
            "crop_ratio": [round(r, 4) for r in contrastive.CROP_RATIO],
            "flip_rate": contrastive.FLIP_RATE,
            "intensity_rate": contrastive.INTENSITY_RATE,
            "brightness": contrastive.BRIGHTNESS,
            "contrast": contrastive.CONTRAST,
            "gamma_rate": contrastive.GAMMA_RATE,
            "gamma": list(contrastive.GAMMA),
            "blur_rate": contrastive.BLUR_RATE,
            "blur_sigma_at_224": list(contrastive.BLUR_SIGMA),
        }
        queue = config.negatives == "queue"
        card["contrast"] = {
            "loss": (
                f"InfoNCE against a queue (MoCo v2): a view's positive is its partner's key from a momentum encoder "
                f"(m {config.key_momentum}), its negatives the keys of the last {config.queue_size} views"
                if queue
                else "InfoNCE over the batch (SimCLR's NT-Xent): the other slices' views are the negatives"
            ),
            "negatives": config.negatives,
            "temperature": config.temperature,
            "projection": f"global average pool, Dense(channels) + ReLU, Dense({config.projection_dim}), L2 norm",
            "slices_per_batch": config.slices_per_batch,
        }
        if config.objective == "genesis+contrastive":
            card["contrast"]["restoration_weight"] = config.restoration_weight
        # Telling nothing apart: each view's loss is log(views in its batch - 1), or log(queue size + 1).
        if queue:
            card["chance_val_loss"] = contrastive.queue_chance_loss(config.queue_size)
            card["contrast"].update(queue_size=config.queue_size, key_momentum=config.key_momentum)
        else:
            card["chance_val_loss"] = contrastive.chance_loss(config.batch_size // replicas)
            card["contrast"]["views_contrasted"] = config.batch_size // replicas
    return card


def _callbacks(config, model, out, chief, sample_pair, card):
    """With a queue the key encoder's update; the guards (a broken run stops before it exports), the schedule, then
    the chief's writers."""
    import keras

    from genesis2d.contrastive import MomentumUpdate
    from genesis2d.health import health_guard
    from genesis2d.schedule import LinearWarmUp, PlateauAfterWarmUp
    from plumbing.runtime import divergence_guard

    # The key encoder's update first, so that every later callback (and the checkpoint, last) sees the step's.
    callbacks = [MomentumUpdate(config.key_momentum)] if config.negatives == "queue" else []
    callbacks += [
        LinearWarmUp(config.lr, config.warmup_steps),
        divergence_guard(),
        health_guard(sample_pair, config.lr, config.checkpoint_every, config.objective),
        PlateauAfterWarmUp(
            config.warmup_steps,
            monitor="val_loss",
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=config.min_lr,
            verbose=1 if chief else 0,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, verbose=1 if chief else 0
        ),
    ]
    if chief:
        callbacks += [
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
            keras.callbacks.TensorBoard(
                log_dir=str(writable_folder(out / "logs")), write_graph=False, update_freq="epoch"
            ),
            make_reporter(model, out, config.backbone, sample_pair, card, config.objective),
        ]
    return callbacks


def _fit(run, model, streams, callbacks):
    """Trains on one machine (`fit_resumable`) or several (`fit_multiworker`), checkpointing into out/checkpoint."""
    import tensorflow as tf

    from genesis2d.checkpoint import fit_resumable
    from preprocessing.pipeline import NO_SLICE_LEFT

    config, state = run.config, run.state
    checkpoint_dir = run.out / "checkpoint"
    record = {"settings": run.settings}  # In every checkpoint: what --resume must match.
    try:
        if run.workers == 1:
            fit_resumable(
                model,
                streams.train,
                config.epochs,
                run.steps,
                callbacks,
                checkpoint_dir,
                every_steps=config.checkpoint_every,
                resume=state is not None,
                extra_state=lambda: record,
                validation_data=streams.val,
                validation_steps=streams.validation_steps,
                verbose=config.verbose,
                shuffle=False,
            )
            return
        from genesis2d.distributed import broadcast_variables, fit_multiworker

        if run.chief and state and state.get("weights"):  # Only the chief reads the checkpoint; it is broadcast.
            model.load_weights(checkpoint_dir / state["weights"])
        broadcast_variables(run.strategy, [*model.variables, *model.optimizer.variables])
        fit_multiworker(
            model,
            run.strategy,
            streams.train,
            streams.val,
            config.batch_size,
            config.epochs,
            run.steps,
            callbacks,
            checkpoint_dir,
            every_steps=config.checkpoint_every,
            state=state,
            chief=run.chief,
            validation_steps=streams.validation_steps,
            verbose=config.verbose,
            extra_state=lambda: record,
            per_example=per_example_loss(config.objective, config.temperature, config.restoration_weight),
        )
    except tf.errors.OpError as error:
        if NO_SLICE_LEFT in str(error):  # Raised inside the input pipeline; said here as one line.
            raise ImageReadError(run.source, "no file of a split can be read (see the warnings above)") from None
        raise


def main(argv=None):
    """The command line (`genesis2d.command.main`, which `python genesis2d/train.py` runs)."""
    from genesis2d.command import main as command

    return command(argv)
