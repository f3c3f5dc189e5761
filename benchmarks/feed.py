"""Pretraining pairs from numpy, made by worker processes: the input of a run without TensorFlow.

A `SliceStore` holds normalised slices of any sizes in one flat float32 file
(`pixels.npy`, memory-mapped by every worker, so N workers share one copy) and
their shapes (`shapes.npy`). `pair_batches` yields (distorted, target) batches
of the pretraining input (random 448 crop, resize to 224, every Models Genesis
distortion at its default rate: `preprocessing.geometry`, `genesis2d.transforms`),
batch i drawn with seed (seed, i) whatever worker made it, from a pool of worker
processes that work a few batches ahead. Nothing here imports Keras, JAX or
TensorFlow: the workers start with the `spawn` method, so a parent that holds a
multithreaded JAX runtime is never forked.
"""

import collections
import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from genesis2d.pretrain import DistortionRates
from preprocessing.geometry import CROP_SIZE, IMAGE_SIZE


class SliceStore:
    """Normalised slices of any sizes, written once to a folder and memory-mapped when read."""

    def __init__(self, folder):
        folder = Path(folder)
        self.pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        self.shapes = np.load(folder / "shapes.npy")
        self.offsets = np.concatenate([[0], np.cumsum(self.shapes.prod(axis=1))])

    def __len__(self):
        return len(self.shapes)

    def __getitem__(self, i):
        return np.asarray(self.pixels[self.offsets[i] : self.offsets[i + 1]]).reshape(self.shapes[i])

    @staticmethod
    def write(folder, slices):
        """Writes `slices` (an iterable of (H, W) arrays in [0, 1]) to `folder`; returns the folder."""
        from plumbing.atomic import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        slices = [np.asarray(s, dtype=np.float32) for s in slices]
        for name, array in (
            ("pixels.npy", np.concatenate([s.ravel() for s in slices])),
            ("shapes.npy", np.array([s.shape for s in slices], dtype=np.int64)),
        ):
            with atomic_path(folder / name) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
        return folder


def synthetic_store(folder, count, side, seed=0):
    """`count` slices of side x side (512: real CT) with smooth structure and noise, in [0, 1]."""
    import cv2

    rng = np.random.default_rng(seed)
    slices = []
    for _ in range(count):
        coarse = cv2.resize(rng.random((side // 16, side // 16), dtype=np.float32), (side, side))
        slices.append(np.clip(coarse + rng.normal(0, 0.05, (side, side)).astype(np.float32), 0, 1))
    return SliceStore.write(folder, slices)


def demo_store(folder, split="train"):
    """The `split` slices of the demo pretraining corpus (written on first use), normalised, as a store."""
    from genesis2d.pretrain import demo_manifest
    from preprocessing.pipeline import load_manifest, read_normalized_slices, volume_groups

    frame = load_manifest(demo_manifest(), split)
    slices = [
        s for path, modality, indices in volume_groups(frame) for s in read_normalized_slices(path, modality, indices)
    ]
    return SliceStore.write(folder, slices)


@dataclasses.dataclass(frozen=True)
class BatchRecipe:
    """What one batch of pairs is made of (everything but its index)."""

    folder: str
    batch_size: int
    crop_size: int = CROP_SIZE
    image_size: int = IMAGE_SIZE
    seed: int = 0
    rates: DistortionRates = DistortionRates()


_STORE = {}


def _start_worker():
    import cv2

    cv2.setNumThreads(1)  # One core per worker: the pool's size is the number of cores it uses.


def make_batch(recipe, index):
    """Batch `index` of a recipe: random slices, 448 crop resized to 224, distorted with seed (seed, index)."""
    from genesis2d.transforms import make_pair
    from preprocessing.geometry import crop_and_resize

    store = _STORE.get(recipe.folder) or _STORE.setdefault(recipe.folder, SliceStore(recipe.folder))
    rng = np.random.default_rng([recipe.seed, index])
    chosen = rng.integers(0, len(store), recipe.batch_size)
    images = np.stack([crop_and_resize(store[i], recipe.crop_size, recipe.image_size, rng) for i in chosen])
    distortion_seed = int(rng.integers(2**31))
    return make_pair(images[..., None], distortion_seed, **recipe.rates.make_pair_kwargs())


def pair_batches(recipe, workers, ahead=2):
    """Yields (distorted, target) batches 0, 1, 2, ... made by `workers` processes, `ahead` batches per worker
    in flight. Close the generator (or let it be collected) to stop the workers."""
    # A process pool that raises BrokenProcessPool when a worker dies, where multiprocessing.Pool would wait forever
    # for the dead worker's batch.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
        pending = collections.deque(pool.submit(make_batch, recipe, i) for i in range(workers * ahead))
        index = len(pending)
        try:
            while True:
                batch = pending.popleft().result()
                pending.append(pool.submit(make_batch, recipe, index))
                index += 1
                yield batch
        finally:
            for future in pending:  # A closed stream leaves no batch queued behind it.
                future.cancel()


def pairs_per_second(recipe, workers, batches):
    """Pairs/s of `pair_batches` on `workers` processes, after each worker made its first batch (imports, numba)."""
    import time

    stream = pair_batches(recipe, workers)
    try:
        for _ in range(2 * workers):
            next(stream)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * recipe.batch_size / (time.perf_counter() - start)
    finally:
        stream.close()
