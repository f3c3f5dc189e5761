"""Where does a classifier look? Grad-CAM maps and galleries of a run's most confident cases.

Grad-CAM (Selvaraju et al., ICCV 2017) on the encoder's last convolutional block
(`encoder_output`, stride 32): the feature maps weighted by the spatial mean of the
gradient of the positive class's score, summed over channels, rectified, resized
to the input and scaled to [0, 1] per image. On small inputs that block is a grid
of one or two cells (a 64x64 LUNA16 patch gives 2x2), which cannot show where the
network looks; `saliency_block` then picks the deepest skip block with a grid of
at least 4x4 (stride 16 at 64 px), and the gallery's title names the block. The score is the sigmoid output;
its gradient differs from the logit's by a positive factor per image, which the
per-image scaling removes. `gallery` draws, for the k most confident true
positives, false positives and false negatives of a test set, every view of each
case with its map over it.
"""

import numpy as np

from plumbing.figures import pyplot, save_figure

CATEGORIES = ("true positives", "false positives", "false negatives")


MIN_GRID = 4  # Cells per side below which the last block cannot localise.


def saliency_block(skips, image_size, stride=32):
    """The block to explain: None (the encoder's output) when its grid is at least MIN_GRID cells a side, else the
    deepest of `skips` (deepest first, strides 16, 8, 4, 2) that is; None if none is."""
    for index, name in enumerate([None, *skips]):
        if image_size // (stride >> index) >= MIN_GRID:
            return name
    return None


def image_maps(cam, size):
    """Coarse maps (N, h, w) weighted by channel -> (N, H, W) float32: rectified, resized to `size`, peak 1 each."""
    import tensorflow as tf

    cam = np.maximum(np.asarray(cam, dtype=np.float32), 0)[..., None]
    cam = tf.image.resize(cam, tuple(size), method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    return (cam / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def grad_cam(model, images, block=None, encoder_name="encoder", batch_size=32):
    """(N, H, W) float32 maps in [0, 1] for a classifier that nests its encoder as one layer.

    Args:
        model: keras.Model image -> probability, whose layer `encoder_name` (a nested model
            ending in `encoder_output`) is followed by the head's layers (see
            `transfer.finetune.build_classifier`).
        images: float (N, H, W, 1).
        block: name of the encoder layer to explain. Defaults to its output.
    """
    import keras
    import tensorflow as tf

    encoder = model.get_layer(encoder_name)
    head = model.layers[model.layers.index(encoder) + 1 :]
    outputs = [encoder.output] if block is None else [encoder.get_layer(block).output, encoder.output]
    encoder = keras.Model(encoder.input, outputs)
    maps = []
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(np.asarray(images[start : start + batch_size], dtype=np.float32))
        with tf.GradientTape() as tape:
            found = encoder(x, training=False)
            found = found if isinstance(found, (list, tuple)) else [found]
            features = tf.cast(found[0], tf.float32)
            tape.watch(found[0])
            score = found[-1]
            for layer in head:
                score = layer(score, training=False)
            score = tf.cast(score, tf.float32)[:, 0]
        gradients = tf.cast(tape.gradient(score, found[0]), tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps.append(image_maps(tf.reduce_sum(weights * features, axis=-1), x.shape[1:3]))
    return np.concatenate(maps).astype(np.float32)


def confident_cases(labels, probabilities, k=4, threshold=0.5):
    """{category: indices}: the k most confident true positives, false positives and false negatives."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    called = probabilities >= threshold
    chosen = {}
    for category, mask, most_confident_first in (
        (CATEGORIES[0], (labels == 1) & called, -probabilities),
        (CATEGORIES[1], (labels == 0) & called, -probabilities),
        (CATEGORIES[2], (labels == 1) & ~called, probabilities),
    ):
        candidates = np.flatnonzero(mask)
        chosen[category] = candidates[np.argsort(most_confident_first[candidates], kind="stable")][:k]
    return chosen


def gallery(path, images, maps, labels, probabilities, k=4, title="", view_names=None):
    """Writes a PNG grid: one row per category, each of its k cases as its views with the map over them.

    Args:
        images, maps: (N, V, H, W) (or (N, H, W) for one view): cases, their views and maps.
        labels, probabilities: (N,) per case.
        view_names: V labels of the views (e.g. axial, coronal, sagittal).

    Returns:
        {category: indices drawn}.
    """
    images, maps = np.asarray(images), np.asarray(maps)
    if images.ndim == 3:
        images, maps = images[:, None], maps[:, None]
    views = images.shape[1]
    chosen = confident_cases(labels, probabilities, k)
    plt = pyplot()
    figure, axes = plt.subplots(
        len(CATEGORIES), k * views, figsize=(1.5 * k * views, 1.9 * len(CATEGORIES)), squeeze=False
    )
    for row, category in enumerate(CATEGORIES):
        axes[row, 0].set_ylabel(category, fontsize=8)
        for slot in range(k):
            for view in range(views):
                axis = axes[row, slot * views + view]
                axis.set_xticks([]), axis.set_yticks([])
                if slot >= len(chosen[category]):
                    axis.set_frame_on(False)
                    continue
                case = chosen[category][slot]
                axis.imshow(images[case, view], cmap="gray", vmin=0, vmax=1)
                axis.imshow(maps[case, view], cmap="jet", alpha=0.35, vmin=0, vmax=1)
                name = f"{view_names[view]} " if view_names else ""
                if view == 0 or view_names:
                    axis.set_title(f"{name}p={probabilities[case]:.2f}" if view == 0 else name, fontsize=7)
    figure.suptitle(title or "Grad-CAM of the most confident cases", fontsize=9)
    figure.tight_layout()
    save_figure(path, figure, dpi=90)
    return chosen


def saliency_gallery(cam, images, labels, probabilities, path, k, title, image_size, view_names=None):
    """Maps of a test set's k most confident TP, FP and FN cases, drawn to `path` (see `transfer.saliency`).

    Args:
        cam: images (n, S, S, 1) -> maps (n, S, S): `transfer.saliency.grad_cam` of a
            fine-tuned classifier, or a linear probe's `saliency`.
        images: (N, V, S, S, 1) or a callable giving those of a list of case indices (to load only those drawn).
        labels, probabilities: (N,) per case.
        image_size: the network's input side (images are resized to it).
    """
    import tensorflow as tf

    from transfer.saliency import confident_cases, gallery

    chosen = np.concatenate(list(confident_cases(labels, probabilities, k).values())).astype(int)
    if not len(chosen):
        return None
    cases = np.asarray(images(chosen) if callable(images) else np.asarray(images)[chosen], dtype=np.float32)
    if cases.ndim == 4:
        cases = cases[:, None]
    n, views = cases.shape[:2]
    flat = cases.reshape(n * views, *cases.shape[2:])
    if flat.shape[1] != image_size:
        flat = tf.image.resize(flat, (image_size, image_size)).numpy()
    maps = cam(flat).reshape(n, views, image_size, image_size)
    gallery(
        path,
        flat[..., 0].reshape(n, views, image_size, image_size),
        maps,
        np.asarray(labels)[chosen],
        np.asarray(probabilities)[chosen],
        k,
        title,
        view_names,
    )
    return path
