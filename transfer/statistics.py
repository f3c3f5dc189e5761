"""Binary classification metrics and their statistics, written once for every downstream task.

Statistics follow the unit of independence: an AUC's interval resamples whole
groups (scans, patients) within each cross-validation fold, and two models are
compared on the same cases with DeLong's test where cases are independent, or its
clustered form (Obuchowski 1997) where several cases share a group. Scores of
several training runs (repeats) are averaged as metrics, never pooled as an
ensemble: the statistic is the mean over runs of the mean over folds of the AUC.
"""

import numpy as np


def binary_metrics(y_true, probability, threshold=0.5):
    """AUC, accuracy, sensitivity, specificity, Cohen's kappa (and counts) of probabilities against 0/1 labels.

    AUC is NaN when only one class is present (it is undefined there).
    """
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

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
        "kappa": float(cohen_kappa_score(y_true, predicted.astype(int))) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
        "n_positive": int(positives.sum()),
    }


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


def _as_runs(probability):
    """(R, N) float array: one row per training run."""
    probability = np.asarray(probability, dtype=float)
    return probability[None] if probability.ndim == 1 else probability


def auc_components(y_true, probability):
    """DeLong's structural components (fast midrank algorithm of Sun and Xu, 2014).

    Args:
        y_true: (N,) 0/1 labels.
        probability: (N,) scores, or (R, N) scores of R training runs of one model.

    Returns:
        (auc, v10, v01): the AUC (mean over runs), and per positive the share of
        negatives it outranks, per negative the share of positives that outrank it
        (each averaged over runs), so that auc = mean(v10) = mean(v01).
    """
    y_true = np.asarray(y_true).astype(int)
    runs = _as_runs(probability)
    m, n = int((y_true == 1).sum()), int((y_true == 0).sum())
    if m < 1 or n < 1:
        raise ValueError(f"an AUC needs both classes. Received: {m} positive, {n} negative")
    v10, v01 = np.zeros(m), np.zeros(n)
    for scores in runs:
        positive, negative = scores[y_true == 1], scores[y_true == 0]
        tx, ty = _midranks(positive), _midranks(negative)
        tz = _midranks(np.concatenate([positive, negative]))
        v10 += (tz[:m] - tx) / n
        v01 += 1.0 - (tz[m:] - ty) / m
    v10, v01 = v10 / len(runs), v01 / len(runs)
    return float(v10.mean()), v10, v01


def _delong_covariance(v10, v01):
    """2x2 covariance of two AUCs from their components on independent cases (DeLong 1988)."""
    return np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


def _clustered_covariance(v10, v01, positive_cluster, negative_cluster):
    """2x2 covariance of two AUCs when cases cluster (Obuchowski 1997, nonparametric).

    Components are summed per cluster; with I clusters, M positives and N negatives,
    S10 = I/((I-1)M) sum_c (V10_c - m_c auc)(V10_c - m_c auc)', S01 likewise over
    negatives, S11 = I/(I-1) sum_c (V10_c - m_c auc)(V01_c - n_c auc)', and
    cov = S10/M + S01/N + (S11 + S11')/(MN).
    """
    clusters = np.unique(np.concatenate([positive_cluster, negative_cluster]))
    count = len(clusters)
    if count < 2:
        raise ValueError(f"a clustered test needs at least two clusters. Received: {count}")
    m, n = v10.shape[1], v01.shape[1]
    auc = v10.mean(axis=1)
    pos_index = np.searchsorted(clusters, positive_cluster)
    neg_index = np.searchsorted(clusters, negative_cluster)
    sum10, sum01 = np.zeros((2, count)), np.zeros((2, count))
    for k in range(2):
        sum10[k] = np.bincount(pos_index, weights=v10[k], minlength=count)
        sum01[k] = np.bincount(neg_index, weights=v01[k], minlength=count)
    m_c = np.bincount(pos_index, minlength=count)
    n_c = np.bincount(neg_index, minlength=count)
    d10 = sum10 - m_c[None] * auc[:, None]
    d01 = sum01 - n_c[None] * auc[:, None]
    factor = count / (count - 1)
    s10 = factor * d10 @ d10.T / m
    s01 = factor * d01 @ d01.T / n
    s11 = factor * d10 @ d01.T
    return s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def _paired_stratum(y, p_a, p_b, clusters):
    """(auc_a, auc_b, variance of the difference, clustered?) on one stratum's cases."""
    auc_a, v10_a, v01_a = auc_components(y, p_a)
    auc_b, v10_b, v01_b = auc_components(y, p_b)
    v10, v01 = np.stack([v10_a, v10_b]), np.stack([v01_a, v01_b])
    m, n = v10.shape[1], v01.shape[1]
    clustered = clusters is not None and len(np.unique(clusters)) < len(y)
    if clustered:
        covariance = _clustered_covariance(v10, v01, clusters[y == 1], clusters[y == 0])
    else:
        if m < 2 or n < 2:
            raise ValueError(f"DeLong's test needs at least two cases of each class. Received: {m} positive, {n} negative")
        covariance = _delong_covariance(v10, v01)
    return auc_a, auc_b, covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], clustered


def paired_auc_test(y_true, p_a, p_b, clusters=None, strata=None):
    """Two-sided test of two models' AUCs on the same cases.

    DeLong's test when every case is its own unit; when `clusters` puts several cases
    in one group (candidates of a scan, images of a patient), the clustered variance
    of Obuchowski (1997), so that correlated cases are not counted as independent
    evidence. With `strata` (cross-validation folds, each with its own models) the
    statistic is the mean over folds of the AUC difference, with variance
    sum(var_k) / K**2 (the folds' cases are disjoint).

    Args:
        y_true: (N,) 0/1 labels.
        p_a, p_b: (N,) or (R, N) scores of the two models; with R runs, the AUCs are
            the mean over runs.
        clusters: (N,) group of each case, or None for independent cases.
        strata: (N,) fold of each case, or None.

    Returns:
        dict with auc_a, auc_b, z (positive when a is better), the two-sided p_value,
        the variance and `test`: 'DeLong' or 'clustered DeLong (Obuchowski 1997)'.
    """
    y_true = np.asarray(y_true).astype(int)
    p_a, p_b = _as_runs(p_a), _as_runs(p_b)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    clusters = None if clusters is None else np.asarray(clusters)
    parts = []
    for s in np.unique(strata):
        rows = strata == s
        parts.append(_paired_stratum(y_true[rows], p_a[:, rows], p_b[:, rows], None if clusters is None else clusters[rows]))
    k = len(parts)
    result = _z_test(np.mean([p[0] for p in parts]), np.mean([p[1] for p in parts]), sum(p[2] for p in parts) / k**2)
    result["test"] = "clustered DeLong (Obuchowski 1997)" if any(p[3] for p in parts) else "DeLong"
    return result


def delong_test(y_true, p_a, p_b):
    """DeLong's test of two correlated AUCs on the same, independent cases.

    Returns:
        dict with auc_a, auc_b, z (positive when a is better), the two-sided p_value and the variance.
    """
    return paired_auc_test(y_true, p_a, p_b)


def _z_test(auc_a, auc_b, variance):
    from scipy.stats import norm

    difference = auc_a - auc_b
    if variance <= 0:
        z = 0.0 if difference == 0 else np.sign(difference) * np.inf
    else:
        z = difference / np.sqrt(variance)
    return {"auc_a": float(auc_a), "auc_b": float(auc_b), "z": float(z), "p_value": float(2 * norm.sf(abs(z))),
            "variance": float(variance)}


def stratified_auc(y_true, probability, strata=None):
    """Mean over strata (cross-validation folds) of the per-stratum AUC, averaged over runs.

    Args:
        y_true: (N,) labels. probability: (N,) or (R, N). strata: (N,) or None.
    """
    from sklearn.metrics import roc_auc_score

    y_true, runs = np.asarray(y_true), _as_runs(probability)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    return float(np.mean([[roc_auc_score(y_true[strata == s], scores[strata == s]) for s in np.unique(strata)]
                          for scores in runs]))


def stratified_metric(name, y_true, probability, strata=None, threshold=0.5):
    """(mean, per-run values) of a `binary_metrics` metric: per fold, averaged over folds, then over runs."""
    y_true, runs = np.asarray(y_true), _as_runs(probability)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    per_run = [float(np.mean([binary_metrics(y_true[strata == s], scores[strata == s], threshold)[name]
                              for s in np.unique(strata)])) for scores in runs]
    return float(np.mean(per_run)), per_run


def bootstrap_auc(y_true, probability, groups, iterations=1000, seed=0, level=0.95, strata=None):
    """AUC with a percentile interval from resampling whole groups (series, patients) with replacement.

    With `strata` (the cross-validation fold of each case), the statistic is the mean of the
    per-fold AUCs and groups are resampled within their fold. With (R, N) scores of R
    runs, the statistic is the mean over runs, each resample taking the same cases in every run.
    """
    y_true, runs, groups = np.asarray(y_true).astype(int), _as_runs(probability), np.asarray(groups)
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
            values.append(stratified_auc(y_true[rows], runs[:, rows], strata[rows]))
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if values else (np.nan, np.nan)
    return stratified_auc(y_true, runs, strata), float(low), float(high)
