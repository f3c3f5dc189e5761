"""MURA-v1.1 as distributed: its csv files, images, and the tf.data input (thesis 4.2.4).

The tree is `MURA-v1.1/{train,valid}/XR_*/patientNNNNN/studyN_{positive,negative}/imageN.png`
with header-less `{split}_image_paths.csv` (one image path per line) and
`{split}_labeled_studies.csv` (study folder, label), paths relative to the folder
that holds `MURA-v1.1`.

Every path the csv files list must lead, once `..` and symlinks are resolved,
into the `MURA-v1.1` folder: an absolute path is accepted when it points there
(as a relative one would), and any path leaving it (`../x`, `/etc/...`, a symlink
out) is refused with one line unless `allow_outside_root=True` (the commands'
`--allow-outside-root`). Labels must be 0 or 1; a row repeating an earlier one is
dropped and counted, a study given both labels is refused.
"""

import os
import sys
from pathlib import Path

import numpy as np

from plumbing.errors import ImageReadError, InputError
from plumbing.tables import read_csv
from preprocessing.split import hold_out_groups

BODY_PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")
IMAGE_SIZE = 224  # Thesis 4.2.4.2.


def mura_root(data):
    """The folder that holds MURA-v1.1 (accepts either it or MURA-v1.1 itself)."""
    data = Path(data)
    if (data / "MURA-v1.1").is_dir():
        return data
    if data.name == "MURA-v1.1" and data.is_dir():
        return data.parent
    raise InputError(data, "holds no MURA-v1.1 folder")


def body_parts_of(value):
    """'all', one name or a list of names -> a tuple of XR_* names (case-insensitive, XR_ optional)."""
    values = [value] if isinstance(value, str) else list(value)
    if any(v.lower() == "all" for v in values):
        return BODY_PARTS
    parts = tuple(v.upper() if v.upper().startswith("XR_") else f"XR_{v.upper()}" for v in values)
    unknown = [p for p in parts if p not in BODY_PARTS]
    if unknown:
        raise ValueError(f"body part must be one of {BODY_PARTS} or 'all'. Received: {unknown}")
    return parts


def body_part_name(text):
    """An argparse `type`: one body part as `body_parts_of` reads it (XR_ optional, any case), or 'all'."""
    import argparse

    try:
        body_parts_of(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(BODY_PARTS)} or all. Received: {text!r}") from None
    return text


def _read_listing(path, names):
    """A header-less MURA csv as strings, or one InputError line."""
    frame = read_csv(path, header=None, names=names, dtype=str, keep_default_na=False)
    if frame.empty:
        raise InputError(path, "is empty")
    return frame.apply(lambda column: column.str.strip())


def _dropped_repeats(frame, path, what):
    repeated = frame.duplicated()
    if repeated.any():
        print(
            f"warning: {path}: {int(repeated.sum())} {what} repeat an earlier row (first: line "
            f"{int(repeated.to_numpy().argmax()) + 1}); dropped.",
            file=sys.stderr,
        )
    return frame[~repeated]


def _located(entries, listing, root, folder, allow_outside_root):
    """Each listed path as an absolute, normalised path (no symlinks resolved), checked to stay inside `folder`."""
    real_folder = folder.resolve()
    located = []
    for number, entry in enumerate(entries, start=1):
        path = Path(os.path.normpath(root / entry))  # An absolute entry stays itself.
        if not allow_outside_root and not path.resolve().is_relative_to(real_folder):
            raise InputError(
                listing,
                f"line {number} lists {entry}, which leads outside {real_folder}; pass "
                "--allow-outside-root to read it anyway",
            )
        located.append(path)
    return located


def read_split(data, split, body_parts=("XR_SHOULDER",), verify=True, allow_outside_root=False):
    """One row per image: path, study, label, body_part, patient. Checks the csvs against the tree.

    Args:
        verify: bool. Decode every image now. Defaults to True.
        allow_outside_root: bool. Accept csv paths that lead outside the MURA-v1.1 folder.
            Defaults to False.

    Raises:
        InputError: a csv is missing, empty, not UTF-8, lists a path leaving MURA-v1.1, has a
            label other than 0 or 1, gives a study both labels or a label that disagrees with
            its folder name, or lists an image that has no labelled study.
        ImageReadError: a listed image is missing or cannot be decoded.
    """
    root = mura_root(data)
    folder = root / "MURA-v1.1"
    images_csv, studies_csv = folder / f"{split}_image_paths.csv", folder / f"{split}_labeled_studies.csv"
    for path in (images_csv, studies_csv):
        if not path.is_file():
            raise InputError(path, "does not exist")
    images = _dropped_repeats(_read_listing(images_csv, ["image"]), images_csv, "image paths")
    studies = _dropped_repeats(_read_listing(studies_csv, ["study", "label"]), studies_csv, "studies")
    not_binary = ~studies["label"].isin(["0", "1"])
    if not_binary.any():
        first = studies[not_binary].iloc[0]
        raise InputError(
            studies_csv,
            f"has {int(not_binary.sum())} labels that are not 0 or 1 (first: study "
            f"{first['study']}, label {first['label']!r})",
        )
    studies["label"] = studies["label"].astype(int)
    studies["where"] = _located(studies["study"], studies_csv, root, folder, allow_outside_root)
    both = studies.duplicated("where", keep=False)
    if both.any():
        raise InputError(
            studies_csv,
            f"gives {int(studies[both]['where'].nunique())} studies both labels (first: "
            f"{studies[both]['study'].iloc[0]})",
        )
    for study, label in studies[["study", "label"]].itertuples(index=False):
        name = study.rstrip("/")
        named = "positive" if name.endswith("_positive") else "negative" if name.endswith("_negative") else None
        if named is not None and int(label) != (named == "positive"):
            raise InputError(studies_csv, f"labels study {study} as {label} but its folder says {named}")
    labels = dict(zip(studies["where"], studies["label"]))
    names = dict(zip(studies["where"], studies["study"]))
    images["where"] = _located(images["image"], images_csv, root, folder, allow_outside_root)
    # XR_*/patientN/studyN_x/imageN.png: read from the end, so an absolute path parses as a relative one.
    images["body_part"] = images["where"].map(lambda p: p.parts[-4] if len(p.parts) >= 4 else "")
    images = images[images["body_part"].isin(body_parts)].copy()
    images["study_where"] = images["where"].map(lambda p: p.parent)
    unlabelled = images[~images["study_where"].isin(labels)]
    if len(unlabelled):
        raise InputError(images_csv, f"lists {unlabelled['image'].iloc[0]} whose study has no label")
    images["label"] = images["study_where"].map(labels).astype(int)
    images["study"] = images["study_where"].map(names).map(lambda s: s if s.endswith("/") else s + "/")
    images["patient"] = images["where"].map(lambda p: p.parts[-3])
    images["path"] = images["where"].map(str)
    for path in images["path"]:
        if not Path(path).is_file():
            raise ImageReadError(path, f"is listed in {images_csv.name} but missing")
    if images.empty:
        raise InputError(images_csv, f"lists no images of {', '.join(body_parts)}")
    if verify:
        check_decodable(images["path"], f"{split} images")
    return images[["path", "study", "label", "body_part", "patient"]].reset_index(drop=True)


def check_decodable(paths, what="images", progress=True):
    """Decodes every image (threads, with a progress bar); the first that fails stops with its one-line error.

    Done when the split is read, so a cut or empty PNG is named before training rather
    than failing inside TensorFlow after it.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from preprocessing.readers import read_image

    def check(path):
        try:
            read_image(path)
            return None
        except ImageReadError as error:
            return error

    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        errors = [
            e
            for e in tqdm(
                pool.map(check, paths),
                total=len(paths),
                desc=f"checking {what}",
                unit="image",
                disable=not progress,
                leave=False,
            )
            if e is not None
        ]
    if errors:
        first = errors[0]
        raise ImageReadError(
            first.path, first.problem + (f" ({len(errors) - 1} more images fail too)" if len(errors) > 1 else "")
        )


def split_patients(frame, fraction, rng, minimum=0):
    """(rest, held out): about `fraction` of the patients held out, whole (see `hold_out_groups`)."""
    mask = frame["patient"].isin(hold_out_groups(frame["patient"], fraction, rng, minimum))
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def load_image(path, image_size=IMAGE_SIZE):
    """A tf graph: PNG/JPEG -> grayscale, zero-padded to square when a side is below 224, resized, /255."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=1, expand_animations=False, dtype=tf.uint8)
    shape = tf.shape(image)
    side = tf.maximum(shape[0], shape[1])

    def pad_square():
        # An image under 224 px on a side is zero-padded to a square, as thesis 3.1.10 did for the MURA images of
        # its pretraining corpus (4.2.4.3 says only "changed to (224,224)"); every other image is resized to
        # 224x224 without keeping its aspect ratio (docs/deviations.md).
        return tf.image.pad_to_bounding_box(image, (side - shape[0]) // 2, (side - shape[1]) // 2, side, side)

    image = tf.cond(tf.minimum(shape[0], shape[1]) < IMAGE_SIZE, pad_square, lambda: image)
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True)
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def augmentation(seed):
    """Thesis 4.2.4.2: rotation 20 degrees, zoom 0.9-1.1, horizontal and vertical flips; seeded."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomRotation(20 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 1),
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 2),
        ],
        name="augmentation",
    )


def make_dataset(frame, batch_size, image_size=IMAGE_SIZE, training=False, seed=0, balanced=False):
    """(image, label) batches of float32 (B, S, S, 1) in [0, 1]; shuffled and augmented when training.

    With `balanced` (training only), an endless stream that draws each image from the
    positive or the negative images with equal probability, as the thesis's class-balanced
    offline-augmented set (4.2.4.2); otherwise one pass over the frame.
    """
    import tensorflow as tf

    from preprocessing.pipeline import ordered

    def images(part, shuffle_seed):
        dataset = tf.data.Dataset.from_tensor_slices((part["path"].to_numpy(str), part["label"].to_numpy(np.float32)))
        if training:
            dataset = dataset.shuffle(len(part), seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset

    if training and balanced:
        positive, negative = frame[frame["label"] == 1], frame[frame["label"] == 0]
        if positive.empty or negative.empty:
            raise InputError("training split", "needs images of both classes for class-balanced epochs")
        dataset = tf.data.Dataset.sample_from_datasets(
            [images(positive, seed).repeat(), images(negative, seed + 1).repeat()], weights=[0.5, 0.5], seed=seed + 2
        )
    else:
        dataset = images(frame, seed)
    dataset = dataset.map(
        lambda p, y: (load_image(p, image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=ordered(training),
    )
    dataset = dataset.batch(batch_size)
    if training:
        augment = augmentation(seed)
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def study_probabilities(images):
    """Per study: its label and the mean of its images' probabilities (the MURA paper's rule)."""
    return (
        images.groupby("study", sort=True)
        .agg(label=("label", "first"), probability=("probability", "mean"))
        .reset_index()
    )
