"""Binary classification metrics and their statistics, written once for every downstream task.

Statistics follow the unit of independence: cases that share a group (a scan's
candidates, a patient's images) are not independent evidence, so variances are taken
over groups (clusters) within each cross-validation fold. Two models are compared on the
same cases by the test that held on tools/simulate_statistics.py's designs where clusters
differ (`choose_test`): the cluster permutation test where folds hold 8 clusters or more,
a paired t test over folds where five or more folds hold fewer, else the cluster
jackknife's variance with a normal reference. An AUC's interval is the cluster jackknife on
the logit scale with a t reference. The percentile bootstrap of clusters (`bootstrap_auc`)
covers too rarely at 20 clusters. Scores of several
training runs (repeats) are averaged as metrics, never pooled as an ensemble: the
statistic is the mean over runs of the mean over folds of the AUC.

The paired test (`paired_auc_test`).

Cases that share a group (a scan's candidates, a patient's images) are not independent
evidence: the variance is taken over clusters, either DeLong's components summed per
cluster (Obuchowski 1997) or the cluster jackknife; every case its own cluster gives
DeLong's test (or the case jackknife). With `strata` (cross-validation folds, each with
its own models) the statistic is the mean over folds of the AUC difference, with variance
sum(var_k) / K**2 (the folds' cases are disjoint); the t reference takes the Satterthwaite
degrees of freedom of the folds' cluster counts. Or the p-value comes from the cluster
permutation test (after Bandos, Rockette and Gur 2005, extended to clusters): each model's
scores become its midranks within the fold, and the two models' ranks are exchanged for
all cases of a cluster at once, within its fold; the statistic is the mean-of-folds AUC
difference, its distribution every exchange pattern (exact up to EXACT_CLUSTERS
clusters, else PERMUTATIONS seeded patterns). It assumes that under the null the two
models' ranks are exchangeable within each cluster, clusters independent; with few
clusters a fold, ranks of models on different scales are not (see choose_test). The
interval of the difference comes from the variance then. Or, with folds, a paired t test over
the folds: the mean of the folds' differences D_k against sd(D) / sqrt(K) with K - 1
degrees of freedom, p-value and interval alike (`variance` and `reference` unused). As the
other tests, it takes each fold's trained models as fixed and asks about their AUCs on new
cases: the folds' test cases are disjoint, so their D_k are independent, and it assumes them
near normal. A true difference that changes from fold to fold counts in sd(D) as noise (on
the safe side for the fixed models). It is no test of the training recipe: the folds'
training sets overlap, which a t over folds does not cover (Nadeau and Bengio 2003).
A fold without both classes, or whose positives or negatives all sit in one cluster, is
left out of every test, so that all report one difference, and `notes` says so.
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
    from scipy.stats import rankdata

    return rankdata(values, method="average")


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


def _clustered_covariance(v10, v01, positive_cluster, negative_cluster):
    """2x2 covariance of two AUCs when cases cluster (Obuchowski 1997, nonparametric).

    Components are summed per cluster. With M positives in I10 clusters that hold at
    least one positive, N negatives in I01 clusters that hold at least one negative, and
    I clusters in all (Obuchowski's definition, as in DIDSR's doAUCcluster):
    S10 = I10/((I10-1)M) sum_c (V10_c - m_c auc)(V10_c - m_c auc)', S01 likewise with
    I01 over negatives, S11 = I/(I-1) sum_c (V10_c - m_c auc)(V01_c - n_c auc)', and
    cov = S10/M + S01/N + (S11 + S11')/(MN). With every case its own cluster this is
    DeLong's (1988) covariance exactly. Needs I10 >= 2 and I01 >= 2.
    """
    clusters = np.unique(np.concatenate([positive_cluster, negative_cluster]))
    count = len(clusters)
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
    i10, i01 = int((m_c > 0).sum()), int((n_c > 0).sum())
    if i10 < 2 or i01 < 2:
        raise ValueError(
            f"a clustered variance needs two clusters on each side. Received: {i10} with positives, "
            f"{i01} with negatives"
        )
    d10 = sum10 - m_c[None] * auc[:, None]
    d01 = sum01 - n_c[None] * auc[:, None]
    s10 = i10 / (i10 - 1) * d10 @ d10.T / m
    s01 = i01 / (i01 - 1) * d01 @ d01.T / n
    s11 = count / (count - 1) * d10 @ d01.T
    return s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def _fold_jackknife(y_true, runs, clusters):
    """One fold's AUC and its AUC with each cluster left out, from DeLong's components.

    Leaving out cluster c removes the pairs of its positives and of its negatives, so with
    M positives, N negatives, the run-averaged components and W_c the kernel sum over c's
    own positive-negative pairs: AUC(-c) = (M N auc - N sum_c v10 - M sum_c v01 + W_c) /
    ((M - m_c)(N - n_c)), exact without ranking again.

    Returns:
        (auc, leave_out): leave_out has one entry per cluster.
    """
    auc, v10, v01 = auc_components(y_true, runs)
    names, index = np.unique(clusters, return_inverse=True)
    count, positive, negative = len(names), y_true == 1, y_true == 0
    m, n = int(positive.sum()), int(negative.sum())
    m_c = np.bincount(index[positive], minlength=count)
    n_c = np.bincount(index[negative], minlength=count)
    sum10 = np.bincount(index[positive], weights=v10, minlength=count)
    sum01 = np.bincount(index[negative], weights=v01, minlength=count)
    within = np.zeros(count)
    for c in np.flatnonzero((m_c > 0) & (n_c > 0)):
        rows = index == c
        for scores in runs:
            pos, neg = scores[rows & positive], np.sort(scores[rows & negative])
            below = np.searchsorted(neg, pos, side="left")
            within[c] += float(np.sum(below + 0.5 * (np.searchsorted(neg, pos, side="right") - below)))
    leave_out = (m * n * auc - n * sum10 - m * sum01 + within / len(runs)) / ((m - m_c) * (n - n_c))
    return auc, leave_out


def _jackknife_variance(leave_out):
    """Jackknife variance (I-1)/I sum (theta_(-c) - mean)^2 over the I clusters (Efron and Tibshirani 1993, 11.5)."""
    count = len(leave_out)
    return (count - 1) / count * float(np.sum((leave_out - leave_out.mean()) ** 2))


# How a fold's variance is estimated: DeLong's components summed per cluster (Obuchowski 1997), or the cluster
# jackknife; and the reference distribution of the statistic: normal, or t with the Satterthwaite degrees of
# freedom of the folds' cluster counts. On tools/simulate_statistics.py's designs where clusters differ (sizes 5-30,
# many without a positive, within-cluster correlation 0.3-0.7), Obuchowski's variance fell to 0.72-0.96 of the true
# one in folds of 4-8 clusters and its t test rejected 0.083-0.104 of true nulls there; the jackknife's variance
# runs high (1.7-2.1x) in such folds, so with a normal reference it errs on the safe side (0.021-0.036) and holds
# 0.044-0.052 at 20-40 clusters without folds and at 888. It is the default variance of the variance test and of
# the interval of a difference (except where the paired t over folds gives both); the t reference only widens it.
VARIANCES = ("delong", "jackknife")
# The cluster permutation test: exact enumeration of every sign pattern up to this many clusters (two halves of
# 2**15 sums at most: milliseconds), else this many seeded Monte Carlo patterns (a p-value resolution of 1e-4).
EXACT_CLUSTERS, PERMUTATIONS = 30, 10_000
# Where the p-value comes from: "permutation" (the clusters' exchange), "variance" (the variance and its reference
# distribution), "folds" (a paired t test over the folds' AUC differences), or "auto": the one that held at the
# study's size in tools/simulate_statistics.py.
TESTS = ("auto", "permutation", "variance", "folds")
DEFAULT_TEST = "auto"
# "auto" takes the permutation test from 40 clusters on, every fold holding 8 or more; else, with 5 folds or more, the
# paired t test over folds; else the variance test. Chosen on tools/simulate_statistics.py's designs where clusters
# differ (the README's table): at 40 clusters in 5 folds of 8 the permutation test kept 0.059 where the jackknife fell
# to 0.021 and Obuchowski's variance rose to 0.104; at 40 and 888 clusters both kept [0.03, 0.065]. At 4 clusters a
# fold the permutation test rose to 0.074-0.096 (ranks of two models on different scales are not exchangeable in so
# few clusters), the jackknife with a normal reference fell to 0.025-0.036 (its variance runs 1.6-1.8x the true one
# there) and Obuchowski's t test rose to 0.053-0.102. The paired t test over the 5 folds held 0.035-0.040 (README):
# the spread of the folds' differences is an unbiased variance whatever the clusters inside a fold do, the folds'
# cases being disjoint, at the price of its K - 1 degrees of freedom. With fewer folds those df are too few to be of
# use, and the jackknife (on the safe side) stays.
PERMUTATION_FROM, PERMUTATION_FOLD_FROM = 40, 8
FOLD_TEST_FROM = 5


def choose_test(clusters, smallest_fold, folds):
    """The test "auto" uses with `clusters` clusters in all, `smallest_fold` in the fold that holds fewest, in
    `folds` folds."""
    if clusters >= PERMUTATION_FROM and smallest_fold >= PERMUTATION_FOLD_FROM:
        return "permutation"
    return "folds" if folds >= FOLD_TEST_FROM else "variance"


REFERENCES = ("t", "normal")
DEFAULT_VARIANCE, DEFAULT_REFERENCE = "jackknife", "normal"
# The AUC interval's t reference, per fold: "effective", Satterthwaite's df of a variance taken from values with the
# jackknife values' kurtosis b, 2 / (2 / (n - 1) + (b - 3) / n) (Var(s^2) / sigma^4 for n values of kurtosis b): n - 1
# for normal values, fewer where a few clusters dominate, kept between 1 and n - 1; "clusters", the fold's clusters
# less one; or "sides", the fewer of its clusters holding a positive or a negative, less one. On the designs where
# clusters differ, "clusters" covered only 0.931-0.937 at 40 clusters without folds (a few clusters that hold most
# positives make the jackknife's variance vary more than 39 df say); the README gives "effective"'s coverage. The
# kurtosis of 4 values stays below 3 (7/3 at most), so with 4 clusters a fold "effective" gives 3 df, as "clusters"
# does. "sides" made the interval 1.9-2.5x the width a known spread would need in folds of 4-8 clusters.
DF_FROM = ("effective", "clusters", "sides")
DEFAULT_DF_FROM = "effective"


def _effective_df(leave_out):
    """Satterthwaite's df of the variance of the leave-out values, from their kurtosis, within [1, len - 1]."""
    d = np.asarray(leave_out, float) - np.mean(leave_out)
    count, square = len(d), float(np.sum(d**2))
    if count < 2 or square <= 0:
        return float(max(count - 1, 1))
    kurtosis = count * float(np.sum(d**4)) / square**2
    return float(min(max(2 / (2 / (count - 1) + (kurtosis - 3) / count), 1.0), count - 1.0))


def _fold_usable(y, clusters, name, unit):
    """None when a fold can be tested, else the line saying why it is left out."""
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        return f"fold {name}: {m} positive and {n} negative cases, no AUC; left out"
    i10, i01 = len(np.unique(clusters[y == 1])), len(np.unique(clusters[y == 0]))
    if i10 < 2 or i01 < 2:
        side = "positive" if i10 < 2 else "negative"
        count = m if i10 < 2 else n
        if count == 1:
            return f"fold {name}: one {side} case, too few to estimate a variance; left out"
        return (
            f"fold {name}: all {count} {side}s in one {unit}, so their spread between {unit}s cannot be "
            "estimated; left out"
        )
    return None


def _folds(y_true, clusters, strata, unit):
    """Per usable fold its rows, its cluster count and the fewer of its clusters holding a positive or a negative;
    and the lines naming the folds left out."""
    usable, notes = [], []
    for s in np.unique(strata):
        rows = strata == s
        note = _fold_usable(y_true[rows], clusters[rows], s, unit)
        if note:
            notes.append(note)
        else:
            sides = min(len(np.unique(clusters[rows & (y_true == k)])) for k in (0, 1))
            usable.append((rows, len(np.unique(clusters[rows])), sides))
    return usable, notes


def _satterthwaite(variances, clusters):
    """Degrees of freedom of a sum of per-fold variances, each on (clusters - 1) (Satterthwaite 1946)."""
    variances, clusters = np.asarray(variances, float), np.asarray(clusters, float)
    if not np.any(variances > 0):
        return float(np.sum(clusters - 1))
    return float(np.sum(variances) ** 2 / np.sum(variances**2 / (clusters - 1)))


def _reference_quantiles(estimate, variance, df, reference, level):
    """(statistic, two-sided p-value, interval) of `estimate` against 0 with the reference distribution."""
    from scipy import stats

    distribution = stats.norm() if reference == "normal" else stats.t(df)
    half = distribution.ppf((1 + level) / 2) * np.sqrt(max(variance, 0.0))
    if variance <= 0:
        statistic = 0.0 if estimate == 0 else float(np.sign(estimate) * np.inf)
    else:
        statistic = estimate / np.sqrt(variance)
    return float(statistic), float(2 * distribution.sf(abs(statistic))), (estimate - half, estimate + half)


def _test_name(variance, reference, clustered, df=None):
    """E.g. "cluster jackknife, t with 14 df"; without df, "cluster jackknife, t reference"."""
    if variance == "delong":
        name = "clustered DeLong (Obuchowski 1997)" if clustered else "DeLong"
    else:
        name = "cluster jackknife" if clustered else "jackknife"
    if reference == "normal":
        return name
    return name + (", t reference" if df is None else f", t with {df:.0f} df")


def _check_methods(variance, reference):
    if variance not in VARIANCES or reference not in REFERENCES:
        raise ValueError(
            f"variance must be one of {VARIANCES} and reference one of {REFERENCES}. "
            f"Received: variance={variance}, reference={reference}"
        )


def paired_auc_test(
    y_true,
    p_a,
    p_b,
    clusters=None,
    strata=None,
    variance=DEFAULT_VARIANCE,
    reference=DEFAULT_REFERENCE,
    level=0.95,
    unit="cluster",
    test=DEFAULT_TEST,
    permutations=None,
    seed=0,
):
    """Two-sided test of two models' AUCs on the same cases, with the interval of their difference.

    How each test works, what it assumes and what it does not cover: the module's docstring, "The paired test".

    Args:
        y_true: (N,) 0/1 labels.
        p_a, p_b: (N,) or (R, N) scores of the two models; with R runs, the AUCs are the mean over runs.
        clusters: (N,) group of each case, or None for independent cases.
        strata: (N,) fold of each case, or None.
        variance: "jackknife" (the cluster jackknife) or "delong" (Obuchowski's clustered variance).
            Defaults to "jackknife".
        reference: "normal" or "t". Defaults to "normal".
        level: the interval's coverage. Defaults to 0.95.
        unit: what a cluster is, for the notes (e.g. "scan"). Defaults to "cluster".
        test: where the p-value comes from: "variance", "permutation", "folds" (the paired t test over
            folds; it needs two testable folds), or "auto" (`choose_test`: the permutation test from 40
            clusters with 8 or more in every fold, else the paired t over 5 folds or more, else the
            variance). Defaults to "auto": what the report uses.
        permutations: Monte Carlo patterns of the permutation test, or None: exact up to
            EXACT_CLUSTERS clusters, else PERMUTATIONS.
        seed: the Monte Carlo patterns' seed. Defaults to 0.

    Returns:
        dict with auc_a, auc_b and difference (a - b, over the folds tested), z (the
        statistic, positive when a is better), the two-sided p_value, ci_low and ci_high of
        the difference, variance, df, clusters (the count behind the test), smallest_fold (the
        clusters of the fold with fewest), folds, notes, p_method ("variance", "permutation" or "folds"),
        p_how (how the permutation p-value was counted, else ""), `test` (its name, with the df) and
        `method` (its name without them). Without a testable fold, p_value and the interval are NaN.

    Example:
        >>> y = np.array([0, 1] * 20); rng = np.random.default_rng(0)
        >>> result = paired_auc_test(y, y + rng.random(40), y * 0.5 + rng.random(40), clusters=np.arange(40) // 4)
    """
    _check_methods(variance, reference)
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}. Received: {test}")
    y_true, p_a, p_b, clusters, strata, clustered = _paired_inputs(y_true, p_a, p_b, clusters, strata)
    usable, notes = _folds(y_true, clusters, strata, unit)
    sizes = [count for _, count, _ in usable]
    chosen = choose_test(sum(sizes), min(sizes, default=0), len(usable)) if test == "auto" else test
    if chosen == "folds" and len(usable) < 2:
        raise ValueError(f"test='folds' needs two folds with both classes; {len(usable)} here")
    aucs, variances, counts, shares = _fold_statistics(y_true, p_a, p_b, clusters, usable, variance, chosen)
    result = {"folds": len(usable), "clusters": int(sum(counts)), "smallest_fold": int(min(counts, default=0))}
    result.update(notes=notes, method=_test_name(variance, reference, clustered), p_method=chosen, p_how="")
    if not usable:
        nothing = dict.fromkeys(("auc_a", "auc_b", "difference", "z", "p_value", "ci_low", "ci_high"), np.nan)
        no_test = _test_name(variance, reference, clustered, 0) + ", no fold testable"
        return {**result, **nothing, "variance": np.nan, "df": np.nan, "test": no_test}
    k = len(usable)
    auc_a, auc_b = np.mean(aucs, axis=0)
    total = float(sum(variances) / k**2)
    df = _satterthwaite(variances, counts)
    z, p_value, (low, high) = _reference_quantiles(auc_a - auc_b, total, df, reference, level)
    name = _test_name(variance, reference, clustered, df)
    if chosen == "folds":  # The p-value and the interval from the spread of the folds' differences.
        z, p_value, low, high, total, df = _paired_t_over_folds(aucs, auc_a - auc_b, level)
        if total <= 0 and auc_a != auc_b:
            result["notes"] = notes + [
                f"the {k} folds' AUC differences are all {auc_a - auc_b:+.4g}: no spread, no test"
            ]
        result["method"] = "paired t over folds"
        name = f"paired t over {k} folds, {k - 1} df"
    if chosen == "permutation":  # The p-value from the clusters' exchange; the interval stays the variance's.
        p_value, how = sign_flip_p_value(np.concatenate(shares) / k, permutations, seed)
        result["p_how"] = how
        exchange = "cluster permutation" if clustered else "permutation"
        result["method"] = f"{exchange} ({how}); interval: {result['method']}"
        name = f"{exchange} ({how}); interval: {name}"
    result.update(auc_a=float(auc_a), auc_b=float(auc_b), difference=float(auc_a - auc_b), z=z, p_value=p_value)
    df = df if reference == "t" or chosen == "folds" else np.nan  # A normal reference has none.
    return {**result, "ci_low": float(low), "ci_high": float(high), "variance": total, "df": df, "test": name}


def _paired_inputs(y_true, p_a, p_b, clusters, strata):
    """The labels as 0/1, each model's scores as (runs, N), the clusters and strata as arrays (each case its own
    cluster, one stratum, where not given), and whether any cluster holds several cases."""
    y_true = np.asarray(y_true).astype(int)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    clustered = clusters is not None and len(np.unique(clusters)) < len(y_true)
    clusters = np.arange(len(y_true)) if clusters is None else np.asarray(clusters)
    return y_true, _as_runs(p_a), _as_runs(p_b), clusters, strata, clustered


def _paired_t_over_folds(aucs, difference, level):
    """z, p-value, interval and the variance and df of the paired t over folds, from each fold's (AUC a, AUC b) and
    their mean difference: that against sd / sqrt(K) of the folds' differences, K - 1 df. Equal differences in every
    fold leave no spread to test them against: z, p and the interval are NaN then."""
    k = len(aucs)
    differences = [a - b for a, b in aucs]
    total, df = float(np.var(differences, ddof=1) / k), float(k - 1)
    z, p_value, (low, high) = _reference_quantiles(difference, total, df, "t", level)
    if total <= 0 and difference != 0:
        z = p_value = low = high = np.nan
    return z, p_value, low, high, total, df


def _fold_statistics(y_true, p_a, p_b, clusters, usable, variance, permutation):
    """Each usable fold's (AUC of a, AUC of b), the variance of their difference (`variance`'s way), its cluster
    count, and (when `permutation` is "permutation") its clusters' shares of the difference."""
    aucs, variances, counts, shares = [], [], [], []
    for rows, count, _ in usable:
        y, c = y_true[rows], clusters[rows]
        if permutation == "permutation":
            shares.append(cluster_contributions(y, p_a[:, rows], p_b[:, rows], c)[1])
        if variance == "delong":
            auc_a, v10_a, v01_a = auc_components(y, p_a[:, rows])
            auc_b, v10_b, v01_b = auc_components(y, p_b[:, rows])
            cov = _clustered_covariance(np.stack([v10_a, v10_b]), np.stack([v01_a, v01_b]), c[y == 1], c[y == 0])
            variances.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        else:
            auc_a, out_a = _fold_jackknife(y, p_a[:, rows], c)
            auc_b, out_b = _fold_jackknife(y, p_b[:, rows], c)
            variances.append(_jackknife_variance(out_a - out_b))
        aucs.append((auc_a, auc_b))
        counts.append(count)
    return aucs, variances, counts, shares


def _fold_ranks(runs):
    """(R, N) midranks of each run's scores over the fold's cases: one scale for both models, as AUC ignores scale."""
    from scipy.stats import rankdata

    return np.stack([rankdata(scores) for scores in runs])


def cluster_contributions(y_true, p_a, p_b, clusters):
    """Each cluster's share h_c of the AUC difference a - b in one fold, such that swapping the two models' scores
    of any set S of clusters turns the difference into sum(h) - 2 sum_{c in S} h_c.

    Scores are taken as each model's midranks within the fold (Bandos, Rockette and Gur 2005 exchange ranks, so two
    models on different scales can be swapped). With K_uv[c, d] the kernel sum psi(x_u(i), x_v(j)) over positives i
    of cluster c and negatives j of cluster d, model u's ranks against model v's (u, v = a, b), and s_c = 1 where
    cluster c is swapped, the swapped difference is (1 / M N) sum_cd (K_{s_c s_d} - K_{1-s_c, 1-s_d})[c, d]. Its
    terms in s_c s_d cancel, so it is linear in s: with g_c = sum_d (K_ba - K_ab + K_bb - K_aa)[c, d] + sum_d
    (K_ab - K_ba + K_bb - K_aa)[d, c], h_c = -g_c / (2 M N). Every pair of cases, within a cluster or across two,
    is counted once, so the permutation distribution needs no ranking again: it is that of sum(+-h_c).

    Args:
        y_true: (N,) 0/1 labels of one fold. p_a, p_b: (R_a, N) and (R_b, N) scores of each model's runs (each
            pair of runs is exchanged; the difference is that of the runs' mean AUCs). clusters: (N,).

    Returns:
        (names, h): the clusters (sorted) and their contributions; h.sum() is the fold's AUC difference.
    """
    names, index = np.unique(clusters, return_inverse=True)
    count, positive, negative = len(names), y_true == 1, y_true == 0
    m, n = int(positive.sum()), int(negative.sum())
    kernel = np.zeros((2, 2, count, count))
    ranked = (_fold_ranks(p_a), _fold_ranks(p_b))
    span = len(y_true) + 2.0  # Ranks lie in [1, N]: cluster d's negatives occupy keys d * span + rank.
    neg_cluster, pos_cluster = index[negative], index[positive]
    pairs = [(r, q) for r in range(len(ranked[0])) for q in range(len(ranked[1]))]
    for pair in pairs:  # Every run of a against every run of b: their mean difference is the runs' mean AUCs'.
        for v in range(2):
            keys = np.sort(neg_cluster * span + ranked[v][pair[v]][negative])
            starts = np.searchsorted(keys, np.arange(count) * span)
            for u in range(2):
                scores = ranked[u][pair[u]][positive]
                query = np.arange(count)[None, :] * span + scores[:, None]  # (M, clusters)
                below = np.searchsorted(keys, query, side="left")
                equal = np.searchsorted(keys, query, side="right") - below
                wins = below - starts[None, :] + 0.5 * equal
                np.add.at(kernel[u, v], pos_cluster, wins)
    kernel /= len(pairs)
    (aa, ab), (ba, bb) = kernel
    # d(diff)/d(swap c) from the rows (c's positives) and the columns (c's negatives); h = -g / 2.
    g = (ba - ab + bb - aa).sum(axis=1) + (ab - ba + bb - aa).sum(axis=0)
    return names, -g / (2.0 * m * n)


def _signed_sums(values):
    """All 2**len(values) sums of +-values, sorted (len(values) <= 20)."""
    sums = np.zeros(1)
    for value in values:
        sums = np.concatenate([sums + value, sums - value])
    return np.sort(sums)


def sign_flip_p_value(contributions, permutations=None, seed=0):
    """Two-sided p-value of sum(h) against the distribution of sum(+-h) over independent sign flips.

    Exact (every one of the 2**C patterns, counted by meet in the middle: two halves of at most 2**20 sums each)
    when C <= EXACT_CLUSTERS and `permutations` is None; otherwise Monte Carlo with `permutations` seeded random
    patterns (PERMUTATIONS if None), p = (1 + hits) / (1 + permutations), which is a valid p-value too.

    Returns:
        (p_value, how): how is e.g. "exact over 2^20 sign patterns" or "10,000 random sign patterns".
    """
    h = np.asarray(contributions, float)
    observed = abs(float(h.sum()))
    slack = 1e-9 * max(float(np.abs(h).sum()), 1e-300)  # Floating sums of the same terms in another order.
    if permutations is None and len(h) <= EXACT_CLUSTERS:
        half = len(h) // 2
        left, right = _signed_sums(h[:half]), _signed_sums(h[half:])
        threshold = observed - slack
        hits = len(right) - np.searchsorted(right, threshold - left, side="left")  # a + b >= t
        hits = hits + np.searchsorted(right, -threshold - left, side="right")  # a + b <= -t
        if threshold <= 0:
            hits = np.full(len(left), len(right))  # Every pattern is at least as extreme as 0.
        return float(min(1.0, hits.sum() / 2.0 ** len(h))), f"exact over 2^{len(h)} sign patterns"
    permutations = PERMUTATIONS if permutations is None else int(permutations)
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < permutations:
        block = min(permutations - done, max(1, 2_000_000 // max(len(h), 1)))
        signs = rng.integers(0, 2, size=(block, len(h)), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ h) >= observed - slack))
        done += block
    return (1 + hits) / (1 + permutations), f"{permutations:,} random sign patterns"


def delong_test(y_true, p_a, p_b):
    """DeLong's test of two correlated AUCs on the same, independent cases (normal reference, DeLong 1988).

    Returns:
        dict as `paired_auc_test`'s: auc_a, auc_b, z (positive when a is better), the two-sided p_value, the variance.
    """
    return paired_auc_test(y_true, p_a, p_b, variance="delong", reference="normal", test="variance")


def auc_interval(y_true, probability, clusters=None, strata=None, level=0.95, unit="cluster", df_from=DEFAULT_DF_FROM):
    """The AUC (mean over runs of the mean over folds) with an interval from the cluster jackknife.

    Each fold's variance is the jackknife over its clusters; the folds' variances are summed
    (divided by K**2); the interval is taken on the logit of the AUC, logit(auc) +- t(df) se /
    (auc (1 - auc)), and mapped back, so that it stays inside (0, 1) and is skewed as an AUC
    near 1 is (Pepe 2003, 5.2.3); df is the Satterthwaite df of the folds, each fold's own df from
    its jackknife values' kurtosis (`df_from`, DEFAULT_DF_FROM). tools/simulate_statistics.py
    measures its coverage (README), where the percentile bootstrap of clusters covered 0.85-0.89
    at 20 and 40 clusters.
    An AUC of exactly 0 or 1 has no logit: its interval is the plain t interval.

    Returns:
        dict with auc (over every fold with both classes), ci_low, ci_high, df, clusters,
        folds and notes (folds left out of the interval, and why).
    """
    from scipy.stats import t

    y_true, runs = np.asarray(y_true).astype(int), _as_runs(probability)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    clusters = np.arange(len(y_true)) if clusters is None else np.asarray(clusters)
    usable, notes = _folds(y_true, clusters, strata, unit)
    if df_from not in DF_FROM:
        raise ValueError(f"df_from must be one of {DF_FROM}. Received: {df_from}")
    aucs, variances, counts, dfs = [], [], [], []
    for rows, count, side in usable:
        auc, leave_out = _fold_jackknife(y_true[rows], runs[:, rows], clusters[rows])
        aucs.append(auc)
        variances.append(_jackknife_variance(leave_out))
        counts.append(count)
        dfs.append({"effective": _effective_df(leave_out) + 1, "clusters": count, "sides": side}[df_from])
    result = {
        "auc": stratified_auc(y_true, runs, strata),
        "ci_low": np.nan,
        "ci_high": np.nan,
        "df": np.nan,
        "clusters": int(sum(counts)),
        "folds": len(usable),
        "notes": notes,
    }
    if usable:
        df = _satterthwaite(variances, dfs)
        center, se = float(np.mean(aucs)), float(np.sqrt(sum(variances))) / len(usable)
        half = t.ppf((1 + level) / 2, df) * se
        if 0 < center < 1:
            logit, spread = np.log(center / (1 - center)), half / (center * (1 - center))
            low, high = (1 / (1 + np.exp(-(logit + sign * spread))) for sign in (-1, 1))
        else:
            low, high = max(center - half, 0.0), min(center + half, 1.0)
        result.update({"ci_low": float(low), "ci_high": float(high), "df": df})
    return result


def _auc(y_true, scores):
    """The Mann-Whitney AUC from midranks (ties count one half), as scikit-learn's roc_auc_score but faster."""
    from scipy.stats import rankdata

    positive = y_true == 1
    m, n = int(positive.sum()), int(len(y_true) - positive.sum())
    if m == 0 or n == 0:
        return float("nan")
    return float((rankdata(scores)[positive].sum() - m * (m + 1) / 2) / (m * n))


def stratified_auc(y_true, probability, strata=None):
    """Mean over strata (cross-validation folds) of the per-stratum AUC, averaged over runs.

    A stratum without both classes has no AUC and is left out of the mean (NaN when none has both).

    Args:
        y_true: (N,) labels. probability: (N,) or (R, N). strata: (N,) or None.
    """
    y_true, runs = np.asarray(y_true).astype(int), _as_runs(probability)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    both = [s for s in np.unique(strata) if len(np.unique(y_true[strata == s])) == 2]
    if not both:
        return float("nan")
    return float(np.mean([[_auc(y_true[strata == s], scores[strata == s]) for s in both] for scores in runs]))


def stratified_metric(name, y_true, probability, strata=None, threshold=0.5):
    """(mean, per-run values) of a `binary_metrics` metric: per fold, averaged over folds, then over runs."""
    y_true, runs = np.asarray(y_true), _as_runs(probability)
    strata = np.zeros(len(y_true), int) if strata is None else np.asarray(strata)
    per_run = [
        float(
            np.mean(
                [binary_metrics(y_true[strata == s], scores[strata == s], threshold)[name] for s in np.unique(strata)]
            )
        )
        for scores in runs
    ]
    return float(np.mean(per_run)), per_run


def bootstrap_auc(y_true, probability, groups, iterations=1000, seed=0, level=0.95, strata=None):
    """AUC with a percentile interval from resampling whole groups (series, patients) with replacement.

    With few groups per fold it is too narrow (coverage 0.85-0.89 of a 95% interval at 20 and
    40 clusters in tools/simulate_statistics.py); the report uses `auc_interval` unless asked.

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
        rows = np.concatenate(
            [np.concatenate([m[g] for g in rng.integers(0, len(m), size=len(m))]) for m in members.values()]
        )
        if all(len(np.unique(y_true[rows][strata[rows] == s])) == 2 for s in members):
            values.append(stratified_auc(y_true[rows], runs[:, rows], strata[rows]))
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if values else (np.nan, np.nan)
    return stratified_auc(y_true, runs, strata), float(low), float(high)
