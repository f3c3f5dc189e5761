"""The discriminative arm: two views of each slice told apart from the other slices' views (InfoNCE).

Beside Models Genesis's restoration (`genesis2d.transforms`, `genesis2d.unet`), the same encoder can
learn by contrast, as SimCLR (Chen et al., ICML 2020) and MoCo v2 (Chen et al., arXiv:2003.04297) do,
or by both at once, as DiRA's discriminative and restorative parts (Haghighi et al., CVPR 2022).
The three are the pretraining's `--objective`, named as the downstream `--init` names their encoders:

- `genesis`: restoration only (the thesis);
- `contrastive`: the encoder's pooled features through a projection head (`projection_head`), two
  views of each slice (`make_views`), the InfoNCE loss over the batch (`InfoNCE`);
- `genesis+contrastive`: one encoder, the U-Net's restoration of both views' distorted versions and the
  contrast of the two views, the losses weighted as DiRA weights them (restoration 10, discrimination 1).
  DiRA's adversarial part is left out (its "DiR" variant).

Negatives (`--negatives`), by default the other slices of the batch (SimCLR). The step then holds no
state but the weights, so it is the same on one GPU or several, and on several machines; the price is
few negatives at small batches (a batch of B views, B/2 slices, gives each view B - 2: 30 at the default
32, against MoCo v2's 65,536), which SimCLR shows costs accuracy below batches of ~256: raise
--batch-size where memory allows. On several GPUs each contrasts its own share of the batch. The views
are interleaved (slice 0's two views, slice 1's, ...), so a batch split between GPUs keeps each slice's
two views together, and BatchNorm sees both views.

`--negatives queue` is MoCo v2's answer for one GPU (`MomentumContrast`, `MomentumUpdate`): a key
encoder, the moving average of the encoder and head, embeds each view; a view's positive is its
partner's key, its negatives the keys of the last `--queue-size` views, however small the batch. It is
not the default because it is state beside the weights (a queue and a second encoder, both in every
checkpoint, so resume stays bit for bit) that MoCo shares between GPUs with a gather and shuffled
BatchNorm this project does not build: the command runs it on one GPU only.

A view (`make_views`) is a random resized crop of the slice, flipped and blurred, after pointwise intensity
changes (brightness, contrast and gamma; no colour jitter on grey slices). The crop is taken of the input
the pipeline gives: the slice's 448 crop (thesis 3.1.8) resized to the input size, so a view never reaches
outside the thesis's crop.
"""

import keras
import numpy as np

# The objectives' settings (temperature, projection, restoration weight, negatives, queue) and their sources, in
# the keras-free `genesis2d.objectives` that the options read.
from genesis2d.objectives import (  # noqa: F401
    KEY_MOMENTUM,
    MAX_QUEUE_SHARE,
    NEGATIVES,
    OBJECTIVES,
    PROJECTION_DIM,
    QUEUE_SIZE,
    RESTORATION_WEIGHT,
    TEMPERATURE,
)

# Views. Sources: MoCo v2's augmentation (its RandomResizedCrop, ColorJitter, blur and flip), without the
# saturation, hue and greyscale parts, which grey slices do not have.
CROP_SCALE = (0.2, 1.0)  # Share of the slice's area a view keeps (MoCo v2).
CROP_RATIO = (3 / 4, 4 / 3)  # Its aspect ratio, log-uniform (MoCo v2, torchvision's default).
FLIP_RATE = 0.5  # Horizontal flip (MoCo v2).
INTENSITY_RATE = 0.8  # Brightness and contrast together (MoCo v2's ColorJitter probability).
BRIGHTNESS = 0.4  # Intensities times a factor in [1 - 0.4, 1 + 0.4] (MoCo v2).
CONTRAST = 0.4  # Deviations from the slice's mean times a factor in [0.6, 1.4] (MoCo v2).
GAMMA_RATE = 0.5  # This project's choice: a gamma change stands in for the colour jitter grey slices lack.
GAMMA = (0.7, 1.5)  # Log-uniform; this project's choice, the range common in medical intensity augmentation.
BLUR_RATE = 0.5  # Gaussian blur (MoCo v2).
BLUR_SIGMA = (0.1, 2.0)  # Pixels at 224 (MoCo v2); scaled with the input size.
BLUR_SIDE = 224
VIEW_STREAM = 0x56494557  # Keeps the views' random stream apart from the distortions' of the same seed.


MOMENTUM_ENCODER = "momentum_encoder"  # The key encoder's name in the model.
EMBEDDING = "embedding"  # The name of the projection head's output (and of its loss).
RESTORED = "restored"


def _resample(images, start, length, axis):
    """Bilinear resampling of [start, start + length) of each image along `axis` (1 rows, 2 columns) to its side.

    Pixel centres map as in `tf.image.resize` (half-pixel centres); coordinates outside the
    slice are clamped to its edge.
    """
    side = images.shape[axis]
    centres = start[:, None] + (np.arange(side)[None, :] + 0.5) * (length[:, None] / side) - 0.5
    centres = np.clip(centres, 0.0, side - 1.0)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, side - 1)
    weight = (centres - low).astype(np.float32)
    shape = (len(images), side, 1) if axis == 1 else (len(images), 1, side)
    low, high, weight = low.reshape(shape), high.reshape(shape), weight.reshape(shape)
    return (1 - weight) * np.take_along_axis(images, low, axis) + weight * np.take_along_axis(images, high, axis)


def view_parameters(rng, n, height, width):
    """The random draws of n views of (height, width) slices: crop boxes, flips, intensities, gammas, blurs."""
    area = height * width * rng.uniform(*CROP_SCALE, n)
    ratio = np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]), n))
    crop_h = np.clip(np.sqrt(area / ratio), 1.0, height)  # Sides clamped to the slice (torchvision retries instead).
    crop_w = np.clip(np.sqrt(area * ratio), 1.0, width)
    top = rng.uniform(0.0, 1.0, n) * (height - crop_h)
    left = rng.uniform(0.0, 1.0, n) * (width - crop_w)
    flip = rng.random(n) < FLIP_RATE
    jitter = rng.random(n) < INTENSITY_RATE
    brightness = np.where(jitter, rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, n), 1.0)
    contrast = np.where(jitter, rng.uniform(1 - CONTRAST, 1 + CONTRAST, n), 1.0)
    gamma = np.where(rng.random(n) < GAMMA_RATE, np.exp(rng.uniform(np.log(GAMMA[0]), np.log(GAMMA[1]), n)), 1.0)
    scale = max(height, width) / BLUR_SIDE
    blur = np.where(rng.random(n) < BLUR_RATE, rng.uniform(*BLUR_SIGMA, n) * scale, 0.0)
    return {
        "top": top,
        "left": left,
        "crop_h": crop_h,
        "crop_w": crop_w,
        "flip": flip,
        "brightness": brightness,
        "contrast": contrast,
        "gamma": gamma,
        "blur": blur,
    }


def apply_views(sources, p):
    """The views of `sources` (N, H, W, 1) drawn as `p` (`view_parameters`) says; float32 in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    sources = np.asarray(sources, np.float32)[..., 0]
    n, height, width = sources.shape
    # Pointwise first, as torchvision's ColorJitter: brightness, then contrast about the mean, each clipped to
    # [0, 1]; then gamma.
    x = np.clip(p["brightness"][:, None, None] * sources, 0, 1)
    mean = x.mean(axis=(1, 2), keepdims=True)
    x = np.clip(mean + p["contrast"][:, None, None] * (x - mean), 0, 1)
    x = x ** p["gamma"][:, None, None]
    # Then the crop resized to the input size, the flip, and the blur (scipy's Gaussian filter, reflecting borders).
    x = _resample(_resample(x.astype(np.float32), p["top"], p["crop_h"], 1), p["left"], p["crop_w"], 2)
    views = np.where(p["flip"][:, None, None], x[:, :, ::-1], x)
    for i in np.flatnonzero(p["blur"] > 0):
        views[i] = gaussian_filter(views[i], p["blur"][i])
    return np.clip(views, 0.0, 1.0).astype(np.float32)[..., None]


def make_views(images, seed=None):
    """Two views of each slice of a batch, interleaved: (2N, H, W, 1) float32, rows 2i and 2i + 1 from slice i.

    Args:
        images: float32 (N, H, W, 1) in [0, 1].
        seed: int or None. The same seed gives the same views.

    Example:
    >>> views = make_views(np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32), seed=1)
    >>> views.shape
    (8, 32, 32, 1)
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"images must be (N, H, W, 1). Received: images.shape={images.shape}")
    n, height, width, _ = images.shape
    rng = np.random.default_rng(None if seed is None else (VIEW_STREAM, int(seed)))
    sources = np.repeat(images, 2, axis=0)  # Slice i at rows 2i and 2i + 1.
    return apply_views(sources, view_parameters(rng, 2 * n, height, width))


def tf_make_views(images, seed):
    """`make_views` inside a tf.data pipeline: (B, H, W, 1) float32 tensor and int64 seed in, (2B, H, W, 1) out."""
    import tensorflow as tf

    views = tf.numpy_function(lambda x, s: make_views(x, int(s)), [images, seed], tf.float32, stateful=False)
    views.set_shape([None if images.shape[0] is None else 2 * images.shape[0], *images.shape[1:]])
    return views


def info_nce(embeddings, temperature=TEMPERATURE):
    """Each view's InfoNCE loss (SimCLR's NT-Xent) over an interleaved batch of L2-normalised embeddings.

    For view i, its partner p(i) (i + 1 if i is even, else i - 1) is the positive and the
    batch's other 2N - 2 views the negatives:
    loss_i = -log(exp(s_ip / t) / sum_{j != i} exp(s_ij / t)), with s the cosine similarity.

    Args:
        embeddings: (2N, D) float tensor, rows L2-normalised, two views per slice interleaved.
        temperature: float. Defaults to 0.2 (MoCo v2).

    Returns:
        (2N,) float tensor.
    """
    ops = keras.ops
    z = ops.cast(embeddings, "float32")
    count = ops.shape(z)[0]
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    index = ops.arange(count)
    logits = ops.where(ops.equal(index[:, None], index[None, :]), -1e9, logits)  # A view is not its own negative.
    partner = index + 1 - 2 * (index % 2)
    positive = ops.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
    return ops.logsumexp(logits, axis=1) - positive


def chance_loss(views):
    """The InfoNCE loss of an encoder that tells nothing apart (every similarity equal): log(views - 1)."""
    return float(np.log(views - 1))


@keras.saving.register_keras_serializable(package="genesis2d")
class InfoNCE(keras.losses.Loss):
    """`info_nce` as a Keras loss: y_true is ignored (the batch's order says which views pair).

    Args:
        temperature: float. Defaults to 0.2 (MoCo v2).
    """

    def __init__(self, temperature=TEMPERATURE, name="info_nce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        return info_nce(y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def queue_info_nce(queries, keys, queue, temperature=TEMPERATURE, filled=None):
    """Each view's InfoNCE against a queue of negatives (MoCo), over an interleaved batch.

    View i's positive is the key of its partner p(i) (as in `info_nce`), its negatives the
    queue's rows n_j: loss_i = -log(exp(q_i.k_p(i) / t) / (exp(q_i.k_p(i) / t) + sum_j exp(q_i.n_j / t))).
    Symmetric, as MoCo v3 and DiRA write it: both views of a slice are queries, each the other's
    key, so every view passes the trained encoder as in the in-batch objective.

    Args:
        queries: (2N, D) float tensor, the trained encoder's L2-normalised embeddings.
        keys: (2N, D) float tensor, the momentum encoder's embeddings of the same views.
        queue: (K, D) float tensor, L2-normalised rows.
        temperature: float. Defaults to 0.2 (MoCo v2).
        filled: number or None. Only the queue's first `filled` rows are negatives (None: all).

    Returns:
        (2N,) float tensor.
    """
    ops = keras.ops
    q, k, queue = (ops.cast(x, "float32") for x in (queries, keys, queue))
    index = ops.arange(ops.shape(k)[0])
    partner = index + 1 - 2 * (index % 2)
    positive = ops.sum(q * ops.take(k, partner, axis=0), axis=1, keepdims=True) / temperature
    negative = ops.matmul(q, ops.transpose(queue)) / temperature
    if filled is not None:  # Rows not yet filled are no negatives.
        empty = ops.cast(ops.arange(ops.shape(queue)[0]), "float32") >= ops.cast(filled, "float32")
        negative = ops.where(empty[None, :], -1e9, negative)
    logits = ops.concatenate([positive, negative], axis=1)
    return ops.logsumexp(logits, axis=1) - positive[:, 0]


def queue_chance_loss(size):
    """The queue's InfoNCE for an encoder that tells nothing apart: log(queue size + 1)."""
    return float(np.log(size + 1))


@keras.saving.register_keras_serializable(package="genesis2d")
class MomentumContrast(keras.layers.Layer):
    """MoCo's loss and queue, on [queries, keys] of an interleaved batch of views; returns the queries unchanged.

    Adds the batch's mean `queue_info_nce` as the model's loss (also reported as
    `embedding_loss`). In training the batch's keys then enter the queue, newest first, and as
    many of the oldest leave it; evaluation leaves the queue as it is. The queue starts empty,
    its rows counted as they fill (`filled`), not as MoCo's random unit vectors: random vectors
    are easier negatives than any view, so the first epoch's loss would read lower than the
    later ones' and be chosen as the best. A run's queue is full by its first validation (the
    command keeps --queue-size within an epoch's views).

    Args:
        size: int. Keys in the queue. Defaults to 65,536 (MoCo v2).
        temperature: float. Defaults to 0.2 (MoCo v2).
    """

    def __init__(self, size=QUEUE_SIZE, temperature=TEMPERATURE, **kwargs):
        super().__init__(**kwargs)
        self.size, self.temperature = int(size), float(temperature)
        self.tracker = keras.metrics.Mean(name=f"{EMBEDDING}_loss")

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.queue = self.add_weight(shape=(self.size, dim), initializer="zeros", trainable=False, name="queue")
        self.filled = self.add_weight(shape=(), initializer="zeros", trainable=False, name="filled")

    def call(self, inputs, training=False):
        ops = keras.ops
        queries, keys = inputs
        keys = ops.stop_gradient(ops.cast(keys, "float32"))
        losses = queue_info_nce(queries, keys, self.queue, self.temperature, filled=self.filled)
        self.add_loss(ops.mean(losses))
        self.tracker.update_state(losses)
        if training:
            self.queue.assign(ops.concatenate([keys, self.queue], axis=0)[: self.size])
            self.filled.assign(ops.minimum(self.filled + ops.cast(ops.shape(keys)[0], "float32"), self.size))
        return queries

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "size": self.size, "temperature": self.temperature}


def momentum_encoder(query):
    """MoCo's key encoder: a copy of `query` (views -> embeddings) with its weights, frozen.

    Frozen, its BatchNorm layers normalise with moving statistics, not the batch's: a key then
    carries no trace of the batch it came from that its query could match (the shortcut MoCo's
    shuffled BatchNorm closes on several GPUs).
    """
    copy = keras.models.clone_model(query)
    key = keras.Model(copy.inputs[0], copy.outputs[0], name=MOMENTUM_ENCODER)  # Takes a tensor, not a list of one.
    key.set_weights(query.get_weights())
    key.trainable = False
    return key


def momentum_pairs(model):
    """(key variable, trained variable, averaged) for each weight of a model's momentum encoder.

    The key encoder's layers are copies of the model's own, of the same names. Weights the
    optimizer trains are averaged; the BatchNorm moving statistics (which the key encoder uses,
    `momentum_encoder`) are the trained encoder's own, copied: an average of those running
    averages would lag a short run by about 1 / (1 - momentum) steps.
    """
    pairs = []
    for layer in model.get_layer(MOMENTUM_ENCODER).layers:
        for key, trained in zip(layer.weights, model.get_layer(layer.name).weights, strict=True):
            pairs.append((key, trained, trained.trainable))
    return pairs


class MomentumUpdate(keras.callbacks.Callback):
    """After each training step, the key encoder moves towards the trained one: key <- m key + (1 - m) trained.

    MoCo's momentum update (its equation 2), placed before the run's checkpoint callback, so that
    a checkpoint holds the key encoder of its step.

    Args:
        momentum: float. Defaults to 0.999 (MoCo v2).
    """

    def __init__(self, momentum=KEY_MOMENTUM):
        super().__init__()
        self.momentum = float(momentum)
        self.update = None

    def on_train_batch_end(self, batch, logs=None):
        if self.update is None:
            pairs, m = momentum_pairs(self.model), self.momentum

            def update():
                for key, trained, averaged in pairs:
                    key.assign(m * key + (1 - m) * trained if averaged else trained)

            if keras.backend.backend() == "tensorflow":  # One graph: ~3x faster than an op at a time.
                import tensorflow as tf

                update = tf.function(update)
            self.update = update
        self.update()


def projection_head(features, dim=PROJECTION_DIM, name=EMBEDDING):
    """MoCo v2's MLP head on encoder features: global average pool, Dense(channels) + ReLU, Dense(dim), L2 norm.

    The output is float32 (under mixed_float16 the loss must be) and named `name`.
    """
    layers = keras.layers
    channels = features.shape[-1]
    x = layers.GlobalAveragePooling2D(name="projection_pool")(features)
    x = layers.Dense(channels, activation="relu", name="projection_hidden")(x)
    x = layers.Dense(dim, name="projection_out")(x)
    return layers.UnitNormalization(axis=-1, dtype="float32", name=name)(x)


def build_pretrainer(
    objective,
    backbone,
    input_shape,
    norm="batch",
    encoder_weights=None,
    dim=PROJECTION_DIM,
    negatives="batch",
    queue_size=QUEUE_SIZE,
    temperature=TEMPERATURE,
):
    """The model an objective trains, its encoder ending in `encoder_output` as the U-Net's does.

    Args:
        objective: str. One of OBJECTIVES.
        backbone, input_shape, norm, encoder_weights: as `genesis2d.unet.build_unet`.
        dim: int. The projection head's output size. Defaults to 128.
        negatives: str. "batch" (the loss is compiled, `compile_arguments`) or "queue": the model then
            holds MoCo's key encoder (`momentum_encoder`) and queue (`MomentumContrast`, which
            adds the contrast's loss itself), and trains with `MomentumUpdate` among its callbacks.
        queue_size, temperature: the queue's (negatives="queue").

    Returns:
        keras.Model: `genesis` the U-Net (output `restored`); `contrastive` the encoder and its
        head (output `embedding`); `genesis+contrastive` the U-Net with the head on its
        encoder, outputs {"restored", "embedding"}.
    """
    from genesis2d.unet import ENCODER_OUTPUT, build_encoder, build_unet

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}. Received: objective={objective!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}. Received: negatives={negatives!r}")
    if objective == "genesis":
        return build_unet(backbone, input_shape, norm, encoder_weights)
    if objective == "contrastive":
        encoder = build_encoder(backbone, input_shape, encoder_weights)
        views, features, restored, name = encoder.input, encoder.output, None, f"contrastive_{backbone}"
    else:
        unet = build_unet(backbone, input_shape, norm, encoder_weights)
        views, features, restored = unet.input, unet.get_layer(ENCODER_OUTPUT).output, unet.output
        name = f"genesis_contrastive_{backbone}_{norm}"
    embedding = projection_head(features, dim)
    if negatives == "queue":
        image = views[0] if isinstance(views, (list, tuple)) else views
        keys = momentum_encoder(keras.Model(views, embedding))(image)
        contrast = MomentumContrast(queue_size, temperature, dtype="float32", name="negative_queue")
        embedding = contrast([embedding, keys])
    outputs = embedding if restored is None else {RESTORED: restored, EMBEDDING: embedding}
    return keras.Model(views, outputs, name=name)


def compile_arguments(objective, temperature=TEMPERATURE, restoration_weight=RESTORATION_WEIGHT, negatives="batch"):
    """The loss, loss weights and metrics to compile an objective's model with (`model.compile(**...)`).

    With a queue the model adds the contrast's loss itself (`MomentumContrast`); the joined
    objective's restoration is then the one compiled loss, reported as `restored_loss` beside
    the contrast's `embedding_loss`, as with in-batch negatives.
    """
    if objective == "genesis":
        return {"loss": "mse"}
    if negatives == "queue":
        if objective == "contrastive":
            return {"loss": None}
        restored = keras.metrics.MeanSquaredError(name="loss")  # Keras names it restored_loss.
        return {
            "loss": {RESTORED: "mse"},
            "loss_weights": {RESTORED: restoration_weight},
            "metrics": {RESTORED: [restored]},
        }
    if objective == "contrastive":
        return {"loss": InfoNCE(temperature)}
    return {
        "loss": {RESTORED: "mse", EMBEDDING: InfoNCE(temperature)},
        "loss_weights": {RESTORED: restoration_weight, EMBEDDING: 1.0},
    }


def per_example_loss(objective, temperature=TEMPERATURE, restoration_weight=RESTORATION_WEIGHT):
    """(model, inputs, targets, training) -> each example's loss (float32), as the compiled losses weigh them.

    For the multi-machine step (`genesis2d.distributed`), which averages it over the global
    batch: the MSE of each restored slice, the InfoNCE of each view over its replica's share
    (as `fit` computes it on one machine's GPUs), or their weighted sum.
    """

    def mse(restored, targets):
        ops = keras.ops
        difference = ops.cast(restored, "float32") - ops.cast(targets, "float32")
        return ops.mean(ops.square(difference), axis=[1, 2, 3])

    def loss(model, inputs, targets, training):
        outputs = model(inputs, training=training)
        if objective == "genesis":
            return mse(outputs, targets)
        if objective == "contrastive":
            return info_nce(outputs, temperature)
        return restoration_weight * mse(outputs[RESTORED], targets[RESTORED]) + info_nce(
            outputs[EMBEDDING], temperature
        )

    return loss


def outputs_of(objective, outputs):
    """(restored, embedding) of a model's outputs, each None when the objective has none; numpy arrays."""

    def numpy(value):
        return None if value is None else np.asarray(keras.ops.convert_to_numpy(value))

    if isinstance(outputs, dict):
        return numpy(outputs.get(RESTORED)), numpy(outputs.get(EMBEDDING))
    if objective == "contrastive":
        return None, numpy(outputs)
    return numpy(outputs), None


def pair_similarities(embeddings):
    """(mean cosine similarity of each slice's two views, mean over all other pairs) of interleaved embeddings."""
    z = np.asarray(embeddings, np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    similarity = z @ z.T
    count = len(z)
    index = np.arange(count)
    partner = index + 1 - 2 * (index % 2)
    positive = similarity[index, partner]
    negative = ~np.eye(count, dtype=bool)
    negative[index, partner] = False
    return float(positive.mean()), float(similarity[negative].mean())
