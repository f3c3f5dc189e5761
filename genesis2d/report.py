"""Collect downstream runs into the study's results table (thesis Fig. 5.1), with uncertainty.

    python -m genesis2d.report runs/luna16_* runs/mura_* --out runs/report

For every dataset and backbone: the AUC of each initialisation with a 95%
bootstrap interval (resampling series for LUNA16, studies for MURA) and DeLong
tests of genesis against scratch and against ImageNet on the same test cases;
ROC overlays of the initialisations; and, when runs with several
`--train-fraction` values are given, AUC against the share of training labels.
Writes `report.md` and `results.csv`.
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from genesis2d.metrics import bootstrap_auc, delong_test_strata, plot_mean_roc
from preprocessing.atomic import save_figure, write_csv, write_text

INIT_ORDER = ("scratch", "genesis", "imagenet")
COMPARISONS = (("genesis", "scratch"), ("genesis", "imagenet"))


def load_run(folder):
    """A run's identity and test predictions: task, init, backbone, fraction, table (key, y, p, group)."""
    folder = Path(folder)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{folder}: holds no metrics.json (not a finished luna16 or mura run)")
    metrics = json.loads(metrics_path.read_text())
    task = metrics.get("task") or ("luna16" if (folder / "predictions.csv").exists() else "mura")
    if task == "luna16":
        # Each fold has its own model: AUCs are computed per fold and averaged (thesis Fig. 4.12).
        folds = sorted(folder.glob("fold*_subsets*/predictions.csv"))
        if not folds:
            raise FileNotFoundError(f"{folder}: holds no fold*/predictions.csv")
        frame = pd.concat([pd.read_csv(f).assign(fold=f.parent.name) for f in folds], ignore_index=True)
        key = frame["seriesuid"] + ":" + frame[["coordX", "coordY", "coordZ"]].round(3).astype(str).agg(",".join, axis=1)
        table = pd.DataFrame({"key": key, "y": frame["class"], "p": frame["probability"], "group": frame["seriesuid"],
                              "stratum": frame["fold"]})
        metric = "mean AUC of the test folds"
    else:
        frame = pd.read_csv(folder / "predictions_studies.csv")
        table = pd.DataFrame({"key": frame["study"], "y": frame["label"], "p": frame["probability"], "group": frame["study"],
                              "stratum": 0})
        metric = "AUC, studies of valid"
    return {"folder": folder, "task": task, "init": metrics["init"], "backbone": metrics["backbone"],
            "fraction": float(metrics.get("train_fraction", 1.0)), "metric": metric, "table": table}


def _aligned(a, b):
    merged = a["table"].merge(b["table"], on="key", suffixes=("_a", "_b"))
    if len(merged) != len(a["table"]) or (merged["y_a"] != merged["y_b"]).any():
        raise ValueError(f"{a['folder']} and {b['folder']} were not tested on the same cases")
    return merged


def results_table(runs, iterations=1000, seed=0):
    """One row per (dataset, backbone) of the full-label runs."""
    rows = []
    full = [r for r in runs if r["fraction"] == 1.0]
    for (task, backbone), group in pd.DataFrame(full).groupby(["task", "backbone"], sort=True):
        by_init = {r["init"]: r for r in group.to_dict("records")}
        row = {"dataset": task, "backbone": backbone, "metric": group["metric"].iloc[0]}
        for init in INIT_ORDER:
            if init in by_init:
                t = by_init[init]["table"]
                auc, low, high = bootstrap_auc(t["y"], t["p"], t["group"], iterations, seed, strata=t["stratum"])
                row.update({init: auc, f"{init}_ci_low": low, f"{init}_ci_high": high})
        for a, b in COMPARISONS:
            if a in by_init and b in by_init:
                merged = _aligned(by_init[a], by_init[b])
                if (merged["stratum_a"] != merged["stratum_b"]).any():
                    raise ValueError(f"{by_init[a]['folder']} and {by_init[b]['folder']} put the cases in different folds")
                test = delong_test_strata(merged["y_a"], merged["p_a"], merged["p_b"], merged["stratum_a"])
                row.update({f"{a}_vs_{b}_delta": test["auc_a"] - test["auc_b"], f"{a}_vs_{b}_p": test["p_value"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row, init):
    if init not in row or pd.isna(row.get(init)):
        return "not run"
    return f"{row[init]:.3f} [{row[f'{init}_ci_low']:.3f}, {row[f'{init}_ci_high']:.3f}]"


def _test_cell(row, a, b):
    key = f"{a}_vs_{b}_p"
    if key not in row or pd.isna(row.get(key)):
        return "-"
    return f"{row[f'{a}_vs_{b}_delta']:+.3f} (p = {row[key]:.3g})"


def plot_label_efficiency(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame([{"task": r["task"], "backbone": r["backbone"], "init": r["init"], "fraction": r["fraction"],
                           "auc": bootstrap_auc(r["table"]["y"], r["table"]["p"], r["table"]["group"], 0,
                                                strata=r["table"]["stratum"])[0]}
                          for r in runs])
    panels = [(key, g) for key, g in frame.groupby(["task", "backbone"], sort=True) if g["fraction"].nunique() > 1]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, ((task, backbone), group) in zip(axes[0], panels):
        for init in INIT_ORDER:
            line = group[group["init"] == init].sort_values("fraction")
            if len(line):
                axis.plot(line["fraction"] * 100, line["auc"], marker="o", label=init)
        axis.set_xlabel("training labels used (%)")
        axis.set_ylabel("AUC")
        axis.set_title(f"{task} {backbone}")
        axis.legend()
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def build_report(run_dirs, out, iterations=1000, seed=0, note=None):
    """Writes report.md, results.csv and the figures into `out`; returns the results table."""
    out = Path(out)
    runs = [load_run(folder) for folder in run_dirs]
    table = results_table(runs, iterations, seed)
    write_csv(out / "results.csv", table)
    lines = ["# Results", ""]
    if note:
        lines += [note, ""]
    lines += ["| dataset | backbone | metric | scratch | genesis | imagenet | genesis vs scratch | genesis vs imagenet |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.to_dict("records"):
        lines.append(f"| {row['dataset']} | {row['backbone']} | {row['metric']} | {_cell(row, 'scratch')} | "
                     f"{_cell(row, 'genesis')} | {_cell(row, 'imagenet')} | {_test_cell(row, 'genesis', 'scratch')} | "
                     f"{_test_cell(row, 'genesis', 'imagenet')} |")
    lines += ["", f"AUC with a 95% bootstrap interval ({iterations} resamples of series within each fold for LUNA16, "
              "of studies for MURA). The comparison columns give the AUC difference and the two-sided p-value of "
              "DeLong's test on the same test cases (for LUNA16, per fold, the folds' variances combined).", ""]
    for (task, backbone), group in pd.DataFrame([r for r in runs if r["fraction"] == 1.0]).groupby(["task", "backbone"]):
        name = f"roc_{task}_{backbone}.png"
        curves = {r["init"]: [(t["y"], t["p"]) for _, t in r["table"].groupby("stratum")] for r in group.to_dict("records")}
        plot_mean_roc(curves, out / name, title=f"{task} {backbone}: initialisations")
        lines += [f"![ROC {task} {backbone}]({name})", ""]
    if len({r["fraction"] for r in runs}) > 1:
        plot_label_efficiency(runs, out / "label_efficiency.png")
        lines += ["## Label efficiency", "", "AUC against the share of training labels used (`--train-fraction`).", "",
                  "![label efficiency](label_efficiency.png)", ""]
    lines += ["## Runs", ""] + [f"- `{r['folder']}`: {r['task']} {r['backbone']} {r['init']}, "
                                  f"{r['fraction']:.0%} of training labels" for r in runs]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m genesis2d.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished luna16 / mura output folders.")
    parser.add_argument("--out", required=True, help="folder for report.md, results.csv and figures.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples. Default: 1000.")
    parser.add_argument("--seed", type=int, default=0, help="Default: 0.")
    args = parser.parse_args(argv)
    try:
        build_report(args.runs, args.out, args.bootstrap, args.seed)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"report: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
