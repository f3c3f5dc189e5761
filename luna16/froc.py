"""The LUNA16 FROC and CPM of a predictions file (beyond the thesis, which reports AUC only).

    python -m luna16.froc predictions.csv --annotations annotations.csv [--excluded annotations_excluded.csv]

A candidate hits a nodule when it lies within the nodule's radius (half of
`diameter_mm`) of its centre; a nodule counts as found at a threshold when any
candidate hitting it has at least that probability. Candidates that hit no
nodule are false positives, except those within an excluded finding (the
`annotations_excluded.csv` of LUNA16, radius half its diameter, 5 mm when the
diameter is not given), which are ignored. The FROC curve is sensitivity
against false positives per scan; the CPM (competition performance metric) is
the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan,
with a 95% interval from bootstrapping scans. The last printed line is `CPM <value>`.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.atomic import save_figure, write_json
from preprocessing.errors import ImageReadError

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_EXCLUDED_DIAMETER = 10.0


def _points(frame):
    return frame[["coordX", "coordY", "coordZ"]].to_numpy(float)


def match_scan(candidates, nodules, excluded=None):
    """Scores of one scan: (best probability of each nodule or -inf when missed, probabilities of false positives)."""
    probability = candidates["probability"].to_numpy(float)
    points = _points(candidates)
    nodule_scores = np.full(len(nodules), -np.inf)
    hits_any = np.zeros(len(candidates), bool)
    if len(nodules):
        distance = np.linalg.norm(points[:, None, :] - _points(nodules)[None, :, :], axis=-1)
        hits = distance <= nodules["diameter_mm"].to_numpy(float)[None, :] / 2
        hits_any = hits.any(axis=1)
        scores = np.where(hits, probability[:, None], -np.inf)
        nodule_scores = scores.max(axis=0) if len(candidates) else nodule_scores
    ignored = np.zeros(len(candidates), bool)
    if excluded is not None and len(excluded):
        diameter = excluded["diameter_mm"].to_numpy(float)
        radius = np.where(diameter > 0, diameter, DEFAULT_EXCLUDED_DIAMETER) / 2
        distance = np.linalg.norm(points[:, None, :] - _points(excluded)[None, :, :], axis=-1)
        ignored = (distance <= radius[None, :]).any(axis=1)
    return nodule_scores, probability[~hits_any & ~ignored]


def match(predictions, annotations, excluded=None):
    """{seriesuid: (nodule scores, false-positive probabilities)} for every scan with predictions."""
    by_scan = {}
    annotations_by_uid = dict(tuple(annotations.groupby("seriesuid")))
    excluded_by_uid = dict(tuple(excluded.groupby("seriesuid"))) if excluded is not None else {}
    empty = annotations.iloc[0:0]
    for uid, candidates in predictions.groupby("seriesuid"):
        by_scan[uid] = match_scan(candidates, annotations_by_uid.get(uid, empty), excluded_by_uid.get(uid))
    return by_scan


def froc_curve(nodule_scores, fp_scores, n_scans):
    """(false positives per scan, sensitivity) at every threshold, from the strictest down."""
    nodule_scores, fp_scores = np.asarray(nodule_scores, float), np.asarray(fp_scores, float)
    thresholds = np.unique(np.concatenate([nodule_scores[np.isfinite(nodule_scores)], fp_scores]))[::-1]
    if not len(nodule_scores):
        raise ValueError("there are no nodules to find")
    fp_sorted = np.sort(fp_scores)
    found_sorted = np.sort(nodule_scores)
    fps = (len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")) / n_scans
    sensitivity = (len(found_sorted) - np.searchsorted(found_sorted, thresholds, side="left")) / len(nodule_scores)
    return np.concatenate([[0.0], fps]), np.concatenate([[0.0], sensitivity])


def cpm(nodule_scores, fp_scores, n_scans, rates=FP_RATES):
    """Mean sensitivity at the given false-positive rates (linear interpolation of the FROC curve).

    Beyond the largest false-positive rate reached, the curve stays at its last sensitivity.
    """
    fps, sensitivity = froc_curve(nodule_scores, fp_scores, n_scans)
    at = np.interp(rates, fps, sensitivity)
    return float(np.mean(at)), at


def bootstrap_cpm(by_scan, n_scans, iterations=1000, seed=0):
    """95% interval of the CPM when scans are resampled with replacement."""
    rng = np.random.default_rng(seed)
    uids = list(by_scan)
    extra = max(0, n_scans - len(uids))  # Scans without any prediction add nothing but the denominator.
    values = []
    for _ in range(iterations):
        chosen = rng.integers(0, len(uids) + extra, size=len(uids) + extra)
        chosen = chosen[chosen < len(uids)]
        nodules = [by_scan[uids[i]][0] for i in chosen]
        if not nodules or not sum(len(n) for n in nodules):
            continue
        fps = [by_scan[uids[i]][1] for i in chosen]
        values.append(cpm(np.concatenate(nodules), np.concatenate(fps), len(uids) + extra)[0])
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (np.nan, np.nan)


def evaluate(predictions, annotations, excluded=None, n_scans=None, iterations=1000, seed=0):
    """The FROC evaluation as a dict: cpm, sensitivities at the 7 rates, 95% interval, curve."""
    by_scan = match(predictions, annotations, excluded)
    n_scans = int(n_scans or len(by_scan))
    # Nodules of scans that received no candidate at all are missed as well.
    missing = annotations[~annotations["seriesuid"].isin(by_scan)]
    nodule_scores = np.concatenate([s[0] for s in by_scan.values()] + [np.full(len(missing), -np.inf)])
    fp_scores = np.concatenate([s[1] for s in by_scan.values()])
    value, at = cpm(nodule_scores, fp_scores, n_scans)
    fps, sensitivity = froc_curve(nodule_scores, fp_scores, n_scans)
    low, high = bootstrap_cpm(by_scan, n_scans, iterations, seed) if iterations else (np.nan, np.nan)
    return {"cpm": value, "cpm_ci95": [low, high], "sensitivity_at": dict(zip(map(str, FP_RATES), at.tolist())),
            "nodules": int(len(nodule_scores)), "found_at_any_threshold": int(np.isfinite(nodule_scores).sum()),
            "scans": n_scans, "curve": (fps, sensitivity)}


def plot_froc(result, path, title="FROC"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fps, sensitivity = result["curve"]
    figure, axis = plt.subplots(figsize=(6, 4.2))
    axis.plot(np.maximum(fps, 1e-3), sensitivity, drawstyle="steps-post")
    axis.scatter(FP_RATES, list(result["sensitivity_at"].values()), color="C3", zorder=3,
                 label=f"CPM {result['cpm']:.3f} (95% CI {result['cpm_ci95'][0]:.3f}-{result['cpm_ci95'][1]:.3f})")
    axis.set_xscale("log", base=2)
    axis.set_xlim(1 / 16, 16)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("false positives per scan")
    axis.set_ylabel("sensitivity")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def _read(path, columns, what):
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, f"does not exist ({what})")
    frame = pd.read_csv(path)
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ImageReadError(path, f"lacks columns {sorted(missing)} ({what})")
    return frame


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m luna16.froc", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="CSV with seriesuid, coordX, coordY, coordZ, probability.")
    parser.add_argument("--annotations", required=True, help="LUNA16 annotations.csv (seriesuid, coords, diameter_mm).")
    parser.add_argument("--excluded", help="annotations_excluded.csv: findings whose candidates are ignored.")
    parser.add_argument("--scans", type=int, help="number of scans evaluated. Default: the scans in the predictions.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap iterations for the 95%% CI. Default: 1000.")
    parser.add_argument("--out", help="FROC curve PNG. Default: froc.png beside the predictions.")
    args = parser.parse_args(argv)
    coords = ["seriesuid", "coordX", "coordY", "coordZ"]
    try:
        predictions = _read(args.predictions, coords + ["probability"], "predictions")
        annotations = _read(args.annotations, coords + ["diameter_mm"], "annotations")
        excluded = _read(args.excluded, coords + ["diameter_mm"], "excluded findings") if args.excluded else None
    except ImageReadError as error:
        sys.exit(f"error: {error}")
    annotations = annotations[annotations["seriesuid"].isin(predictions["seriesuid"])] if args.scans is None else annotations
    result = evaluate(predictions, annotations, excluded, args.scans, args.bootstrap)
    out = Path(args.out) if args.out else Path(args.predictions).with_name("froc.png")
    plot_froc(result, out)
    write_json(out.with_suffix(".json"), {k: v for k, v in result.items() if k != "curve"})
    print(f"{result['scans']} scans, {result['nodules']} nodules, {result['found_at_any_threshold']} hit by a candidate")
    for rate, value in result["sensitivity_at"].items():
        print(f"sensitivity at {float(rate):>5.3f} FP/scan: {value:.3f}")
    print(f"95% CI (bootstrap over scans): {result['cpm_ci95'][0]:.4f} - {result['cpm_ci95'][1]:.4f}")
    print(f"FROC curve: {out}")
    print(f"CPM {result['cpm']:.4f}")
    return result


if __name__ == "__main__":
    main()
