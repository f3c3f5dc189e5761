"""Collect downstream runs into the study's results table (thesis Fig. 5.1), with honest uncertainty.

    python -m study.report runs/study/cells/* --out runs/report

Reads only the results contract of each run folder (`transfer.results`), so any
task that writes it appears here; the one line naming the runs' CPU comes from their
`run.json` where they have one. For every task, backbone and level (the first
level the thesis's metric): each initialisation's AUC with a 95% interval (the
cluster jackknife over the level's groups, scans or patients, within folds, with a
t reference); the runs of `--repeats` averaged as the thesis did (and their ensemble
only as an extra, labelled row); the other metrics the level asks for (accuracy,
kappa); genesis against every other initialisation on the same cases: the AUC
difference with its 95% interval and p-value (`transfer.statistics.paired_auc_test`
with its defaults: the cluster permutation test from 40 groups with 8 or more a fold,
else a paired t over folds with 5 folds or more, else the cluster jackknife with a
normal reference), the number of groups behind it
(flagged below the size the simulation validated), and each run's difference with
their spread; beside every number the rule that chose its model (metrics.json's
`selection`), and the thesis's value (`study/thesis_results.yaml`, Fig. 5.1 and the
per-fold tables) with the difference wherever a run matches a thesis cell. Adds
ROC overlays and, for runs at several `--train-fraction` values, AUC with its
interval against the share of labels. Writes `report.md` and `results.csv`.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.atomic import write_csv, write_text
from plumbing.cli import count_type
from plumbing.figures import pyplot, save_figure
from plumbing.options import Options, build_parser, check_required, option
from plumbing.runtime import ONEDNN_VARIABLE
from transfer.plots import plot_mean_roc
from transfer.power import observed_detectable
from transfer.results import ResultsError, read_results
from transfer.statistics import auc_interval, bootstrap_auc, paired_auc_test, stratified_auc, stratified_metric

# Known initialisations first, any others after them.
INIT_ORDER = ("scratch", "genesis", "imagenet", "radimagenet", "contrastive", "genesis+contrastive")
REFERENCE = "genesis"  # The initialisation compared with every other (fine-tuned with fine-tuned, probe with probe).
# The arms beyond the thesis (genesis2d/contrastive.py) are also compared with the thesis's baselines.
BEYOND_THESIS = ("contrastive", "genesis+contrastive")
BASELINES = ("scratch", "imagenet")
PROBE = " probe"  # A linear probe's column is its init followed by this (`Results.arm`).


def reference_of(arm):
    """The column an arm is tested against: genesis fine-tuned, or genesis's probe for a probe."""
    return REFERENCE + PROBE if arm.endswith(PROBE) else REFERENCE


def comparisons(inits):
    """The report's paired tests, (a, b) for "a vs b" (the AUC of a minus b's), among the arms in `inits`.

    genesis against every other arm (as the thesis compares), then each arm beyond the thesis
    against scratch and ImageNet; a probe only against probes.
    """
    pairs = [(reference_of(other), other) for other in inits if other != reference_of(other)]
    for arm in inits:
        base, probe = (arm[: -len(PROBE)], PROBE) if arm.endswith(PROBE) else (arm, "")
        if base in BEYOND_THESIS:
            pairs += [(arm, baseline + probe) for baseline in BASELINES]
    return [(a, b) for a, b in pairs if a in inits and b in inits]


# The interval of each AUC: the cluster jackknife on the logit scale with a t reference, which kept 95% intervals'
# coverage at 0.94 or more on tools/simulate_statistics.py's designs where clusters differ, down to 20 clusters
# (README), where the percentile bootstrap of clusters fell to 0.80-0.89 on the first designs.
INTERVALS = ("jackknife", "bootstrap")
DEFAULT_INTERVAL = "jackknife"
# The smallest designs tools/simulate_statistics.py measures: 20 clusters (5 folds x 4 scans; 20 patients without
# folds, about 12 of them holding a positive). Rows on fewer clusters, or on fewer holding a positive or a negative,
# are flagged: the test's false-positive rate and the interval's coverage are unmeasured there.
VALIDATED_CLUSTERS, VALIDATED_SIDE = 20, 10
THESIS_FILE = Path(__file__).with_name("thesis_results.yaml")
SPREAD_SENTENCE = (
    "The p-values and intervals count the sampling of test cases (their clusters) only and treat "
    "each trained model as fixed: they do not cover how much another training run (another seed, "
    "data order or initialisation draw) would move the difference, which the spread of these "
    "per-run differences shows. The paired t over folds takes the spread of the folds' differences as its "
    "variance, so it counts differences between the folds' models as noise, but not another run of a fold."
)
METRIC_NAMES = {
    "auc": "AUC",
    "auc_ensemble": "AUC of the ensemble",
    "accuracy": "accuracy",
    "kappa": "Cohen's kappa",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}


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
            raise ResultsError(
                run.folder,
                f"repeats {run.task} {run.backbone} {run.arm} at "
                f"{run.fraction:.0%} of labels already given by {by_init[run.arm].folder}",
            )
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


def load_thesis(path=THESIS_FILE):
    """The thesis's results (`study/thesis_results.yaml`): {"selection": str, "cells": [mapping, ...]}."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        cells = data["cells"]
        for cell in cells:
            for key in ("task", "backbone", "init", "level", "auc", "source"):
                cell[key]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as error:
        raise ResultsError(path, f"is not a table of thesis cells ({error})") from None
    return data


def _cell_body_parts(cell):
    return tuple(sorted(cell.get("body_parts") or ()))


def thesis_match(thesis, row, by_init):
    """{"thesis": the cell text, "thesis_<init>": value} for the row's runs that match a thesis cell, or why none does.

    A run matches a cell on task, backbone, init, level and body parts, fine-tuned on all
    training labels (the only runs the thesis reports); the thesis's numbers are AUCs.
    """
    cells, task, backbone = thesis["cells"], row["dataset"], row["backbone"]
    if row["metric"] != "auc":
        return {
            "thesis": "the thesis gives AUC only (Fig. 5.1)"
            if row["metric"] != "auc_ensemble"
            else "the thesis averaged runs, no ensemble (4.2.4.4)"
        }
    same_task = [c for c in cells if c["task"] == task]
    if not same_task:
        return {"thesis": f"the thesis has no {task} results"}
    same_backbone = [c for c in same_task if c["backbone"] == backbone]
    if not same_backbone:
        used = " and ".join(sorted({c["backbone"] for c in same_task}))
        return {"thesis": f"none: the thesis's {task} runs used {used}, not {backbone}"}
    readings = thesis.get("readings", {}).get(task, {})
    reading = readings.get(row["level"])  # A level the thesis's cells can be read as (thesis_results.yaml).
    same_level = [c for c in same_backbone if c["level"] == row["level"] or (reading and c["level"] in readings)]
    if not same_level:
        theirs, ours = same_backbone[0]["level"], row["level"]
        return {"thesis": f"none: the thesis's {task} AUC is at the {theirs} level, not the {ours} level"}
    found, parts = {}, set()
    for init, run in by_init.items():
        if run.method != "fine-tune":
            continue
        parts.add(run.body_parts)
        for cell in same_level:
            if cell["init"] == init and _cell_body_parts(cell) == run.body_parts:
                found[init] = cell
    if not found:
        theirs = ", ".join(sorted({" ".join(_cell_body_parts(c)) for c in same_level}))
        ours = ", ".join(sorted(" ".join(p) or "none" for p in parts))
        return {"thesis": f"none: the thesis's {task} cells cover {theirs}; these runs {ours}"}
    texts = []
    for init, cell in found.items():
        ours = row.get(init)
        texts.append(
            f"{init} {cell['auc']:.5g} ({cell['source'].split(';')[0].split(' (')[0]}), ours {ours - cell['auc']:+.3f}"
        )
    notes = [
        f"{task} {backbone} {init}: {cell['source']}" + (f"; {cell['note']}" if cell.get("note") else "")
        for init, cell in found.items()
    ]
    return {
        "thesis": "; ".join(texts) + (f" ({reading})" if reading else "") + " sel. T",
        "thesis_sources": notes,
        **{f"thesis_{i}": c["auc"] for i, c in found.items()},
    }


def thesis_fold_lines(table, runs, thesis):
    """Per fold, the thesis's AUC (Figs. 4.12-4.29) beside each matched run's, in the order of the folds."""
    lines = []
    full = {(r.task, r.backbone, r.arm): r for r in runs if r.fraction == 1.0}
    for row in table.to_dict("records"):
        if row["metric"] != "auc":
            continue
        for cell in thesis["cells"]:
            key = (cell["task"], cell["backbone"], cell["init"])
            if (row["dataset"], row["backbone"], row["level"]) != (*key[:2], cell["level"]) or "folds" not in cell:
                continue
            run = full.get(key)
            if run is None or pd.isna(row.get(f"thesis_{cell['init']}", np.nan)):
                continue
            _, y, p, _, strata = run.arrays(row["level"])
            folds = np.unique(strata)
            if len(folds) != len(cell["folds"]):
                lines.append(
                    f"| {' | '.join(key)} | {len(cell['folds'])} folds in {cell['folds_source']}, "
                    f"{len(folds)} here: not compared | | |"
                )
                continue
            for index, (fold, theirs) in enumerate(zip(folds, cell["folds"]), start=1):
                ours = stratified_auc(y[strata == fold], p[:, strata == fold])
                lines.append(
                    f"| {' | '.join(key)} | {index} (subsets {2 * index - 2}-{2 * index - 1}; ours: {fold}) "
                    f"| {theirs:.4f} ({cell['folds_source']}) | {ours:.4f} | {ours - theirs:+.4f} |"
                )
    if not lines:
        return []
    return [
        "## Beside the thesis, fold by fold",
        "",
        "| task | backbone | init | fold | thesis | ours | difference |",
        "|" + " --- |" * 7,
        *lines,
        "",
    ]


def _auc_interval(y, p, groups, strata, interval, iterations, seed, unit):
    """(auc, low, high, notes) of one arm: the cluster jackknife with a t reference, or the percentile bootstrap."""
    if interval == "bootstrap":
        return (*bootstrap_auc(y, p, groups, iterations, seed, strata=strata), [])
    result = auc_interval(y, p, groups, strata, unit=unit)
    return result["auc"], result["ci_low"], result["ci_high"], result["notes"]


def _count_clusters(groups, strata):
    """Clusters within folds (a group in two folds counts twice: each fold has its own model)."""
    return int(sum(len(np.unique(groups[strata == s])) for s in np.unique(strata)))


def _per_run_differences(y, p_a, p_b, strata):
    """The AUC difference of each training run (runs paired by index), or of each fold where both arms ran once.

    Returns:
        (what, differences): what the entries are ("run" or "fold") and their values.
    """
    runs = max(len(p_a), len(p_b))
    folds = np.unique(strata)
    if runs == 1 and len(folds) == 1:
        return None, []
    if runs > 1:
        a = p_a if len(p_a) == runs else np.repeat(p_a, runs, axis=0)
        b = p_b if len(p_b) == runs else np.repeat(p_b, runs, axis=0)
        return "run", [stratified_auc(y, a[r], strata) - stratified_auc(y, b[r], strata) for r in range(runs)]
    valid = [f for f in folds if len(np.unique(y[strata == f])) == 2]
    return "fold", [
        stratified_auc(y[strata == f], p_a[0, strata == f]) - stratified_auc(y[strata == f], p_b[0, strata == f])
        for f in valid
    ]


def level_row(task, backbone, level, metric, by_init, inits, iterations, seed, interval=DEFAULT_INTERVAL):
    """One row of the results table: a level's metric for every initialisation, tests for AUC."""
    name = level["name"]
    unit = level.get("group", "group")
    row = {
        "dataset": task,
        "backbone": backbone,
        "level": name,
        "metric": metric,
        "label": f"{METRIC_NAMES[metric]}, {level.get('description', name)}",
        "test": "",
        "notes": [],
    }
    for init in inits:
        if init not in by_init:
            continue
        _, y, p, groups, strata = by_init[init].arrays(name)
        row[f"{init}_runs"] = len(p)
        row[f"{init}_selection"] = by_init[init].selection
        row["clusters"] = _count_clusters(groups, strata)
        row["positive_clusters"] = _count_clusters(groups[y == 1], strata[y == 1])
        row["negative_clusters"] = _count_clusters(groups[y == 0], strata[y == 0])
        row["folds"] = int(len(np.unique(strata)))
        row["unit"] = unit
        if metric == "auc":
            value, low, high, notes = _auc_interval(y, p, groups, strata, interval, iterations, seed, unit)
            row.update({init: value, f"{init}_ci_low": low, f"{init}_ci_high": high})
            row["notes"] += [f"{init} interval: {note}" for note in notes]
            per_run = [stratified_auc(y, run, strata) for run in p]
        else:
            value, per_run = stratified_metric(metric, y, p, strata)
            row[init] = value
        row[f"{init}_sd"] = float(np.std(per_run, ddof=1)) if len(per_run) > 1 else np.nan
    if metric == "auc":
        for reference, other in comparisons(inits):
            if other not in by_init or reference not in by_init:
                continue
            y, p_a, p_b, groups, strata = _aligned(by_init[reference], by_init[other], name)
            test = paired_auc_test(y, p_a, p_b, clusters=groups, strata=strata, unit=unit)
            key = f"{reference}_vs_{other}"
            row.update(
                {
                    f"{key}_delta": test["difference"],
                    f"{key}_p": test["p_value"],
                    f"{key}_ci_low": test["ci_low"],
                    f"{key}_ci_high": test["ci_high"],
                    f"{key}_clusters": test["clusters"],
                    f"{key}_df": test["df"],
                    f"{key}_p_how": test["p_how"],
                    f"{key}_detectable": observed_detectable(test["ci_low"], test["ci_high"], test["df"]),
                }
            )
            what, differences = _per_run_differences(y, p_a, p_b, strata)
            if what:
                row[f"{key}_per_{what}"] = differences
            row["notes"] += [f"{reference} vs {other}: {note}" for note in test["notes"]]
            clusters = f", clusters: {unit}s" if test["clusters"] < len(y) else ""
            if test["p_method"] == "folds":  # Its unit is the fold: p-value and interval from the folds' spread.
                row["test"] = f"{test['method']} ({test['folds']} folds; {unit}s within each)"
            else:
                combined = ", folds combined" if len(np.unique(strata)) > 1 else ""
                row["test"] = f"{test['method']}{clusters}{combined}"
    return row


def ensemble_row(task, backbone, level, by_init, inits):
    """The AUC of each init's runs' mean probability: an ensemble, not the thesis's average."""
    row = {
        "dataset": task,
        "backbone": backbone,
        "level": level["name"],
        "metric": "auc_ensemble",
        "test": "",
        "label": f"AUC of the ensemble (mean probability of the runs), {level.get('description', level['name'])}",
        "notes": [],
    }
    for init in inits:
        if init in by_init:
            _, y, p, _, strata = by_init[init].arrays(level["name"])
            row[init] = stratified_auc(y, p.mean(axis=0), strata)
            row[f"{init}_runs"] = len(p)
            row[f"{init}_selection"] = by_init[init].selection
    return row


def results_table(runs, iterations=1000, seed=0, interval=DEFAULT_INTERVAL, thesis=None):
    """One row per (task, backbone, level, metric) of the full-label runs, with the thesis's value where one matches."""
    thesis = load_thesis() if thesis is None else thesis
    rows = []
    inits = _inits(runs)
    full = [r for r in runs if r.fraction == 1.0]
    for task, backbone in sorted({(r.task, r.backbone) for r in full}):
        by_init = _by_init([r for r in full if (r.task, r.backbone) == (task, backbone)])
        levels = next(iter(by_init.values())).levels
        for level in levels:
            for metric in level.get("metrics", ["auc"]):
                row = level_row(task, backbone, level, metric, by_init, inits, iterations, seed, interval)
                rows.append({**row, **thesis_match(thesis, row, by_init)})
            if any(r.scores["run"].nunique() > 1 for r in by_init.values()):
                row = ensemble_row(task, backbone, level, by_init, inits)
                rows.append({**row, **thesis_match(thesis, row, by_init)})
    return pd.DataFrame(rows)


def _cell(row, init, selections):
    value = row.get(init)
    if value is None or pd.isna(value):
        return "not run"
    text = f"{value:.3f}"
    if not pd.isna(row.get(f"{init}_ci_low", np.nan)):
        text += f" [{row[f'{init}_ci_low']:.3f}, {row[f'{init}_ci_high']:.3f}]"
    if not pd.isna(row.get(f"{init}_sd", np.nan)):
        text += f" (sd {row[f'{init}_sd']:.3f}, {int(row[f'{init}_runs'])} runs)"
    return text + f" sel. {selections[row[f'{init}_selection']]}"


# The smallest p-value printed as a number: the tests are calibrated by simulation at alpha 0.05, not in their far
# tails, where a normal reference over 20 clusters would print p = 1e-8 with no more warrant than p = 1e-3.
SMALLEST_P = 0.001


def _p_text(p_value):
    """ "= 0.0123", or "< 0.001" below SMALLEST_P."""
    return f"< {SMALLEST_P:g}" if p_value < SMALLEST_P else f"= {p_value:.3g}"


def _test_cell(row, reference, other):
    key = f"{reference}_vs_{other}"
    if pd.isna(row.get(f"{key}_p", np.nan)):
        return "-"
    df, how = row.get(f"{key}_df", np.nan), row.get(f"{key}_p_how", "")
    if isinstance(how, str) and how:  # A permutation p-value: how it was counted, not a df.
        source = ", exact" if how.startswith("exact") else f", {how.split(' ')[0]} permutations"
    else:
        source = f", {df:.0f} df" if not pd.isna(df) else ""
    return (
        f"{row[f'{key}_delta']:+.3f} [{row[f'{key}_ci_low']:+.3f}, {row[f'{key}_ci_high']:+.3f}] "
        f"(p {_p_text(row[f'{key}_p'])}{source})"
    )


def _clusters_cell(row):
    """The clusters behind the row's numbers, flagged below the smallest size at which their rates were measured."""
    if pd.isna(row.get("clusters", np.nan)):
        return "-"
    count, folds, unit = int(row["clusters"]), int(row["folds"]), row["unit"]
    positive, negative = int(row["positive_clusters"]), int(row["negative_clusters"])
    text = f"{count} {unit}s ({positive} with a positive, {negative} with a negative)"
    text += f" in {folds} folds" if folds > 1 else ""
    if row["metric"] == "auc" and (count < VALIDATED_CLUSTERS or min(positive, negative) < VALIDATED_SIDE):
        text += (
            f"; fewer than {VALIDATED_CLUSTERS}, or {VALIDATED_SIDE} on a side: intervals and p-values not validated"
        )
    return text


def selection_keys(table, inits):
    """{selection rule: its key in the table} in order of appearance: A, B, ..."""
    keys = {}
    for row in table.to_dict("records"):
        for init in inits:
            rule = row.get(f"{init}_selection")
            if isinstance(rule, str) and rule not in keys:
                keys[rule] = chr(ord("A") + len(keys))
    return keys


def markdown_table(table, inits, selections=None):
    selections = selection_keys(table, inits) if selections is None else selections
    pairs = comparisons(inits)
    header = [
        "dataset",
        "backbone",
        "metric",
        *inits,
        *[f"{a} vs {b}" for a, b in pairs],
        "test",
        "clusters",
        "thesis",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.to_dict("records"):
        cells = [
            row["dataset"],
            row["backbone"],
            row["label"],
            *[_cell(row, i, selections) for i in inits],
            *[_test_cell(row, a, b) for a, b in pairs],
            row.get("test") or "-",
            _clusters_cell(row),
            row.get("thesis") or "-",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def spread_lines(table, inits):
    """Per comparison with several runs (or folds as runs): each run's AUC difference and their spread."""
    lines = []
    for row in table.to_dict("records"):
        for reference, other in comparisons(inits):
            key = f"{reference}_vs_{other}"
            for what in ("run", "fold"):
                values = row.get(f"{key}_per_{what}")
                if isinstance(values, list) and values:
                    spread = f", sd {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
                    lines.append(
                        f"| {row['dataset']} | {row['backbone']} | {row['label']} | "
                        f"{reference} vs {other} | {what} | "
                        f"{', '.join(f'{v:+.3f}' for v in values)} | {np.min(values):+.3f} to "
                        f"{np.max(values):+.3f}{spread} | {row[f'{key}_delta']:+.3f} |"
                    )
    if not lines:
        return []
    return [
        "## Run-to-run spread",
        "",
        "The AUC difference of each training run (runs of `--repeats` paired by their index), or of each fold "
        "where each fold is one model, beside the difference the test is about: the p-values do not cover "
        "this spread (above).",
        "",
        "| dataset | backbone | metric | comparison | per | differences | range, spread | tested difference |",
        "|" + " --- |" * 8,
        *lines,
        "",
    ]


def label_efficiency(runs, iterations, seed, interval=DEFAULT_INTERVAL):
    """Headline AUC with its interval for every run, for the label-efficiency figure."""
    rows = []
    for run in runs:
        level = run.levels[0]
        _, y, p, groups, strata = run.arrays(level["name"])
        auc, low, high, _ = _auc_interval(y, p, groups, strata, interval, iterations, seed, level.get("group", "group"))
        rows.append(
            {
                "task": run.task,
                "backbone": run.backbone,
                "init": run.arm,
                "fraction": run.fraction,
                "auc": auc,
                "ci_low": low,
                "ci_high": high,
                "level": level["name"],
                "label": level.get("description", level["name"]),
                "selection": run.selection,
            }
        )
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
                axis.errorbar(
                    x,
                    line["auc"],
                    yerr=[line["auc"] - line["ci_low"], line["ci_high"] - line["auc"]],
                    marker="o",
                    capsize=3,
                    label=init,
                )
        axis.set_xlabel("training labels used (%)")
        axis.set_ylabel("AUC (95% interval)")
        axis.set_title(f"{task} {backbone}: AUC of the {group['level'].iloc[0]}s", fontsize=9)
        axis.legend()
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def _interval_text(interval, iterations):
    if interval == "bootstrap":
        return f"95% percentile bootstrap interval ({iterations} resamples of each level's groups within each fold)"
    return (
        "95% interval from the cluster jackknife (each level's groups left out one at a time within each fold), "
        "taken on the logit of the AUC with a t reference on the folds' Satterthwaite degrees of freedom "
        "(each fold's from the kurtosis of its jackknife values: its groups less one where they spread as a "
        "normal's, fewer where a few groups dominate)"
    )


def cpu_line(folders):
    """One line naming the CPU, vector instruction sets and oneDNN setting the runs ran with (their run.json).

    run.json is not part of the results contract: a run without it, or one written before
    run records named the CPU, reads "not recorded".
    """
    described = {}
    for folder in folders:
        try:
            found = json.loads((Path(folder) / "run.json").read_text())["versions"]["cpu"]
            text = (
                f"{found['model']} ({', '.join(found['isa']) if found['isa'] is not None else 'ISA not known'}), "
                f"{ONEDNN_VARIABLE}={found[ONEDNN_VARIABLE] or 'unset'}"
            )
        except (OSError, ValueError, KeyError, TypeError):
            text = "not recorded"
        described.setdefault(text, []).append(Path(folder).name)
    if len(described) == 1:
        return f"CPU of the runs (their run.json): {next(iter(described))}."
    return (
        "CPUs of the runs (their run.json): " + "; ".join(f"{t} ({', '.join(n)})" for t, n in described.items()) + "."
    )


def _method_lines(interval, iterations):
    """How the table's numbers, intervals and tests are made."""
    return [
        "",
        f"Each number is the mean over training runs of the mean over folds; AUC with a "
        f"{_interval_text(interval, iterations)}. The comparison columns give the AUC difference of "
        f"{REFERENCE} against each initialisation, and of each arm beyond the thesis ({', '.join(BEYOND_THESIS)}) "
        f"against {' and '.join(BASELINES)} where they ran, on the same test cases (a linear probe against the other's "
        "probe: the encoder frozen, a logistic regression on its pooled features) with the 95% interval of "
        "the difference and the two-sided p-value of the test named in the `test` column. Cases that share a "
        "group (a scan's candidates, a patient's images) are not independent, so both come from the groups: "
        "from 40 groups with 8 or more in every fold, the p-value from the cluster permutation test (each "
        "group's ranks exchanged between the two models, within its fold, exactly or over 10,000 seeded "
        "patterns; it assumes the two models' ranks exchangeable within a group when they are equally good) "
        "and the interval from the cluster jackknife's variance (each group left out in turn within its fold) "
        "with a normal reference; with fewer groups a fold and 5 folds or more, the p-value and the interval "
        "from a paired t over the folds' differences (K - 1 df); otherwise both from the jackknife. On "
        "simulated data whose groups differ (tools/simulate_statistics.py) these kept the false-positive rate "
        "within 0.03-0.065 at 20 groups in 5 folds of 4, 20-40 groups without folds, 40 in folds of 8 and 888. "
        f"A p-value below {SMALLEST_P:g} is shown as "
        f"< {SMALLEST_P:g}: the tests are calibrated at 0.05, not in their far tails. Each p-value is for its own "
        "comparison, not adjusted for the others of its row. "
        f"`clusters` gives the groups behind each row's numbers and how many hold a positive and a "
        f"negative; with fewer than {VALIDATED_CLUSTERS} groups, or fewer than {VALIDATED_SIDE} holding a "
        "positive or a negative (below the smallest designs the simulation measured), the row is flagged. "
        + SPREAD_SENTENCE,
        "",
    ]


def _selection_lines(table, thesis, selections):
    """How each number's model was chosen, where the thesis's numbers come from, and the folds left out."""
    lines = ["How each number's model was chosen (`sel.` beside it, from each run's metrics.json):", ""]
    lines += [f"- sel. {key}: {rule}" for rule, key in selections.items()]
    lines += [
        f"- sel. T (the `thesis` column): {thesis['selection'].strip()}; so the thesis's numbers are "
        "optimistic beside a run that chose on held-out training data.",
        "",
    ]
    sources = [
        f"- {n}"
        for row in table.to_dict("records")
        if isinstance(row.get("thesis_sources"), list)
        for n in row["thesis_sources"]
    ]
    if sources:
        lines += [f"Where the `thesis` column's numbers come from (`{THESIS_FILE.name}`):", "", *sources, ""]
    notes = [
        f"- {row['dataset']} {row['backbone']} {row['level']}: {n}"
        for row in table.to_dict("records")
        if row["metric"] == "auc"
        for n in row["notes"]
    ]
    if notes:
        lines += ["Folds left out of a test or an interval:", "", *notes, ""]
    return lines


def _number(value):
    """A table cell as a float: NaN where it holds none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def detectable_lines(table, inits):
    """Each comparison's difference beside the smallest one its test could have detected (`transfer.power`, from
    the comparison's observed standard error), and whether that covers the thesis's own difference."""
    from transfer.power import ALPHA, POWER

    rows = []
    for row in table.to_dict("records"):
        for a, b in comparisons(inits) if row["metric"] == "auc" else ():
            key = f"{a}_vs_{b}"
            if not np.isfinite(row.get(f"{key}_detectable", np.nan)):
                continue
            detectable, difference = row[f"{key}_detectable"], row[f"{key}_delta"]
            theirs = _number(row.get(f"thesis_{a}")) - _number(row.get(f"thesis_{b}"))
            if np.isfinite(theirs):
                seen = "yes" if abs(theirs) >= detectable else "**no**: below what these data detect"
                thesis = f"{theirs:+.4f} | {seen}"
            else:
                thesis = "none | "
            rows.append(
                f"| {row['dataset']} | {row['backbone']} | {row['level']} | {a} vs {b} | {difference:+.4f} "
                f"[{row[f'{key}_ci_low']:+.4f}, {row[f'{key}_ci_high']:+.4f}] | {detectable:.4f} | {thesis} |"
            )
    if not rows:
        return []
    return [
        "## What these data could detect",
        "",
        f"Each comparison's AUC difference beside the smallest difference its test detects with {POWER:.0%} power at "
        f"alpha {ALPHA} on data like these: (q(1 - alpha / 2) + q(power)) times the comparison's standard error, "
        "its interval's half-width over its quantile (`transfer/power.py`). A difference below it that the test "
        "calls not significant is no evidence of no effect: these data could not have seen it. Where the thesis "
        "reports both cells, its own difference is set beside it, and marked where these data could not have "
        "detected it. `python -m study --plan` gives the same figure before any training, simulated at the data's "
        "shape.",
        "",
        "| task | backbone | level | comparison | difference [95% interval] | detectable (80% power) | "
        "thesis's difference | detectable here? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


def thesis_power_lines(tasks, thesis):
    """For each task in `tasks` whose package gives what the thesis's own test data could detect
    (`tools/thesis_power.py`), the thesis's differences beside it."""
    import yaml

    from transfer.tasks import registered

    lines = []
    for name, task in registered().items():
        path = task.thesis_power_file()
        if name not in tasks or path is None or not Path(path).is_file():
            continue
        power = yaml.safe_load(Path(path).read_text())
        cells = [c for c in thesis["cells"] if c["task"] == name and c["level"] == power["level"]]
        rows = []
        for backbone in sorted({c["backbone"] for c in cells}):
            auc = {c["init"]: c["auc"] for c in cells if c["backbone"] == backbone}
            for a, b in comparisons([init for init in INIT_ORDER if init in auc]):
                seen = "yes" if abs(auc[a] - auc[b]) >= power["detectable"] else "**no**"
                rows.append(f"| {name} | {backbone} | {a} vs {b} | {auc[a] - auc[b]:+.4f} | {seen} |")
        lines += [
            f"{name}, on {power['data']}: a difference of {power['detectable']:.4f} or more is detected with "
            f"{power['power']:.0%} power ({power['test']} test, each model's AUC {power['auc']}: "
            f"{power['auc_source']}; `{power['command']}`).",
            "",
            "| task | backbone | comparison | thesis's difference | detectable on its data? |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    if not lines:
        return []
    return ["## What the thesis's own data could detect", "", *lines]


def _figure_lines(runs, out, inits, iterations, seed, interval):
    """The ROC figure of each task and backbone and, with several label fractions, the label-efficiency
    section; the figures are written into `out`."""
    lines = []
    full = [r for r in runs if r.fraction == 1.0]
    for task, backbone in sorted({(r.task, r.backbone) for r in full}):
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
        frame = label_efficiency(runs, iterations, seed, interval)
        write_csv(out / "label_efficiency.csv", frame)
        plot_label_efficiency(frame, inits, out / "label_efficiency.png")
        lines += [
            "## Label efficiency",
            "",
            "Headline AUC against the share of training labels used "
            f"(`--train-fraction`), with its {_interval_text(interval, iterations)}: where the intervals "
            "overlap, the curve's ups and downs may be noise.",
            "",
            "![label efficiency](label_efficiency.png)",
            "",
        ]
    return lines


def _run_lines(runs, out):
    """The runs behind the report, and links to their Grad-CAM galleries."""
    lines = ["## Runs", "", cpu_line(r.folder for r in runs), ""] + [
        f"- `{r.folder}`: {r.task} {r.backbone} {r.arm}, {r.fraction:.0%} of training "
        f"labels, {r.scores['run'].nunique()} run(s), model chosen by: {r.selection}"
        for r in runs
    ]
    galleries = [
        (r, path) for r in runs if r.fraction == 1.0 for path in sorted(Path(r.folder).glob("**/saliency.png"))
    ]
    if galleries:
        lines += [
            "",
            "## Where the classifiers look",
            "",
            "Grad-CAM on the encoder's last block for the most confident true positives, false positives and "
            "false negatives of each test set (`transfer/saliency.py`), one gallery per fold or run:",
            "",
        ]
        lines += [
            f"- {r.task} {r.backbone} {r.arm}: [{path.parent.name if path.parent != Path(r.folder) else 'run'}]"
            f"({os.path.relpath(path, out)})"
            for r, path in galleries
        ]
    return lines


def build_report(run_dirs, out, iterations=1000, seed=0, note=None, interval=DEFAULT_INTERVAL, appendix=()):
    """Writes report.md (`appendix`'s lines at its end), results.csv and the figures into `out`; returns the results
    table."""
    out = Path(out)
    runs = [read_results(folder) for folder in run_dirs]
    inits = _inits(runs)
    thesis = load_thesis()
    table = results_table(runs, iterations, seed, interval, thesis)
    selections = selection_keys(table, inits)
    listed = {
        c: table[c].map(lambda v: "; ".join(v) if isinstance(v, list) else v)
        for c in ("notes", "thesis_sources")
        if c in table
    }
    write_csv(out / "results.csv", table.assign(**listed))
    lines = ["# Results", ""] + ([note, ""] if note else [])
    lines += markdown_table(table, inits, selections)
    lines += _method_lines(interval, iterations)
    lines += _selection_lines(table, thesis, selections)
    lines += thesis_fold_lines(table, runs, thesis)
    lines += spread_lines(table, inits)
    lines += detectable_lines(table, inits)
    lines += thesis_power_lines({r.task for r in runs}, thesis)
    lines += _figure_lines(runs, out, inits, iterations, seed, interval)
    lines += _run_lines(runs, out)
    write_text(out / "report.md", "\n".join([*lines, *appendix]) + "\n")
    return table


REPORT_GROUP = "the report"


@dataclass(frozen=True)
class ReportOptions(Options):
    """What `python -m study.report` takes."""

    runs: list = option(
        (),
        "finished downstream run folders (each with metrics.json and test_scores.csv).",
        flag="runs",
        nargs="+",
        group=REPORT_GROUP,
    )
    out: str = option(None, "folder for report.md, results.csv and figures.", required=True, group=REPORT_GROUP)
    interval: str = option(
        DEFAULT_INTERVAL,
        "how each AUC's 95%% interval is made: the cluster jackknife with a t reference, or the percentile bootstrap "
        "of clusters (too narrow with few clusters).",
        choices=INTERVALS,
        group=REPORT_GROUP,
    )
    bootstrap: int = option(1000, "bootstrap resamples (--interval bootstrap).", type=count_type(1), group=REPORT_GROUP)
    seed: int = option(0, "seed of the bootstrap.", type=int, group=REPORT_GROUP)


def parse_args(argv=None):
    parser = build_parser(ReportOptions, "python -m study.report", __doc__.split("\n\n")[0], config_flag=False)
    return check_required(ReportOptions(**vars(parser.parse_args(argv))))


def run(options):
    build_report(options.runs, options.out, options.bootstrap, options.seed, interval=options.interval)
    print(f"report: {Path(options.out) / 'report.md'}")


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
