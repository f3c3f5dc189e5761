import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from transfer.statistics import (
    auc_interval,
    binary_metrics,
    bootstrap_auc,
    delong_test,
    paired_auc_test,
    stratified_auc,
)


def _psi(x, y):
    return (x > y) + 0.5 * (x == y)


def delong_direct(y, a, b):
    """DeLong's variance straight from the Mann-Whitney kernel, O(m n): the reference."""
    out = []
    components = []
    for p in (a, b):
        pos, neg = p[y == 1], p[y == 0]
        kernel = _psi(pos[:, None], neg[None, :])
        out.append(kernel.mean())
        components.append((kernel.mean(axis=1), kernel.mean(axis=0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    s10 = np.cov(np.stack([components[0][0], components[1][0]]))
    s01 = np.cov(np.stack([components[0][1], components[1][1]]))
    s = s10 / m + s01 / n
    z = (out[0] - out[1]) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return out[0], out[1], z


def test_delong_matches_the_direct_computation_on_fixed_data():
    rng = np.random.default_rng(42)
    y = np.array([1] * 30 + [0] * 50)
    a = y * 0.8 + rng.normal(0, 0.6, size=80)
    b = y * 0.4 + rng.normal(0, 0.6, size=80)
    b[:10] = np.round(b[:10], 1)  # Some ties.
    a[5], a[40] = 0.3, 0.3
    result = delong_test(y, a, b)
    auc_a, auc_b, z = delong_direct(y, a, b)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auc_a)
    assert result["auc_b"] == pytest.approx(auc_b)
    assert result["z"] == pytest.approx(z)
    from scipy.stats import norm

    assert result["p_value"] == pytest.approx(2 * norm.sf(abs(z)))
    same = delong_test(y, a, a)
    assert same["z"] == 0 and same["p_value"] == 1.0
    one_stratum = paired_auc_test(
        y, a, b, strata=np.zeros(len(y)), variance="delong", reference="normal", test="variance"
    )
    assert one_stratum["z"] == pytest.approx(z) and one_stratum["p_value"] == pytest.approx(result["p_value"])


def test_binary_metrics_against_sklearn():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    metrics = binary_metrics(y, p)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert metrics["sensitivity"] == pytest.approx(2 / 3) and metrics["specificity"] == pytest.approx(2 / 3)


def test_bootstrap_interval_holds_the_auc_and_resamples_groups():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    y = (rng.random(200) < 0.3).astype(int)
    p = y * 0.5 + rng.random(200)
    auc, low, high = bootstrap_auc(y, p, groups, iterations=300)
    assert auc == pytest.approx(roc_auc_score(y, p)) and low < auc < high
    # Identical groups: resampling them cannot change the AUC.
    constant = bootstrap_auc(np.tile([0, 1], 50), np.tile([0.2, 0.8], 50), np.repeat(np.arange(50), 2), iterations=50)
    assert constant == (1.0, 1.0, 1.0)


def test_stratified_auc_is_the_mean_of_fold_aucs():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1, 0, 0], 30)
    p = y + rng.normal(0, 1, size=120)
    p[60:] += 5  # Another fold's model on another scale: pooling would mix them.
    strata = np.repeat([1, 2], 60)
    expected = np.mean([roc_auc_score(y[:60], p[:60]), roc_auc_score(y[60:], p[60:])])
    assert stratified_auc(y, p, strata) == pytest.approx(expected)
    # A fold of negatives only has no AUC: left out of the mean, not a crash.
    alone = np.concatenate([strata, [3, 3]])
    assert stratified_auc(np.concatenate([y, [0, 0]]), np.concatenate([p, [0.1, 0.9]]), alone) == pytest.approx(
        expected
    )
    auc, low, high = bootstrap_auc(y, p, np.arange(120) // 4, iterations=200, strata=strata)
    assert auc == pytest.approx(expected) and low < auc < high


def obuchowski_by_hand(y, a, b, clusters):
    """Obuchowski's (1997) clustered variance of AUC(a) - AUC(b), written out with loops as in the paper.

    The positive side's factor counts the clusters holding a positive (I10), the negative side's those
    holding a negative (I01), the cross term all clusters (I).
    """
    y, clusters = np.asarray(y), np.asarray(clusters)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    names = sorted(set(clusters))
    count = len(names)
    i10, i01 = len(set(clusters[pos])), len(set(clusters[neg]))
    theta, v10c, v01c = {}, {}, {}
    for label, p in (("a", a), ("b", b)):
        theta[label] = sum(_psi(p[i], p[j]) for i in pos for j in neg) / (m * n)
        v10 = {i: sum(_psi(p[i], p[j]) for j in neg) / n for i in pos}
        v01 = {j: sum(_psi(p[i], p[j]) for i in pos) / m for j in neg}
        v10c[label] = [sum(v10[i] for i in pos if clusters[i] == c) for c in names]
        v01c[label] = [sum(v01[j] for j in neg if clusters[j] == c) for c in names]
    m_c = [sum(1 for i in pos if clusters[i] == c) for c in names]
    n_c = [sum(1 for j in neg if clusters[j] == c) for c in names]

    def cov(u, w):
        return s10(u, w) / m + s01(u, w) / n + (s11(u, w) + s11(w, u)) / (m * n)

    def s10(u, w):
        return (
            i10
            / ((i10 - 1) * m)
            * sum((v10c[u][k] - m_c[k] * theta[u]) * (v10c[w][k] - m_c[k] * theta[w]) for k in range(count))
        )

    def s01(u, w):
        return (
            i01
            / ((i01 - 1) * n)
            * sum((v01c[u][k] - n_c[k] * theta[u]) * (v01c[w][k] - n_c[k] * theta[w]) for k in range(count))
        )

    def s11(u, w):
        return (
            count
            / (count - 1)
            * sum((v10c[u][k] - m_c[k] * theta[u]) * (v01c[w][k] - n_c[k] * theta[w]) for k in range(count))
        )

    return theta["a"], theta["b"], cov("a", "a") + cov("b", "b") - 2 * cov("a", "b")


def _clustered_case(seed=5, clusters=12):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, size=clusters)
    groups = np.repeat(np.arange(clusters), sizes)
    shared = rng.normal(0, 0.7, size=clusters)[groups]  # Cases of one scan move together.
    y = (rng.random(len(groups)) < 0.35).astype(int)
    y[:2] = [0, 1]
    a = y * 0.9 + shared + rng.normal(0, 0.5, len(y))
    b = y * 0.5 + shared + rng.normal(0, 0.5, len(y))
    return y, a, b, groups


def test_clustered_test_matches_obuchowski_by_hand():
    y, a, b, groups = _clustered_case()
    assert len(set(groups[y == 1])) < len(set(groups))  # Some clusters hold no positive: I10 < I matters.
    result = paired_auc_test(y, a, b, clusters=groups, variance="delong", reference="normal", test="variance")
    auc_a, auc_b, variance = obuchowski_by_hand(y, a, b, groups)
    assert result["test"] == "clustered DeLong (Obuchowski 1997)"
    assert result["auc_a"] == pytest.approx(auc_a) and result["auc_b"] == pytest.approx(auc_b)
    assert result["variance"] == pytest.approx(variance, rel=1e-12)
    from scipy.stats import norm

    assert result["p_value"] == pytest.approx(2 * norm.sf(abs((auc_a - auc_b) / np.sqrt(variance))))
    half = norm.ppf(0.975) * np.sqrt(variance)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((auc_a - auc_b - half, auc_a - auc_b + half))
    # The t reference: the same variance per fold, summed over folds, against t with the Satterthwaite df of the
    # folds' cluster counts (Satterthwaite 1946).
    from scipy.stats import t

    folds = groups % 2
    parts = [obuchowski_by_hand(y[folds == f], a[folds == f], b[folds == f], groups[folds == f]) for f in (0, 1)]
    variances = np.array([v for _, _, v in parts])
    counts = np.array([len(set(groups[folds == f])) for f in (0, 1)])
    df = variances.sum() ** 2 / np.sum(variances**2 / (counts - 1))
    difference = np.mean([pa - pb for pa, pb, _ in parts])
    default = paired_auc_test(y, a, b, clusters=groups, strata=folds, variance="delong", reference="t", test="variance")
    assert default["test"] == f"clustered DeLong (Obuchowski 1997), t with {df:.0f} df"
    assert default["df"] == pytest.approx(df) and default["variance"] == pytest.approx(variances.sum() / 4)
    assert default["p_value"] == pytest.approx(2 * t.sf(abs(difference) / np.sqrt(variances.sum() / 4), df))
    # Every case its own cluster: Obuchowski's variance is DeLong's exactly.
    singletons = paired_auc_test(
        y, a, b, clusters=np.arange(len(y)), variance="delong", reference="normal", test="variance"
    )
    assert singletons["test"] == "DeLong" and singletons["z"] == pytest.approx(delong_direct(y, a, b)[2])


def jackknife_by_hand(y, a, b, clusters, folds):
    """The stratified cluster jackknife of mean_k (AUC_a - AUC_b) (of AUC_a with b None), refitting
    scikit-learn's AUC without each cluster."""
    from scipy.stats import t

    def statistic(rows):
        return roc_auc_score(y[rows], a[rows]) - (0 if b is None else roc_auc_score(y[rows], b[rows]))

    differences, variances, counts = [], [], []
    for f in np.unique(folds):
        rows = folds == f
        names = np.unique(clusters[rows])
        left = [statistic(rows & (clusters != c)) for c in names]
        differences.append(statistic(rows))
        variances.append((len(names) - 1) / len(names) * np.sum((np.array(left) - np.mean(left)) ** 2))
        counts.append(len(names))
    variances, counts = np.array(variances), np.array(counts)
    k = len(counts)
    df = variances.sum() ** 2 / np.sum(variances**2 / (counts - 1))
    difference, variance = np.mean(differences), variances.sum() / k**2
    return difference, variance, df, 2 * t.sf(abs(difference) / np.sqrt(variance), df)


def test_cluster_jackknife_test_matches_refitting_without_each_cluster():
    y, a, b, groups = _clustered_case(seed=3, clusters=24)
    folds = groups % 3
    b = np.exp(b)  # Another scale: the AUC cannot tell, nor may the test.
    result = paired_auc_test(
        y, a, b, clusters=groups, strata=folds, variance="jackknife", reference="t", test="variance"
    )
    difference, variance, df, p_value = jackknife_by_hand(y, a, b, groups, folds)
    assert result["difference"] == pytest.approx(difference)
    assert result["variance"] == pytest.approx(variance, rel=1e-10) and result["df"] == pytest.approx(df)
    assert result["p_value"] == pytest.approx(p_value, rel=1e-9)
    assert result["test"] == f"cluster jackknife, t with {df:.0f} df" and result["clusters"] == 24
    from scipy.stats import t

    low, high = difference + np.array([-1, 1]) * t.ppf(0.975, df) * np.sqrt(variance)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    # The interval of one model's AUC is the same jackknife with b left out.
    interval = auc_interval(y, a, groups, folds, df_from="clusters")
    auc, variance, _, _ = jackknife_by_hand(y, a, None, groups, folds)
    # Its df with df_from="clusters": each fold on its clusters less one (with "sides", on the fewer holding a
    # positive or a negative; the default's effective count has its own test below).
    fold_variances = [
        jackknife_by_hand(y[folds == f], a[folds == f], None, groups[folds == f], folds[folds == f])[1]
        for f in range(3)
    ]
    sides = [min(len(set(groups[(folds == f) & (y == k)])) for k in (0, 1)) for f in range(3)]
    counts = [len(set(groups[folds == f])) for f in range(3)]
    df = sum(fold_variances) ** 2 / sum(v**2 / (c - 1) for v, c in zip(fold_variances, counts))
    cautious = sum(fold_variances) ** 2 / sum(v**2 / (c - 1) for v, c in zip(fold_variances, sides))
    assert auc_interval(y, a, groups, folds, df_from="sides")["df"] == pytest.approx(cautious) and cautious < df
    logit, half = np.log(auc / (1 - auc)), t.ppf(0.975, df) * np.sqrt(variance) / (auc * (1 - auc))
    low, high = 1 / (1 + np.exp(-(logit - half))), 1 / (1 + np.exp(-(logit + half)))
    assert interval["auc"] == pytest.approx(auc) and interval["df"] == pytest.approx(df)
    assert (interval["ci_low"], interval["ci_high"]) == pytest.approx((low, high))
    assert interval["clusters"] == 24 and interval["notes"] == []


def test_duplicated_candidates_leave_the_clustered_p_value_and_shrink_delongs():
    y, a, b, groups = _clustered_case(seed=11)
    twice = [np.concatenate([v, v]) for v in (y, a, b, groups)]
    clustered, clustered_twice = paired_auc_test(y, a, b, groups), paired_auc_test(*twice)
    assert clustered_twice["auc_a"] == pytest.approx(clustered["auc_a"])
    assert clustered_twice["p_value"] == pytest.approx(clustered["p_value"], rel=1e-9)
    # DeLong counts every copy as new evidence: the same data, twice, look far more significant.
    plain, plain_twice = delong_test(y, a, b), delong_test(*twice[:3])
    assert plain_twice["variance"] == pytest.approx(plain["variance"] / 2, rel=0.1)
    assert plain_twice["p_value"] < plain["p_value"]


def test_runs_are_averaged_not_pooled():
    rng = np.random.default_rng(2)
    y = np.tile([0, 1, 0], 40)
    runs = np.stack([y + rng.normal(0, s, len(y)) for s in (0.8, 1.2, 1.0)])
    expected = np.mean([roc_auc_score(y, r) for r in runs])
    assert stratified_auc(y, runs) == pytest.approx(expected)
    assert bootstrap_auc(y, runs, np.arange(len(y)), iterations=50)[0] == pytest.approx(expected)
    test = paired_auc_test(y, runs, runs[::-1] * 0 + runs[0])
    assert test["auc_a"] == pytest.approx(expected) and test["auc_b"] == pytest.approx(roc_auc_score(y, runs[0]))


def test_folds_too_small_or_collapsed_are_left_out_with_a_line_each():
    y, a, b, groups = _clustered_case(seed=7, clusters=24)
    folds = groups % 3
    y[np.flatnonzero(groups == 1)[:2]] = 1
    keep = ~((folds == 1) & (y == 1) & (groups != 1))  # Fold 1: its positives, two or more, all in scan 1.
    keep &= ~((folds == 2) & (y == 1)) | (np.arange(len(y)) == np.flatnonzero((folds == 2) & (y == 1))[0])  # One.
    y, a, b, groups, folds = y[keep], a[keep], b[keep], groups[keep], folds[keep]
    for variance in ("jackknife", "delong"):
        result = paired_auc_test(y, a, b, clusters=groups, strata=folds, variance=variance, unit="scan")
        assert len(result["notes"]) == 2 and result["folds"] == 1
        assert result["notes"][0].startswith("fold 1: all ") and "positives in one scan" in result["notes"][0]
        assert result["notes"][1] == "fold 2: one positive case, too few to estimate a variance; left out"
        alone = paired_auc_test(
            y[folds == 0], a[folds == 0], b[folds == 0], clusters=groups[folds == 0], variance=variance
        )
        assert result["p_value"] == pytest.approx(alone["p_value"]) and result["clusters"] == alone["clusters"]
    # A fold without a positive has no AUC; no fold left: no test, and no traceback.
    none = paired_auc_test(
        y[folds == 2], a[folds == 2], b[folds == 2] * 0, clusters=groups[folds == 2], strata=folds[folds == 2]
    )
    assert np.isnan(none["p_value"]) and none["folds"] == 0 and "no fold testable" in none["test"]
    empty = paired_auc_test(np.zeros(6), np.arange(6.0), np.arange(6.0), strata=np.zeros(6, int))
    assert empty["notes"] == ["fold 0: 0 positive and 6 negative cases, no AUC; left out"]
    interval = auc_interval(y, a, groups, folds, unit="scan")
    assert len(interval["notes"]) == 2 and interval["folds"] == 1


def _swapped_difference(y, a, b, clusters, folds, swapped):
    """Mean over folds of AUC(a) - AUC(b) after exchanging the two models' within-fold ranks in `swapped` clusters."""
    from scipy.stats import rankdata

    differences = []
    for fold in np.unique(folds):
        rows = folds == fold
        ra, rb = rankdata(a[rows]), rankdata(b[rows])
        exchange = np.isin(clusters[rows], swapped)
        xa, xb = np.where(exchange, rb, ra), np.where(exchange, ra, rb)
        differences.append(roc_auc_score(y[rows], xa) - roc_auc_score(y[rows], xb))
    return float(np.mean(differences))


def _clustered_pair(seed, clusters=8, folds=2):
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(clusters), rng.integers(3, 7, clusters))
    y = (rng.random(len(group)) < 0.4).astype(int)
    for c in range(clusters):  # Every cluster holds both classes, so every fold has two clusters on each side.
        rows = np.flatnonzero(group == c)
        y[rows[0]], y[rows[1]] = 1, 0
    shared = rng.normal(0, 1, clusters)[group]
    a = y + shared + rng.normal(0, 1, len(y))
    b = np.exp(0.7 * y + shared + rng.normal(0, 1, len(y)))  # Another scale: the test exchanges ranks.
    b[:4] = b[4]  # Ties.
    return y, a, b, group, group % folds


def test_cluster_contributions_give_every_swapped_difference():
    from transfer.statistics import cluster_contributions

    y, a, b, group, folds = _clustered_pair(3, folds=1)
    names, h = cluster_contributions(y, a[None], b[None], group)
    assert h.sum() == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    rng = np.random.default_rng(0)
    for _ in range(6):
        swapped = names[rng.random(len(names)) < 0.5]
        expected = _swapped_difference(y, a, b, group, folds, swapped)
        assert h.sum() - 2 * h[np.isin(names, swapped)].sum() == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_cluster_permutation_p_value_is_the_share_of_swaps_at_least_as_extreme():
    import itertools

    y, a, b, group, folds = _clustered_pair(5, clusters=8, folds=2)
    observed = _swapped_difference(y, a, b, group, folds, [])
    extreme = [
        abs(_swapped_difference(y, a, b, group, folds, np.flatnonzero(pattern))) >= abs(observed) - 1e-12
        for pattern in itertools.product([0, 1], repeat=8)
    ]
    result = paired_auc_test(y, a, b, clusters=group, strata=folds, test="permutation")
    assert result["p_value"] == pytest.approx(np.mean(extreme))
    assert result["difference"] == pytest.approx(observed) and result["p_how"] == "exact over 2^8 sign patterns"
    # Monte Carlo: seeded, and near the exact value.
    sampled = paired_auc_test(y, a, b, clusters=group, strata=folds, test="permutation", permutations=20000, seed=1)
    again = paired_auc_test(y, a, b, clusters=group, strata=folds, test="permutation", permutations=20000, seed=1)
    assert sampled["p_value"] == again["p_value"] and sampled["p_value"] == pytest.approx(np.mean(extreme), abs=0.01)


def test_exact_sign_flip_p_value_counts_every_pattern():
    import itertools

    from transfer.statistics import sign_flip_p_value

    h = np.random.default_rng(2).normal(size=11)
    sums = np.array([np.dot(signs, h) for signs in itertools.product([-1, 1], repeat=11)])
    assert sign_flip_p_value(h)[0] == pytest.approx(np.mean(np.abs(sums) >= abs(h.sum()) - 1e-12))
    assert sign_flip_p_value(np.zeros(5))[0] == 1.0
    assert sign_flip_p_value(np.ones(10))[0] == pytest.approx(2 / 2**10)  # Only all-plus and all-minus reach 10.


def test_cluster_permutation_with_runs_exchanges_every_pair_of_runs():
    from transfer.statistics import cluster_contributions

    y, a, b, group, folds = _clustered_pair(7, folds=1)
    rng = np.random.default_rng(1)
    runs_a, runs_b = np.stack([a, a + rng.normal(0, 1, len(a))]), np.stack([b, b * 2, np.exp(-b)])
    names, h = cluster_contributions(y, runs_a, runs_b, group)
    swapped = names[::2]
    expected = np.mean([_swapped_difference(y, ra, rb, group, folds, swapped) for ra in runs_a for rb in runs_b])
    assert h.sum() - 2 * h[np.isin(names, swapped)].sum() == pytest.approx(expected, abs=1e-12)
    mean_difference = np.mean([roc_auc_score(y, r) for r in runs_a]) - np.mean([roc_auc_score(y, r) for r in runs_b])
    assert h.sum() == pytest.approx(mean_difference)


def test_paired_t_over_folds_is_scipys_one_sample_t_on_the_folds_differences():
    from scipy.stats import t, ttest_1samp

    y, a, b, group, folds = _clustered_pair(11, clusters=20, folds=5)
    runs_a = np.stack([a, a + np.random.default_rng(2).normal(0, 1, len(a))])  # Two runs: their mean AUC per fold.
    result = paired_auc_test(y, runs_a, b, clusters=group, strata=folds, test="folds")
    differences = [
        np.mean([roc_auc_score(y[folds == f], r[folds == f]) for r in runs_a])
        - roc_auc_score(y[folds == f], b[folds == f])
        for f in range(5)
    ]
    reference = ttest_1samp(differences, 0.0)
    assert result["difference"] == pytest.approx(np.mean(differences))
    assert result["p_value"] == pytest.approx(reference.pvalue) and result["z"] == pytest.approx(reference.statistic)
    assert result["df"] == 4 and result["p_method"] == "folds" and result["test"] == "paired t over 5 folds, 4 df"
    half = t.ppf(0.975, 4) * np.std(differences, ddof=1) / np.sqrt(5)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(
        (np.mean(differences) - half, np.mean(differences) + half)
    )
    # The default at 5 folds of 4 clusters (the demo's 20 scans) is this test.
    assert paired_auc_test(y, runs_a, b, clusters=group, strata=folds)["p_value"] == result["p_value"]
    with pytest.raises(ValueError, match="two folds"):
        paired_auc_test(y, a, b, clusters=group, test="folds")


def test_the_default_test_at_each_size_is_the_one_the_simulation_chose():
    from transfer.statistics import choose_test

    assert choose_test(20, 4, 5) == "folds"  # The demo's 20 scans in 5 folds.
    assert choose_test(40, 8, 5) == "permutation" and choose_test(888, 88, 10) == "permutation"
    assert choose_test(40, 40, 1) == "permutation" and choose_test(30, 30, 1) == "variance"
    assert choose_test(39, 7, 5) == "folds" and choose_test(60, 7, 8) == "folds"  # A fold of 7: too few to exchange.
    assert choose_test(12, 4, 3) == "variance"  # Three folds: two df are too few; the jackknife, on the safe side.
    y, a, b, group, folds = _clustered_pair(4, clusters=12, folds=3)
    assert paired_auc_test(y, a, b, clusters=group, strata=folds)["p_method"] == "variance"


def test_auc_interval_df_is_satterthwaites_from_the_jackknife_values_kurtosis():
    from scipy.stats import kurtosis, t

    from transfer.statistics import _effective_df

    y, a, _, groups = _clustered_case(seed=3, clusters=30)
    leave_out = np.array(
        [roc_auc_score(y[groups != c], a[groups != c]) for c in np.unique(groups)]
    )  # The jackknife's values, each refitted without its cluster.
    n, b = len(leave_out), kurtosis(leave_out, fisher=False)  # scipy's moment kurtosis: 3 for a normal.
    df = min(2 / (2 / (n - 1) + (b - 3) / n), n - 1)
    interval = auc_interval(y, a, groups)
    assert interval["df"] == pytest.approx(df) and auc_interval(y, a, groups, df_from="clusters")["df"] == n - 1
    auc, se = roc_auc_score(y, a), np.sqrt((n - 1) / n * np.sum((leave_out - leave_out.mean()) ** 2))
    logit, half = np.log(auc / (1 - auc)), t.ppf(0.975, df) * se / (auc * (1 - auc))
    assert (interval["ci_low"], interval["ci_high"]) == pytest.approx(
        (1 / (1 + np.exp(-(logit - half))), 1 / (1 + np.exp(-(logit + half)))), rel=1e-9
    )
    # One cluster whose left-out AUC stands apart: kurtosis 28 of 30 values, about 2.2 df where "clusters" says 29.
    heavy = np.r_[np.zeros(29), 1.0]
    assert kurtosis(heavy, fisher=False) == pytest.approx(28.03, abs=0.01)
    assert _effective_df(heavy) == pytest.approx(2 / (2 / 29 + (kurtosis(heavy, fisher=False) - 3) / 30))
    assert 2.1 < _effective_df(heavy) < 2.3
    # Light tails (two values repeated: kurtosis 1) keep n - 1; equal values have no spread: n - 1 too.
    assert _effective_df(np.tile([0.0, 1.0], 15)) == 29 and _effective_df(np.zeros(6)) == 5
    with pytest.raises(ValueError, match="df_from"):
        auc_interval(y, a, groups, df_from="folds")


def test_paired_t_over_folds_has_no_p_value_when_every_fold_differs_alike():
    y = np.tile([0, 1, 0, 1], 10)
    group, folds = np.repeat(np.arange(20), 2), np.repeat(np.arange(20), 2) % 5
    a, b = y.astype(float), np.where(np.arange(40) % 8 == 1, 0.0, y)  # b misses one positive of each fold.
    result = paired_auc_test(y, a, b, clusters=group, strata=folds, test="folds")
    assert np.isnan(result["p_value"]) and np.isnan(result["ci_low"]) and result["difference"] > 0
    assert result["notes"] == ["the 5 folds' AUC differences are all +0.125: no spread, no test"]
