"""The LUNA16 FROC and CPM of a predictions file, as the official evaluation script computes them.

    python -m luna16.froc predictions.csv --annotations annotations.csv --excluded annotations_excluded.csv

Beyond the thesis, which reports AUC only. The rules are those of the LUNA16
script `noduleCADEvaluationLUNA16.py`:

- every scan of the evaluated list counts (`--seriesuids`; by default the
  `subset*/*.mhd` scans beside the annotations file), also scans without any
  prediction, whose nodules are missed; predictions of other scans are ignored;
- a scan keeps at most 100 candidates (`maxNumberOfCADMarks`): those whose
  probability is above the 101st highest, in file order;
- a candidate hits a finding when its squared distance to the centre is
  strictly below the squared radius (half of `diameter_mm`; a diameter below 0
  counts as 10 mm); a nodule's score is the highest probability among the
  candidates that hit it; a candidate that hits an annotated nodule or an
  excluded finding (`annotations_excluded.csv`) is not a false positive;
- the FROC curve is scikit-learn's ROC curve of found nodules against false
  positives, rescaled to sensitivity over all nodules and false positives per
  scan; the CPM is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false
  positives per scan (linear interpolation of that curve).

The 95% interval resamples the evaluated scans with replacement, each with its
nodules and candidates. The last printed line is `CPM <value>`.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.atomic import write_json
from plumbing.cli import count_type
from plumbing.errors import InputError, UsageError
from plumbing.figures import pyplot, save_figure
from plumbing.options import Options, build_parser, check_required, option
from plumbing.tables import read_csv

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_CAD_MARKS = 100  # The script's maxNumberOfCADMarks.
DEFAULT_DIAMETER = 10.0  # mm, for a finding whose diameter is below 0.
COORDS = ["coordX", "coordY", "coordZ"]
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")  # --out is the figure; its numbers go to a .json beside it.


def cap_candidates(candidates, limit=MAX_CAD_MARKS):
    """At most `limit` candidates of one scan, as the script keeps them.

    Those with a probability above the (limit+1)-th highest, in file order; with ties at
    that value, fewer than `limit` are kept.
    """
    if limit <= 0 or len(candidates) <= limit:
        return candidates
    probability = candidates["probability"].to_numpy(float)
    threshold = np.sort(probability)[::-1][limit]
    return candidates[probability > threshold].iloc[:limit]


def _within(points, findings):
    """(candidates, findings) bool: squared distance strictly below the squared radius."""
    diameter = findings["diameter_mm"].to_numpy(float)
    radius_squared = (np.where(diameter < 0, DEFAULT_DIAMETER, diameter) / 2.0) ** 2
    distance_squared = ((points[:, None, :] - findings[COORDS].to_numpy(float)[None, :, :]) ** 2).sum(axis=-1)
    return distance_squared < radius_squared[None, :]


def match_scan(candidates, nodules, excluded=None):
    """One scan: (score of each nodule, -inf when missed; probabilities of its false positives)."""
    probability = candidates["probability"].to_numpy(float)
    points = candidates[COORDS].to_numpy(float)
    nodule_scores = np.full(len(nodules), -np.inf)
    not_false_positive = np.zeros(len(candidates), bool)
    if len(nodules) and len(candidates):
        hits = _within(points, nodules)
        nodule_scores = np.where(hits, probability[:, None], -np.inf).max(axis=0)
        not_false_positive |= hits.any(axis=1)
    if excluded is not None and len(excluded) and len(candidates):
        not_false_positive |= _within(points, excluded).any(axis=1)
    return nodule_scores, probability[~not_false_positive]


def match(predictions, annotations, excluded, seriesuids, limit=MAX_CAD_MARKS):
    """{seriesuid: (nodule scores, false-positive probabilities)} for every evaluated scan."""
    empty_predictions = predictions.iloc[0:0]
    empty_findings = annotations.iloc[0:0]
    predictions_by_uid = dict(tuple(predictions.groupby("seriesuid", sort=False)))
    annotations_by_uid = dict(tuple(annotations.groupby("seriesuid")))
    excluded_by_uid = dict(tuple(excluded.groupby("seriesuid"))) if excluded is not None else {}
    return {
        uid: match_scan(
            cap_candidates(predictions_by_uid.get(uid, empty_predictions), limit),
            annotations_by_uid.get(uid, empty_findings),
            excluded_by_uid.get(uid),
        )
        for uid in seriesuids
    }


def froc_curve(nodule_scores, fp_scores, n_scans):
    """(false positives per scan, sensitivity), as the script's computeFROC.

    Missed nodules (score -inf) count in the sensitivity's denominator only. With no
    nodule found the sensitivity is 0 everywhere (the script gives NaN there).
    """
    from sklearn.metrics import roc_curve

    nodule_scores, fp_scores = np.asarray(nodule_scores, float), np.asarray(fp_scores, float)
    if not len(nodule_scores):
        raise ValueError("there are no nodules to find")
    found = nodule_scores[np.isfinite(nodule_scores)]
    if not len(found):
        return np.array([0.0, len(fp_scores) / n_scans]), np.zeros(2)
    if not len(fp_scores):  # The script's border case: no false positive, every found nodule at 0 FP per scan.
        return np.zeros(2), np.array([0.0, len(found) / len(nodule_scores)])
    labels = np.concatenate([np.ones(len(found)), np.zeros(len(fp_scores))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([found, fp_scores]))
    fps = fpr * len(fp_scores) / n_scans
    return fps, tpr * len(found) / len(nodule_scores)


def cpm(nodule_scores, fp_scores, n_scans, rates=FP_RATES):
    """(CPM, sensitivity at each rate): the mean sensitivity at the given false-positive rates."""
    fps, sensitivity = froc_curve(nodule_scores, fp_scores, n_scans)
    at = np.interp(rates, fps, sensitivity)
    return float(np.mean(at)), at


def _pooled(by_scan, uids):
    nodules = [by_scan[uid][0] for uid in uids]
    fps = [by_scan[uid][1] for uid in uids]
    return np.concatenate(nodules) if nodules else np.empty(0), np.concatenate(fps) if fps else np.empty(0)


def bootstrap_cpm(by_scan, iterations=1000, seed=0, level=0.95):
    """Percentile interval of the CPM when the evaluated scans are resampled with replacement."""
    rng = np.random.default_rng(seed)
    uids = list(by_scan)
    values = []
    for _ in range(iterations):
        chosen = [uids[i] for i in rng.integers(0, len(uids), size=len(uids))]
        nodules, fps = _pooled(by_scan, chosen)
        if len(nodules):
            values.append(cpm(nodules, fps, len(chosen))[0])
    if not values:
        return np.nan, np.nan
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)


def evaluate(predictions, annotations, excluded=None, seriesuids=None, iterations=1000, seed=0, limit=MAX_CAD_MARKS):
    """The FROC evaluation as a dict: cpm, sensitivities at the 7 rates, 95% interval, curve, counts.

    Args:
        predictions: DataFrame with seriesuid, coordX, coordY, coordZ, probability.
        annotations: DataFrame with seriesuid, coordX, coordY, coordZ, diameter_mm.
        excluded: the same for findings whose candidates are ignored, or None.
        seriesuids: the evaluated scans. Defaults to the scans of the predictions.
    """
    seriesuids = list(dict.fromkeys(predictions["seriesuid"] if seriesuids is None else seriesuids))
    by_scan = match(predictions, annotations, excluded, seriesuids, limit)
    nodule_scores, fp_scores = _pooled(by_scan, seriesuids)
    value, at = cpm(nodule_scores, fp_scores, len(seriesuids))
    low, high = bootstrap_cpm(by_scan, iterations, seed) if iterations else (np.nan, np.nan)
    return {
        "cpm": value,
        "cpm_ci95": [low, high],
        "sensitivity_at": dict(zip(map(str, FP_RATES), at.tolist())),
        "nodules": int(len(nodule_scores)),
        "found_at_any_threshold": int(np.isfinite(nodule_scores).sum()),
        "scans": len(seriesuids),
        "curve": froc_curve(nodule_scores, fp_scores, len(seriesuids)),
    }


def plot_froc(result, path, title="FROC"):
    plt = pyplot()
    fps, sensitivity = result["curve"]
    figure, axis = plt.subplots(figsize=(6, 4.2))
    axis.plot(np.maximum(fps, 1e-3), sensitivity)
    axis.scatter(
        FP_RATES,
        list(result["sensitivity_at"].values()),
        color="C3",
        zorder=3,
        label=f"CPM {result['cpm']:.3f} (95% CI {result['cpm_ci95'][0]:.3f}-{result['cpm_ci95'][1]:.3f})",
    )
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


def read_table(path, columns, what):
    """A CSV with the given columns and at least one row, or one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"does not exist ({what})")
    frame = read_csv(path, what, dtype={"seriesuid": str})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(path, f"lacks columns {missing} ({what})")
    if "seriesuid" in frame:  # A space around a seriesuid would silently detach its rows from their scan.
        uids = frame["seriesuid"].fillna("")
        if (uids.str.strip() != uids).any():
            print(
                f"warning: {path}: {int((uids.str.strip() != uids).sum())} seriesuids had spaces around them; "
                "stripped.",
                file=sys.stderr,
            )
        frame["seriesuid"] = uids.str.strip()
    numeric = [c for c in columns if c != "seriesuid"]
    converted = frame[numeric].apply(pd.to_numeric, errors="coerce")
    bad = converted.isna() & frame[numeric].notna()
    if bad.any().any():
        raise InputError(path, f"has {int(bad.any(axis=1).sum())} rows with non-numeric values in {numeric} ({what})")
    frame[numeric] = converted
    return frame


def read_predictions(path):
    frame = read_table(path, ["seriesuid", *COORDS, "probability"], "predictions")
    if frame.empty:
        raise InputError(path, "holds no predictions (header only)")
    finite = np.isfinite(frame[[*COORDS, "probability"]].to_numpy(float)).all(axis=1)
    if not finite.all():
        raise InputError(
            path,
            f"has {int((~finite).sum())} rows whose probability or coordinates are not finite "
            "numbers (NaN or infinite: did training diverge?)",
        )
    probability = frame["probability"].to_numpy(float)
    outside = (probability < 0) | (probability > 1)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InputError(
            path,
            f"has {int(outside.sum())} rows whose probability lies outside [0, 1] (first: line {first + 2}, "
            f"{probability[first]:g}); give probabilities, not scores or logits",
        )
    return frame


def read_findings(path, what):
    """Annotated nodules or excluded findings; a row repeating an earlier one is dropped (it would count twice)."""
    frame = read_table(path, ["seriesuid", *COORDS, "diameter_mm"], what)
    repeated = frame.duplicated(["seriesuid", *COORDS, "diameter_mm"])
    if repeated.any():
        print(
            f"warning: {path}: {int(repeated.sum())} rows repeat an earlier finding exactly; dropped.", file=sys.stderr
        )
    return frame[~repeated].reset_index(drop=True)


def read_seriesuids(path):
    """One seriesuid per line (the script's seriesuids.csv, no header)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist (list of evaluated scans)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(path, f"is not UTF-8 text (byte {error.start}; list of evaluated scans)") from None
    uids = [line.split(",")[0].strip() for line in text.splitlines() if line.strip()]
    if not uids:
        raise InputError(path, "lists no scans")
    return list(dict.fromkeys(uids))


def layout_seriesuids(annotations_path):
    """The scans of the LUNA16 layout beside the annotations file (subset*/*.mhd)."""
    folder = Path(annotations_path).resolve().parent
    uids = sorted(p.stem for p in folder.glob("subset*/*.mhd"))
    if not uids:
        raise InputError(folder, "holds no subset*/*.mhd scans to evaluate; pass --seriesuids FILE")
    return uids


FROC = "the evaluation"


@dataclass(frozen=True)
class FrocOptions(Options):
    """What `python -m luna16.froc` takes."""

    predictions: str = option(
        None, "CSV with seriesuid, coordX, coordY, coordZ, probability.", flag="predictions", group=FROC
    )
    annotations: str = option(
        None, "LUNA16 annotations.csv (seriesuid, coords, diameter_mm).", required=True, group=FROC
    )
    excluded: str = option(
        None, "annotations_excluded.csv: findings whose candidates are ignored.", default_text="none", group=FROC
    )
    seriesuids: str = option(
        None,
        "file of evaluated scans, one seriesuid per line (as the official script takes).",
        default_text="the subset*/*.mhd scans in the annotations file's folder",
        group=FROC,
    )
    max_candidates: int = option(
        MAX_CAD_MARKS,
        "candidates kept per scan, the most probable; 0 keeps all.",
        source="the script's",
        type=count_type(0),
        group=FROC,
    )
    bootstrap: int = option(1000, "bootstrap iterations for the 95%% CI.", type=count_type(1), group=FROC)
    seed: int = option(0, "seed of the bootstrap.", type=int, group=FROC)
    out: str = option(
        None,
        "FROC curve figure (.png, .pdf or .svg; its numbers go to a .json beside it).",
        default_text="froc.png beside the predictions",
        group=FROC,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.out and Path(self.out).suffix.lower() not in FIGURE_SUFFIXES:
            raise UsageError(
                "--out",
                f"names the figure, which must end in {', '.join(FIGURE_SUFFIXES)} (its numbers are "
                f"written to a .json beside it). Received: {self.out}",
            )


def parse_args(argv=None):
    parser = build_parser(FrocOptions, "python -m luna16.froc", __doc__.split("\n\n")[0], config_flag=False)
    return check_required(FrocOptions(**vars(parser.parse_args(argv))))


def run(args):
    predictions = read_predictions(args.predictions)
    annotations = read_findings(args.annotations, "annotations")
    excluded = read_findings(args.excluded, "excluded findings") if args.excluded else None
    seriesuids = read_seriesuids(args.seriesuids) if args.seriesuids else layout_seriesuids(args.annotations)
    evaluated = predictions["seriesuid"].isin(seriesuids)
    if not evaluated.any():
        raise InputError(args.predictions, f"has no prediction for any of the {len(seriesuids)} evaluated scans")
    if not annotations["seriesuid"].isin(seriesuids).any():
        raise InputError(
            args.annotations,
            f"has no nodule in any of the {len(seriesuids)} evaluated scans; the FROC "
            "measures how many nodules are found, so it needs at least one",
        )
    duplicates = int(predictions.duplicated(["seriesuid", *COORDS]).sum())
    if duplicates:
        print(
            f"warning: {args.predictions}: {duplicates} rows repeat a scan and coordinates of an earlier row; "
            "each counts as its own candidate, as in the official script.",
            file=sys.stderr,
        )
    if (~evaluated).any():
        print(
            f"note: {int((~evaluated).sum())} predictions of {predictions.loc[~evaluated, 'seriesuid'].nunique()} "
            "scans outside the evaluated list are ignored.",
            file=sys.stderr,
        )
    without = len(set(seriesuids) - set(predictions["seriesuid"]))
    if without:
        print(
            f"note: {without} of the {len(seriesuids)} evaluated scans have no prediction; their nodules count as "
            "missed.",
            file=sys.stderr,
        )
    result = evaluate(
        predictions[evaluated], annotations, excluded, seriesuids, args.bootstrap, args.seed, args.max_candidates
    )
    out = Path(args.out) if args.out else Path(args.predictions).with_name("froc.png")
    plot_froc(result, out)
    write_json(out.with_suffix(".json"), {k: v for k, v in result.items() if k != "curve"})
    print(
        f"{result['scans']} scans, {result['nodules']} nodules, {result['found_at_any_threshold']} hit by a candidate"
    )
    for rate, value in result["sensitivity_at"].items():
        print(f"sensitivity at {float(rate):>5.3f} FP/scan: {value:.3f}")
    print(f"95% CI (bootstrap over scans): {result['cpm_ci95'][0]:.4f} - {result['cpm_ci95'][1]:.4f}")
    print(f"FROC curve: {out}")
    print(f"CPM {result['cpm']:.4f}")
    return result


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
