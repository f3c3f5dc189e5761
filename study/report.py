"""Collect downstream runs into the study's results table (thesis Fig. 5.1), with honest uncertainty.

    python -m study.report runs/study/luna16_* runs/study/mura_* --out runs/report

Reads only the results contract of each run folder (`transfer.results`), so any
task that writes it appears here. For every task, backbone and level (the first
level the thesis's metric): each initialisation's AUC with a 95% interval from
resampling the level's groups (scans, patients) within folds; the runs of
`--repeats` averaged as the thesis did (and their ensemble only as an extra,
labelled row); the other metrics the level asks for (accuracy, kappa); and paired
tests of genesis against every other initialisation on the same cases: DeLong's
test where cases are independent, its clustered form (Obuchowski 1997) where
several share a group. Adds ROC overlays and, for runs at several
`--train-fraction` values, AUC with its interval against the share of labels.
Writes `report.md` and `results.csv`.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.statistics import bootstrap_auc, paired_auc_test, stratified_metric
from transfer.plots import plot_mean_roc
from transfer.results import ResultsError, read_results
from plumbing.atomic import write_csv, write_text
from plumbing.cli import ArgumentParser
from plumbing.errors import UsageError
from plumbing.figures import pyplot, save_figure

INIT_ORDER = ("scratch", "genesis", "imagenet", "radimagenet")  # Known initialisations first, any others after them.
REFERENCE = "genesis"  # The initialisation compared with every other (fine-tuned with fine-tuned, probe with probe).
PROBE = " probe"  # A linear probe's column is its init followed by this (`Results.arm`).


def reference_of(arm):
    """The column an arm is tested against: genesis fine-tuned, or genesis's probe for a probe."""
    return REFERENCE + PROBE if arm.endswith(PROBE) else REFERENCE
METRIC_NAMES = {"auc": "AUC", "accuracy": "accuracy", "kappa": "Cohen's kappa", "sensitivity": "sensitivity",
                "specificity": "specificity"}


def _inits(runs):
    """The report's columns: fine-tuned inits in INIT_ORDER, any others, then the linear probes in the same order."""
    found = {r.arm for r in runs}
    order = [*INIT_ORDER, *sorted(a for a in found if a not in INIT_ORDER and not a.endswith(PROBE))]
    order += [a + PROBE for a in order]
    return [a for a in order if a in found] + sorted(found - set(order))


def _by_init(group):
    by_init = {}
    for run in group:
        if run.arm in by_init:
            raise ResultsError(run.folder, f"repeats {run.task} {run.backbone} {run.arm} at "
                               f"{run.fraction:.0%} of labels already given by {by_init[run.arm].folder}")
        by_init[run.arm] = run
    return by_init


def _aligned(a, b, level):
    """Both runs' arrays of one level on the same keys, in the same order."""
    keys_a, y_a, p_a, groups, strata_a = a.arrays(level)
    keys_b, y_b, p_b, _, strata_b = b.arrays(level)
    if not np.array_equal(keys_a, keys_b) or not np.array_equal(y_a, y_b):
        raise ResultsError(a.folder, f"and {b.folder} were not tested on the same cases ({level} level)")
    if not np.array_equal(strata_a, strata_b):
        raise ResultsError(a.folder, f"and {b.folder} put the cases in different folds")
    return y_a, p_a, p_b, groups, strata_a


def level_row(task, backbone, level, metric, by_init, inits, iterations, seed):
    """One row of the results table: a level's metric for every initialisation, tests for AUC."""
    name = level["name"]
    row = {"dataset": task, "backbone": backbone, "level": name, "metric": metric,
           "label": f"{METRIC_NAMES[metric]}, {level.get('description', name)}", "test": ""}
    for init in inits:
        if init not in by_init:
            continue
        _, y, p, groups, strata = by_init[init].arrays(name)
        row[f"{init}_runs"] = len(p)
        if metric == "auc":
            value, low, high = bootstrap_auc(y, p, groups, iterations, seed, strata=strata)
            row.update({init: value, f"{init}_ci_low": low, f"{init}_ci_high": high})
            per_run = [bootstrap_auc(y, run, groups, 0, strata=strata)[0] for run in p]
        else:
            value, per_run = stratified_metric(metric, y, p, strata)
            row[init] = value
        row[f"{init}_sd"] = float(np.std(per_run, ddof=1)) if len(per_run) > 1 else np.nan
    if metric == "auc":
        for other in inits:
            reference = reference_of(other)
            if other == reference or other not in by_init or reference not in by_init:
                continue
            y, p_a, p_b, groups, strata = _aligned(by_init[reference], by_init[other], name)
            test = paired_auc_test(y, p_a, p_b, clusters=groups, strata=strata)
            row.update({f"{reference}_vs_{other}_delta": test["auc_a"] - test["auc_b"],
                        f"{reference}_vs_{other}_p": test["p_value"]})
            clusters = f", clusters: {level.get('group', 'group')}s" if test["test"] != "DeLong" else ""
            row["test"] = f"{test['test']}{clusters}" + (", folds combined" if len(np.unique(strata)) > 1 else "")
    return row


def ensemble_row(task, backbone, level, by_init, inits):
    """The AUC of each init's runs' mean probability: an ensemble, not the thesis's average."""
    row = {"dataset": task, "backbone": backbone, "level": level["name"], "metric": "auc_ensemble", "test": "",
           "label": f"AUC of the ensemble (mean probability of the runs), {level.get('description', level['name'])}"}
    for init in inits:
        if init in by_init:
            _, y, p, groups, strata = by_init[init].arrays(level["name"])
            row[init] = bootstrap_auc(y, p.mean(axis=0), groups, 0, strata=strata)[0]
            row[f"{init}_runs"] = len(p)
    return row


def results_table(runs, iterations=1000, seed=0):
    """One row per (task, backbone, level, metric) of the full-label runs."""
    rows = []
    inits = _inits(runs)
    full = [r for r in runs if r.fraction == 1.0]
    for (task, backbone) in sorted({(r.task, r.backbone) for r in full}):
        by_init = _by_init([r for r in full if (r.task, r.backbone) == (task, backbone)])
        levels = next(iter(by_init.values())).levels
        for level in levels:
            for metric in level.get("metrics", ["auc"]):
                rows.append(level_row(task, backbone, level, metric, by_init, inits, iterations, seed))
            if any(r.scores["run"].nunique() > 1 for r in by_init.values()):
                rows.append(ensemble_row(task, backbone, level, by_init, inits))
    return pd.DataFrame(rows)


def _cell(row, init):
    value = row.get(init)
    if value is None or pd.isna(value):
        return "not run"
    text = f"{value:.3f}"
    if not pd.isna(row.get(f"{init}_ci_low", np.nan)):
        text += f" [{row[f'{init}_ci_low']:.3f}, {row[f'{init}_ci_high']:.3f}]"
    if not pd.isna(row.get(f"{init}_sd", np.nan)):
        text += f" (sd {row[f'{init}_sd']:.3f}, {int(row[f'{init}_runs'])} runs)"
    return text


def _test_cell(row, other):
    key = f"{reference_of(other)}_vs_{other}_p"
    if pd.isna(row.get(key, np.nan)):
        return "-"
    return f"{row[f'{reference_of(other)}_vs_{other}_delta']:+.3f} (p = {row[key]:.3g})"


def markdown_table(table, inits):
    others = [i for i in inits if i != reference_of(i) and reference_of(i) in inits]
    header = ["dataset", "backbone", "metric", *inits, *[f"{reference_of(o)} vs {o}" for o in others], "test"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.to_dict("records"):
        cells = [row["dataset"], row["backbone"], row["label"], *[_cell(row, i) for i in inits],
                 *[_test_cell(row, o) for o in others], row.get("test") or "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def label_efficiency(runs, iterations, seed):
    """Headline AUC with its interval for every run, for the label-efficiency figure."""
    rows = []
    for run in runs:
        level = run.levels[0]
        _, y, p, groups, strata = run.arrays(level["name"])
        auc, low, high = bootstrap_auc(y, p, groups, iterations, seed, strata=strata)
        rows.append({"task": run.task, "backbone": run.backbone, "init": run.arm, "fraction": run.fraction,
                     "auc": auc, "ci_low": low, "ci_high": high, "level": level["name"],
                     "label": level.get("description", level["name"])})
    return pd.DataFrame(rows)


def plot_label_efficiency(frame, inits, path):
    """AUC against the share of training labels, with 95% intervals as error bars, one panel per task."""
    plt = pyplot()
    panels = [(key, g) for key, g in frame.groupby(["task", "backbone"], sort=True) if g["fraction"].nunique() > 1]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, ((task, backbone), group) in zip(axes[0], panels):
        for index, init in enumerate(inits):
            line = group[group["init"] == init].sort_values("fraction")
            if len(line):
                x = line["fraction"] * 100 + (index - (len(inits) - 1) / 2) * 0.8  # Side by side, not on top.
                axis.errorbar(x, line["auc"], yerr=[line["auc"] - line["ci_low"], line["ci_high"] - line["auc"]],
                              marker="o", capsize=3, label=init)
        axis.set_xlabel("training labels used (%)")
        axis.set_ylabel("AUC (95% interval)")
        axis.set_title(f"{task} {backbone}: AUC of the {group['level'].iloc[0]}s", fontsize=9)
        axis.legend()
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def build_report(run_dirs, out, iterations=1000, seed=0, note=None):
    """Writes report.md, results.csv and the figures into `out`; returns the results table."""
    out = Path(out)
    runs = [read_results(folder) for folder in run_dirs]
    inits = _inits(runs)
    table = results_table(runs, iterations, seed)
    write_csv(out / "results.csv", table)
    lines = ["# Results", ""] + ([note, ""] if note else [])
    lines += markdown_table(table, inits)
    lines += ["", f"Each number is the mean over training runs of the mean over folds; AUC with a 95% bootstrap "
              f"interval ({iterations} resamples of each level's groups within each fold). The comparison columns "
              f"give the AUC difference of {REFERENCE} against each initialisation on the same test cases (a linear "
              f"probe against {REFERENCE}'s probe: the encoder frozen, a logistic regression on its pooled features), "
              "and the "
              "two-sided p-value of the test named in the last column: DeLong's where the cases are independent, "
              "its clustered form (Obuchowski 1997) where several cases share a group (a scan's candidates, a "
              "patient's images).", ""]
    full = [r for r in runs if r.fraction == 1.0]
    for (task, backbone) in sorted({(r.task, r.backbone) for r in full}):
        group = [r for r in full if (r.task, r.backbone) == (task, backbone)]
        level = group[0].levels[0]
        curves = {}
        for run in group:
            rows = run.level(level["name"])
            curves[run.arm] = [(part["label"], part["probability"]) for _, part in rows.groupby(["stratum", "run"])]
        name = f"roc_{task}_{backbone}.png"
        plot_mean_roc(curves, out / name, title=f"{task} {backbone}: ROC of the {level['name']}s")
        lines += [f"![ROC {task} {backbone}]({name})", ""]
    if len({r.fraction for r in runs}) > 1:
        frame = label_efficiency(runs, iterations, seed)
        write_csv(out / "label_efficiency.csv", frame)
        plot_label_efficiency(frame, inits, out / "label_efficiency.png")
        lines += ["## Label efficiency", "", "Headline AUC against the share of training labels used "
                  "(`--train-fraction`), with 95% bootstrap intervals: where the intervals overlap, the curve's "
                  "ups and downs may be noise.", "", "![label efficiency](label_efficiency.png)", ""]
    lines += ["## Runs", ""] + [f"- `{r.folder}`: {r.task} {r.backbone} {r.arm}, {r.fraction:.0%} of training "
                                  f"labels, {r.scores['run'].nunique()} run(s)" for r in runs]
    galleries = [(r, path) for r in runs if r.fraction == 1.0 for path in sorted(Path(r.folder).glob("**/saliency.png"))]
    if galleries:
        lines += ["", "## Where the classifiers look", "",
                  "Grad-CAM on the encoder's last block for the most confident true positives, false positives and "
                  "false negatives of each test set (`transfer/saliency.py`), one gallery per fold or run:", ""]
        lines += [f"- {r.task} {r.backbone} {r.arm}: [{path.parent.name if path.parent != Path(r.folder) else 'run'}]"
                  f"({os.path.relpath(path, out)})" for r, path in galleries]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return table


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished downstream run folders (each with metrics.json and "
                        "test_scores.csv).")
    parser.add_argument("--out", required=True, help="folder for report.md, results.csv and figures.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples. Default: 1000.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap. Default: 0.")
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        raise UsageError("--bootstrap", f"must be at least 1. Received: {args.bootstrap}")
    return args


def run(args):
    build_report(args.runs, args.out, args.bootstrap, args.seed)
    print(f"report: {Path(args.out) / 'report.md'}")


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
