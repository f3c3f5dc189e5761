"""A full-scale rehearsal on the CPU: time and peak memory of the data side at the real LUNA16 and corpus counts.

    python benchmarks/scale.py                 # the real counts (~10 min on 2 cores; ~20 GB of sparse disk)
    python benchmarks/scale.py --scale 0.01    # 1% of every count: a minute

The counts, and where they come from:
- LUNA16 (luna16.grand-challenge.org/Data): 888 scans in ten subsets of 89, 89,
  89, 89, 89, 89, 89, 89, 88 and 88; candidates_V2.csv has 754,975 candidates, of
  which 1,557 are nodules (thesis 4.2.1.2: "753418 : 1157" negatives to positives,
  the 1157 a slip for 1557, since 754,975 - 753,418 = 1,557), on the 601 scans
  that annotations.csv gives nodules. No copy of candidates_V2.csv is here, so the
  candidates per scan are drawn from a log-normal of mean 850 (754,975 / 888) and
  coefficient of variation 0.6 (an assumption: a few scans with thousands, most
  with a few hundred), rounded to sum to the exact total.
- Pretraining corpus (thesis 3.2, Fig. 3.2): 155,105 CT, 167,179 MR and 134,720
  X-ray slices (457,004), over 17 datasets; CT and MR come as volumes of ~100
  sampled slices, X-ray one image per file.

Steps, each in its own process, whose peak resident memory (the sum over it and
its worker processes, sampled every 50 ms) is reported against the 8 GB of a
16 GB workstation:
1. write the LUNA16 tree: 888 small scans (`--scan-shape`, int16 .mhd/.raw) and candidates_V2.csv;
2. extract the first `--extract-scans` scans of subset0 with `luna16.data.extract_subsets`
   on 1 and then 2 worker processes: seconds per scan, candidates/s, the 2-core
   speed-up, and the whole extraction projected from them (at 64 px, every
   candidate costs its three views whatever the scan's size, so small scans time
   it faithfully; the full extraction would take hours on this CPU);
3. the full-count patch files (sparse files of the exact shapes extraction writes:
   memory depends on the bytes touched, not on their values);
4. one fold's training and validation arrays (`training_arrays`, `evaluation_arrays`);
5. the test fold predicted by a stand-in Keras model from `evaluation_batches`
   (streamed), and, for comparison, the test fold's images as one array
   (`evaluation_arrays`, what a non-streamed prediction starts from);
6. a pretraining manifest of the corpus's counts: the rows, the 90/5/5 patient
   split and its leak check, the CSV written and read back, the volume groups.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SUBSET_SCANS = (89, 89, 89, 89, 89, 89, 89, 89, 88, 88)  # 888 scans.
CANDIDATES = 754_975
POSITIVES = 1_557
SCANS_WITH_NODULES = 601
CANDIDATES_CV = 0.6  # Assumed spread of candidates per scan (see above).
CORPUS = {"CT": 155_105, "MR": 167_179, "XR": 134_720}  # Thesis Fig. 3.2.
DATASETS = {"CT": 8, "MR": 5, "XR": 4}  # 17 datasets (thesis Fig. 3.1).
SLICES_PER_VOLUME = {"CT": 100, "MR": 100, "XR": 1}
TARGET_GB = 8.0
GB = 1e9


# --------------------------------------------------------------------------- measuring a step


def tree_rss(pid):
    """(resident bytes, anonymous resident bytes) of a process and all its descendants (from /proc).

    Anonymous memory is what the processes allocated; the rest of the resident size is mostly
    pages of memory-mapped files, which the kernel can drop and read again when memory is short.
    """
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, anonymous, todo = 0, 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssAnon")))
            total += int(fields["VmRSS"].split()[0]) * 1024
            anonymous += int(fields["RssAnon"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            pass
    return total, anonymous


def run_step(name, **options):
    """Runs `--step name` in a child process: (its JSON result, peak (resident, anonymous) bytes of its process tree,
    seconds)."""
    command = [sys.executable, __file__, "--step", name, "--options", json.dumps(options)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT)
        peak = (0, 0)
        while child.poll() is None:
            peak = tuple(max(a, b) for a, b in zip(peak, tree_rss(child.pid)))
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if child.returncode:
            raise SystemExit(f"benchmarks/scale.py: step {name} failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    # The child's own high-water mark too (covers a peak shorter than the sampling period).
    peak = (max(peak[0], result.pop("maxrss_kib", 0) * 1024), peak[1])
    return result, peak, seconds


# --------------------------------------------------------------------------- the steps (run in the child)


def candidates_per_scan(scans, total, rng):
    """Log-normal counts of mean total/scans and coefficient of variation CANDIDATES_CV, at least 1, summing to
    total."""
    sigma = np.sqrt(np.log(1 + CANDIDATES_CV**2))
    draw = rng.lognormal(-(sigma**2) / 2, sigma, scans)
    counts = np.maximum(1, np.floor(draw / draw.sum() * total)).astype(np.int64)
    counts[np.argsort(-draw)[: total - counts.sum()]] += 1 if total > counts.sum() else 0
    while counts.sum() > total:  # Only when many scans were lifted to 1.
        counts[np.argmax(counts)] -= counts.sum() - total
    return counts


def step_write_tree(root, scale, scan_shape, seed=0):
    """The LUNA16 tree at `scale` of the real counts: scans of `scan_shape` and candidates_V2.csv."""
    import pandas as pd

    from luna16.patches import voxel_to_world
    from preprocessing.demo import write_itk

    rng = np.random.default_rng(seed)
    root = Path(root)
    subset_scans = [max(1, round(n * scale)) for n in SUBSET_SCANS]
    scans = sum(subset_scans)
    counts = candidates_per_scan(scans, max(scans, round(CANDIDATES * scale)), rng)
    with_nodules = rng.choice(scans, max(1, round(SCANS_WITH_NODULES * scale)), replace=False)
    positives = np.zeros(scans, np.int64)
    np.add.at(positives, rng.choice(with_nodules, max(1, round(POSITIVES * scale))), 1)
    positives = np.minimum(positives, counts)
    spacing, origin = (0.7, 0.7, 2.0), (-150.0, -160.0, -300.0)
    volume = rng.integers(-1000, 400, size=scan_shape, dtype=np.int16)  # One volume, written under every name.
    tables, scan = [], 0
    for subset, n in enumerate(subset_scans):
        for _ in range(n):
            uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{scan:012d}"
            write_itk(root / f"subset{subset}" / f"{uid}.mhd", volume, spacing, origin)
            zyx = rng.uniform(0.05, 0.95, size=(counts[scan], 3)) * np.array(scan_shape)
            xyz = voxel_to_world(zyx, origin, spacing)
            label = np.zeros(counts[scan], np.int64)
            label[: positives[scan]] = 1
            tables.append(
                pd.DataFrame(
                    {"seriesuid": uid, "coordX": xyz[:, 0], "coordY": xyz[:, 1], "coordZ": xyz[:, 2], "class": label}
                )
            )
            scan += 1
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(root / "candidates_V2.csv", index=False)
    return {
        "scans": scans,
        "candidates": len(table),
        "positives": int(table["class"].sum()),
        "largest_scan": int(counts.max()),
        "median_scan": float(np.median(counts)),
    }


def step_extract(root, out, scans, workers, patch_size):
    """Extraction of the first `scans` scans of subset0 (a tree of their own), on `workers` processes."""
    import pandas as pd

    from luna16.data import extract_subsets

    root, sample = Path(root), Path(out) / "tree"
    (sample / "subset0").mkdir(parents=True, exist_ok=True)
    chosen = sorted((root / "subset0").glob("*.mhd"))[:scans]
    for path in chosen:
        for suffix in (".mhd", ".raw"):
            target = sample / "subset0" / (path.stem + suffix)
            if not target.exists():
                os.link(path.with_suffix(suffix), target)  # Hard links: a symlink out of the tree is refused.
    candidates = pd.read_csv(root / "candidates_V2.csv")
    candidates[candidates["seriesuid"].isin({p.stem for p in chosen})].to_csv(sample / "candidates_V2.csv", index=False)
    start = time.perf_counter()
    counts = extract_subsets(sample, Path(out) / "patches", size=patch_size, progress=False, workers=workers)
    seconds = time.perf_counter() - start
    cpu = sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    return {"seconds": seconds, "cpu_seconds": cpu, "scans": len(chosen), "candidates": sum(counts.values())}


def step_patch_tree(root, out, patch_size, positive_copies=8):
    """The files `extract_subsets` writes, at the tree's counts, as sparse files (values never touched)."""
    import pandas as pd

    from luna16.data import SUBSETS

    candidates = pd.read_csv(Path(root) / "candidates_V2.csv", dtype={"seriesuid": str})
    subset_of = {p.stem: int(p.parent.name[6:]) for p in Path(root).glob("subset*/*.mhd")}
    candidates["subset"] = candidates["seriesuid"].map(subset_of)
    total_bytes = 0
    for subset in SUBSETS:
        folder = Path(out) / f"subset{subset}"
        folder.mkdir(parents=True, exist_ok=True)
        table = candidates[candidates["subset"] == subset].drop(columns="subset").reset_index(drop=True)
        positives = np.flatnonzero(table["class"].to_numpy() == 1)
        rows = np.repeat(positives, positive_copies - 1)
        for name, count in (("patches.npy", len(table)), ("augmented.npy", len(rows))):
            array = np.lib.format.open_memmap(
                folder / name, mode="w+", dtype=np.float16, shape=(count, 3, patch_size, patch_size)
            )
            total_bytes += array.nbytes
            del array
        table.to_csv(folder / "candidates.csv", index=False)
        pd.DataFrame({"candidate": rows}).to_csv(folder / "augmented.csv", index=False)
        (folder / "done.json").write_text(json.dumps({"candidates": len(table), "dropped_candidates": 0}))
    return {"gb": total_bytes / GB}


def step_fold_arrays(patches, negative_fraction=0.1, validation_fraction=0.1, with_test_array=False):
    """Fold 1's training and validation arrays (test subsets 0 and 1), and optionally its test array."""
    from luna16.data import FOLD_PAIRS, Subset, evaluation_arrays, fold_subsets, training_arrays, validation_series

    rng = np.random.default_rng(0)
    train_ids, test_ids = fold_subsets(FOLD_PAIRS[0])
    train = [Subset(Path(patches) / f"subset{s}") for s in train_ids]
    start = time.perf_counter()
    held_out = validation_series(train, validation_fraction, rng)
    x_train, y_train, _ = training_arrays(train, held_out, negative_fraction, rng, with_series=True)
    x_val, y_val, _ = evaluation_arrays(train, held_out)
    found = {
        "train_views": len(y_train),
        "train_gb": x_train.nbytes / GB,
        "val_views": len(y_val),
        "val_gb": x_val.nbytes / GB,
    }
    if with_test_array:
        x_test, y_test, _ = evaluation_arrays([Subset(Path(patches) / f"subset{s}") for s in test_ids])
        found.update(test_views=len(y_test), test_gb=x_test.nbytes / GB)
    return {**found, "seconds": time.perf_counter() - start}


def step_predict(patches, batch_size, image_size):
    """Fold 1's test subsets predicted from `evaluation_batches` by a stand-in Keras model (float32 inside)."""
    import keras

    from luna16.data import FOLD_PAIRS, Subset, evaluation_batches, evaluation_labels, fold_subsets

    test = [Subset(Path(patches) / f"subset{s}") for s in fold_subsets(FOLD_PAIRS[0])[1]]
    labels, table = evaluation_labels(test)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Resizing(image_size, image_size)(inputs)
    x = keras.layers.Conv2D(4, 8, strides=8, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    start = time.perf_counter()
    probabilities = np.concatenate(
        [
            np.asarray(model.predict_on_batch(batch.astype(np.float32))).ravel()
            for batch in evaluation_batches(test, batch_size=batch_size)
        ]
    )
    assert len(probabilities) == len(labels) == 3 * len(table)
    return {
        "views": len(probabilities),
        "seconds": time.perf_counter() - start,
        "float32_gb": len(probabilities) * test[0].patches.shape[-1] ** 2 * 4 / GB,
    }


def corpus_frame(scale, rng):
    """Manifest rows at `scale` of the thesis's corpus: dataset, modality, patient, file, slice."""
    import pandas as pd

    frames = []
    for modality, total in CORPUS.items():
        total = max(DATASETS[modality], round(total * scale))
        per_dataset = np.full(DATASETS[modality], total // DATASETS[modality])
        per_dataset[: total % DATASETS[modality]] += 1
        for d, slices in enumerate(per_dataset):
            per_volume = SLICES_PER_VOLUME[modality]
            volume = np.arange(slices) // per_volume
            patients = rng.integers(0, max(1, volume.max() // 2 + 1), volume.max() + 1)[volume]  # ~2 files a patient.
            frames.append(
                pd.DataFrame(
                    {
                        "dataset": f"{modality}_DATASET_{d}",
                        "modality": modality,
                        "body_part": "BODY",
                        "patient_id": [f"p{p:06d}" for p in patients],
                        "path": [f"/data/{modality}_DATASET_{d}/volume{v:06d}.nii.gz" for v in volume],
                        "slice_index": np.arange(slices) % per_volume,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def step_manifest(out, scale):
    """Rows of the corpus's counts, their patient split and leak check, written, read back and grouped."""
    from plumbing.atomic import write_csv
    from preprocessing.pipeline import load_manifest, volume_groups
    from preprocessing.split import check_no_leak, patient_split

    times = {}
    start = time.perf_counter()
    frame = corpus_frame(scale, np.random.default_rng(0))
    times["rows"] = time.perf_counter() - start
    start = time.perf_counter()
    frame["split"] = patient_split(frame, seed=0)  # As `preprocessing.manifest.build_manifest` does.
    check_no_leak(frame)
    times["split"] = time.perf_counter() - start
    start = time.perf_counter()
    path = Path(out) / "manifest.csv"
    write_csv(path, frame)
    times["write"] = time.perf_counter() - start
    start = time.perf_counter()
    train = load_manifest(path, "train")
    groups = volume_groups(train)
    times["read_and_group"] = time.perf_counter() - start
    return {
        "rows": len(frame),
        "train_rows": len(train),
        "files": len(groups),
        "mb": path.stat().st_size / 1e6,
        **{f"{k}_seconds": v for k, v in times.items()},
    }


STEPS = {
    "write_tree": step_write_tree,
    "extract": step_extract,
    "patch_tree": step_patch_tree,
    "fold_arrays": step_fold_arrays,
    "predict": step_predict,
    "manifest": step_manifest,
}


# --------------------------------------------------------------------------- the report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="share of every real count. Default: 1 (the real counts)."
    )
    parser.add_argument(
        "--scan-shape",
        type=int,
        nargs=3,
        default=[32, 64, 64],
        help="(z, y, x) of each scan, int16. Default: 32 64 64.",
    )
    parser.add_argument(
        "--extract-scans",
        type=int,
        default=16,
        help="scans of subset0 extracted per timing (0: no extraction). Default: 16.",
    )
    parser.add_argument("--patch-size", type=int, default=64, help="Default: 64 (thesis 4.2.1.2).")
    parser.add_argument("--batch-size", type=int, default=765, help="views per predicted batch. Default: 765.")
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="the stand-in model's input side (patches are resized to it). Default: 64.",
    )
    parser.add_argument("--work", help="folder for the trees (default: a temporary folder, removed).")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        result = STEPS[args.step](**json.loads(args.options))
        print(json.dumps({**result, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
        return None
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        return report(Path(args.work), args)
    with tempfile.TemporaryDirectory() as work:
        return report(Path(work), args)


def line(name, peak, seconds, detail):
    resident, anonymous = peak
    verdict = "ok" if resident < TARGET_GB * GB else "OVER"
    print(f"{name:<44} {resident / GB:8.2f} {anonymous / GB:6.2f} {seconds:8.1f}  {verdict:<5} {detail}", flush=True)
    return {
        "step": name,
        "peak_gb": resident / GB,
        "anonymous_gb": anonymous / GB,
        "seconds": seconds,
        "ok": resident < TARGET_GB * GB,
    }


def report(work, args):
    rows = []
    print(
        f"LUNA16 and corpus at {args.scale:g} of the real counts; {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f} at the start); peak memory of each step's processes: resident (RSS) and its "
        "anonymous part (RSS less the pages of memory-mapped files, which the kernel can drop)"
    )
    print(f"{'step':<44} {'RSS GB':>8} {'anon':>6} {'seconds':>8}  {'<8 GB':<5} detail", flush=True)
    tree, peak, seconds = run_step(
        "write_tree", root=str(work / "luna16"), scale=args.scale, scan_shape=args.scan_shape
    )
    rows.append(
        line(
            "1. write the LUNA16 tree",
            peak,
            seconds,
            f"{tree['scans']} scans {tuple(args.scan_shape)}, {tree['candidates']:,} candidates "
            f"({tree['positives']:,} positive; per scan median {tree['median_scan']:.0f}, "
            f"largest {tree['largest_scan']:,})",
        )
    )
    rates = {}
    for workers in (1, 2) if args.extract_scans else ():
        found, peak, seconds = run_step(
            "extract",
            root=str(work / "luna16"),
            out=str(work / f"extract{workers}"),
            scans=args.extract_scans,
            workers=workers,
            patch_size=args.patch_size,
        )
        rates[workers] = found["candidates"] / found["seconds"]
        cpu_rate = found["candidates"] / found["cpu_seconds"]
        rows.append(
            line(
                f"2. extract {found['scans']} scans, {workers} worker{'s' * (workers > 1)}",
                peak,
                seconds,
                f"{found['candidates']:,} candidates: {found['seconds'] / found['scans']:.2f} s/scan, "
                f"{rates[workers]:.0f} candidates/s ({cpu_rate:.0f} per CPU-second)",
            )
        )
        if workers == 1:
            one_core = cpu_rate
    if rates:
        hours = tree["candidates"] / one_core / 3600
        print(
            f"   2-core speed-up {rates[2] / rates[1]:.2f}x (load average now {os.getloadavg()[0]:.1f}); all "
            f"{tree['candidates']:,} candidates: {hours:.1f} CPU-hours, {hours / 16 * 60:.0f} min on 16 free cores"
        )
    found, peak, seconds = run_step(
        "patch_tree", root=str(work / "luna16"), out=str(work / "patches"), patch_size=args.patch_size
    )
    rows.append(
        line("3. the full-count patch files (sparse)", peak, seconds, f"{found['gb']:.1f} GB of float16 patches")
    )
    found, peak, seconds = run_step("fold_arrays", patches=str(work / "patches"))
    rows.append(
        line(
            "4. fold 1: training and validation arrays",
            peak,
            seconds,
            f"training {found['train_views']:,} views ({found['train_gb']:.2f} GB), validation "
            f"{found['val_views']:,} views ({found['val_gb']:.2f} GB), float16",
        )
    )
    found, peak, seconds = run_step(
        "predict", patches=str(work / "patches"), batch_size=args.batch_size, image_size=args.image_size
    )
    rows.append(
        line(
            "5. fold 1: test fold predicted, streamed",
            peak,
            seconds,
            f"{found['views']:,} views in batches of {args.batch_size}; the whole fold at float32 would be "
            f"{found['float32_gb']:.1f} GB",
        )
    )
    found, peak, seconds = run_step("fold_arrays", patches=str(work / "patches"), with_test_array=True)
    rows.append(
        line(
            "   (fold 1 with the test fold as one array)",
            peak,
            seconds,
            f"test {found['test_views']:,} views ({found['test_gb']:.2f} GB float16): not streamed",
        )
    )
    found, peak, seconds = run_step("manifest", out=str(work), scale=args.scale)
    rows.append(
        line(
            "6. pretraining manifest: rows, split, CSV",
            peak,
            seconds,
            f"{found['rows']:,} rows ({found['mb']:.0f} MB), {found['files']:,} training files; "
            f"rows {found['rows_seconds']:.1f} s, split {found['split_seconds']:.1f} s, write "
            f"{found['write_seconds']:.1f} s, read and group {found['read_and_group_seconds']:.1f} s",
        )
    )
    return rows


if __name__ == "__main__":
    main()
