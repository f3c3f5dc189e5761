"""The smallest AUC difference between two initialisations that the data can detect: before the run and after.

Before the run (the plan) there are no scores. The difference detectable with `power` at
two-sided `alpha` comes from a simulation at the data's own shape: its folds, the clusters
of each fold (scans, patients) and each cluster's positives and negatives. Two models score
every case as in tools/simulate_statistics.py's clustered designs: a case's score is
mu * label + a cluster effect both models see + each model's own effect of the cluster + a
case effect both see + each model's own noise, so that within a cluster a model's scores
correlate `within` and the two models' scores of a case correlate 0.5, and each model's
AUC is `auc` (the task's expected level). The spread (sd) of the report's statistic, the
mean over folds of the AUC difference, is simulated where the difference lies (first with
the two AUCs equal, then PASSES - 1 times at the difference found: the tests take their
spread from the data, and a better model's AUC spreads less); the detectable difference is
(q(1 - alpha / 2) + q(power)) * sd, q the quantiles of the
reference of the test the report will use on that shape (`transfer.statistics.choose_test`):
the normal for the cluster permutation test and the jackknife, t with K - 1 df for the
paired t over K folds. `tests/test_power.py` checks it against the report's own test's
power on data simulated with that difference.

After the run (the report) the same sum of quantiles multiplies the comparison's observed
standard error, its interval's half-width over its quantile.

Folds of more than MAX_CASES cases are simulated with each cluster's negatives scaled down
to fit (at least one kept): the clusters, the positives and the cluster effects stay, and
the negatives' share of the variance, already small beside the positives' there, shrinks a
little less than it would with all of them (a larger, safer sd).
"""

import numpy as np

ALPHA, POWER = 0.05, 0.8
WITHIN = 0.5  # Within-cluster correlation of a model's scores: the middle of the simulation's 0.3-0.7.
MAX_CASES = 20_000  # Cases of one simulated fold (see the module's docstring).
REPLICATES = 200
PASSES = 3
CEILING = 0.999  # The largest difference simulated: this share of the way from `auc` to 1.


def _capped(counts):
    """A fold's (clusters, 2) positives and negatives with the negatives scaled to fit MAX_CASES."""
    counts = np.asarray(counts, dtype=int).reshape(-1, 2)
    total = counts.sum()
    if total <= MAX_CASES:
        return counts
    room = max(MAX_CASES - counts[:, 0].sum(), 1)
    scale = room / max(counts[:, 1].sum(), 1)
    negatives = np.where(counts[:, 1] > 0, np.maximum(1, np.round(counts[:, 1] * scale)), 0).astype(int)
    return np.column_stack([counts[:, 0], negatives])


def simulate(design, auc, difference=0.0, within=WITHIN, rng=None):
    """One data set of `design` (a list of folds, each (clusters, 2) positives and negatives per cluster): (labels,
    scores of a, scores of b, clusters, folds), b's AUC `auc` and a's `auc + difference`."""
    from scipy.stats import norm

    rng = np.random.default_rng(rng)
    labels, clusters, folds = [], [], []
    start = 0
    for fold, counts in enumerate(design):
        counts = _capped(counts)
        ids = start + np.arange(len(counts))
        start += len(counts)
        clusters += [np.repeat(ids, counts[:, 0]), np.repeat(ids, counts[:, 1])]
        labels += [np.ones(counts[:, 0].sum(), int), np.zeros(counts[:, 1].sum(), int)]
        folds.append(np.full(counts.sum(), fold))
    y, clusters, folds = np.concatenate(labels), np.concatenate(clusters), np.concatenate(folds)
    count = len(y)
    shared = rng.normal(0, np.sqrt(0.6 * within), start)[clusters] + rng.normal(0, np.sqrt(0.4 * (1 - within)), count)
    own = [
        rng.normal(0, np.sqrt(0.4 * within), start)[clusters] + rng.normal(0, np.sqrt(0.6 * (1 - within)), count)
        for _ in range(2)
    ]
    mu_a, mu_b = np.sqrt(2) * norm.ppf(auc + difference), np.sqrt(2) * norm.ppf(auc)  # Every score: N(mu y, 1).
    return y, mu_a * y + shared + own[0], mu_b * y + shared + own[1], clusters, folds


def mean_difference(y, a, b, folds):
    """The report's statistic: the mean over folds of the AUC difference a - b (`transfer.statistics`)."""
    from transfer.statistics import stratified_auc

    return stratified_auc(y, a, folds) - stratified_auc(y, b, folds)


def report_test(design):
    """(the test the report uses on this shape, its reference's df: None for the normal)."""
    from transfer.statistics import choose_test

    per_fold = [int(np.sum(np.asarray(counts).reshape(-1, 2).sum(axis=1) > 0)) for counts in design]
    test = choose_test(sum(per_fold), min(per_fold), len(design))
    return test, (len(design) - 1 if test == "folds" else None)


def quantile_sum(df, alpha=ALPHA, power=POWER):
    """q(1 - alpha / 2) + q(power) of the normal (df None) or of t with df."""
    from scipy import stats

    distribution = stats.norm() if df is None else stats.t(df)
    return float(distribution.ppf(1 - alpha / 2) + distribution.ppf(power))


def detectable_difference(design, auc, within=WITHIN, alpha=ALPHA, power=POWER, replicates=REPLICATES, seed=0):
    """The smallest AUC difference the report's test detects with `power` on data of `design` (see the module's
    docstring): {"difference", "ceiling", "sd", "test", "df", "auc", "within", "clusters", "positives",
    "negatives"}; "ceiling" is true where no model short of AUC 1 would be told apart (the difference is then the
    most there is room for, a lower bound)."""
    test, df = report_test(design)
    factor = quantile_sum(df, alpha, power)
    difference = 0.0
    for _ in range(PASSES):  # The spread at the difference itself: from the null's, a fixed point.
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(replicates):
            y, a, b, _, folds = simulate(design, auc, difference, within, rng)
            values.append(mean_difference(y, a, b, folds))
        sd = float(np.std(values, ddof=1))
        difference = min(factor * sd, (1 - auc) * CEILING)
    counts = np.concatenate([np.asarray(c).reshape(-1, 2) for c in design])
    return {
        "difference": difference,
        "ceiling": difference >= (1 - auc) * CEILING,  # Not even a model at AUC 1 would be told apart.
        "sd": sd,
        "test": test,
        "df": df,
        "auc": auc,
        "within": within,
        "clusters": int(np.sum(counts.sum(axis=1) > 0)),
        "positives": int(counts[:, 0].sum()),
        "negatives": int(counts[:, 1].sum()),
    }


def observed_detectable(ci_low, ci_high, df=None, level=0.95, power=POWER):
    """The smallest difference detectable with `power` at 1 - `level` from an observed comparison's interval:
    (q(1 - alpha / 2) + q(power)) times its standard error, the half-width over q(1 - alpha / 2)."""
    from scipy import stats

    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return float("nan")
    distribution = stats.norm() if df is None or not np.isfinite(df) else stats.t(df)
    standard_error = (ci_high - ci_low) / 2 / distribution.ppf((1 + level) / 2)
    return float(quantile_sum(None if df is None or not np.isfinite(df) else df, 1 - level, power) * standard_error)
