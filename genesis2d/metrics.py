"""Binary classification metrics and plots, written once for every downstream task."""

import numpy as np

from preprocessing.atomic import save_figure


def binary_metrics(y_true, probability, threshold=0.5):
    """AUC, accuracy, sensitivity, specificity (and counts) of probabilities against 0/1 labels.

    AUC is NaN when only one class is present (it is undefined there).
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    probability = np.asarray(probability, dtype=float)
    predicted = probability >= threshold
    positives, negatives = y_true == 1, y_true == 0
    tp, tn = int(np.sum(predicted & positives)), int(np.sum(~predicted & negatives))
    both = positives.any() and negatives.any()
    return {
        "auc": float(roc_auc_score(y_true, probability)) if both else float("nan"),
        "accuracy": float(np.mean(predicted == positives)) if len(y_true) else float("nan"),
        "sensitivity": tp / int(positives.sum()) if positives.any() else float("nan"),
        "specificity": tn / int(negatives.sum()) if negatives.any() else float("nan"),
        "n": int(len(y_true)),
        "n_positive": int(positives.sum()),
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish_roc(figure, axis, title, path):
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def plot_roc(curves, path, title="ROC"):
    """One PNG with a ROC curve per entry of `curves`: {label: (y_true, probability)}."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, (y_true, probability) in curves.items():
        if len(np.unique(y_true)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true, probability)
        axis.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y_true, probability):.3f})")
    _finish_roc(figure, axis, title, path)


def plot_mean_roc(curves, path, title="ROC, mean over folds"):
    """One ROC per entry, averaged vertically over its folds: {label: [(y_true, probability) per fold]}.

    Each fold has its own model, so its scores are not pooled with the others'; the legend
    gives the mean of the per-fold AUCs.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    grid = np.linspace(0, 1, 201)
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, folds in curves.items():
        tprs = [np.interp(grid, *roc_curve(y, p)[:2]) for y, p in folds]
        auc = np.mean([roc_auc_score(y, p) for y, p in folds])
        detail = f"mean AUC {auc:.3f}, {len(folds)} folds" if len(folds) > 1 else f"AUC {auc:.3f}"
        axis.plot(grid, np.mean(tprs, axis=0), label=f"{label} ({detail})")
    _finish_roc(figure, axis, title, path)


def plot_histories(histories, path, title="loss"):
    """Training and validation loss per epoch, one line pair per entry: {label: DataFrame}."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, (label, history) in enumerate(histories.items()):
        color = f"C{index % 10}"
        epochs = np.arange(1, len(history) + 1)
        axis.plot(epochs, history["loss"], color=color, label=f"{label} train")
        if "val_loss" in history:
            axis.plot(epochs, history["val_loss"], color=color, linestyle="--", label=f"{label} validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("binary cross-entropy")
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(path, figure, dpi=110)


def _midranks(values):
    """Ranks 1..n with ties given their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and ordered[end + 1] == ordered[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def delong_test(y_true, p_a, p_b):
    """DeLong's test of two correlated AUCs on the same cases (fast algorithm of Sun and Xu, 2014).

    Args:
        y_true: 0/1 labels.
        p_a, p_b: the two models' scores for the same cases.

    Returns:
        dict with auc_a, auc_b, z (positive when a is better) and the two-sided p_value.
    """
    y_true = np.asarray(y_true).astype(int)
    scores = np.stack([np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)])
    positive, negative = scores[:, y_true == 1], scores[:, y_true == 0]
    m, n = positive.shape[1], negative.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least two cases of each class. Received: {m} positive, {n} negative")
    v10, v01, aucs = np.empty((2, m)), np.empty((2, n)), np.empty(2)
    for k in range(2):
        tx, ty = _midranks(positive[k]), _midranks(negative[k])
        tz = _midranks(np.concatenate([positive[k], negative[k]]))
        aucs[k] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[k] = (tz[:m] - tx) / n  # Per positive: share of negatives it outranks.
        v01[k] = 1.0 - (tz[m:] - ty) / m  # Per negative: share of positives that outrank it.
    covariance = np.cov(v10) / m + np.cov(v01) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    return _z_test(aucs[0], aucs[1], variance)


def _z_test(auc_a, auc_b, variance):
    from scipy.stats import norm

    difference = auc_a - auc_b
    if variance <= 0:
        z = 0.0 if difference == 0 else np.sign(difference) * np.inf
    else:
        z = difference / np.sqrt(variance)
    return {"auc_a": float(auc_a), "auc_b": float(auc_b), "z": float(z), "p_value": float(2 * norm.sf(abs(z))),
            "variance": float(variance)}


def delong_test_strata(y_true, p_a, p_b, strata):
    """DeLong's test of the mean over independent strata (cross-validation folds) of per-stratum AUCs.

    Each fold has its own models, so their scores are not comparable across folds; the
    per-fold AUC differences are averaged and their DeLong variances added (the folds'
    test cases are disjoint), var(mean) = sum(var_k) / K**2.
    """
    y_true, p_a, p_b, strata = map(np.asarray, (y_true, p_a, p_b, strata))
    tests = [delong_test(y_true[strata == s], p_a[strata == s], p_b[strata == s]) for s in np.unique(strata)]
    k = len(tests)
    return _z_test(np.mean([t["auc_a"] for t in tests]), np.mean([t["auc_b"] for t in tests]),
                   sum(t["variance"] for t in tests) / k**2)


def stratified_auc(y_true, probability, strata):
    """Mean over strata (cross-validation folds) of the per-stratum AUC."""
    from sklearn.metrics import roc_auc_score

    y_true, probability, strata = np.asarray(y_true), np.asarray(probability), np.asarray(strata)
    return float(np.mean([roc_auc_score(y_true[strata == s], probability[strata == s]) for s in np.unique(strata)]))


def bootstrap_auc(y_true, probability, groups, iterations=1000, seed=0, level=0.95, strata=None):
    """AUC with a percentile interval from resampling whole groups (series, studies) with replacement.

    With `strata` (the cross-validation fold of each case), the statistic is the mean of the
    per-fold AUCs and groups are resampled within their fold.
    """
    y_true, probability, groups = np.asarray(y_true).astype(int), np.asarray(probability, float), np.asarray(groups)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    rng = np.random.default_rng(seed)
    members = {}
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        names, index = np.unique(groups[rows], return_inverse=True)
        members[s] = [rows[index == g] for g in range(len(names))]
    values = []
    for _ in range(iterations):
        rows = np.concatenate([np.concatenate([m[g] for g in rng.integers(0, len(m), size=len(m))])
                               for m in members.values()])
        if all(len(np.unique(y_true[rows][strata[rows] == s])) == 2 for s in members):
            values.append(stratified_auc(y_true[rows], probability[rows], strata[rows]))
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if values else (np.nan, np.nan)
    return stratified_auc(y_true, probability, strata), float(low), float(high)
