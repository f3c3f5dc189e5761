import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from transfer.statistics import binary_metrics, bootstrap_auc, delong_test, paired_auc_test, stratified_auc


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
    one_stratum = paired_auc_test(y, a, b, strata=np.zeros(len(y)))
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
    auc, low, high = bootstrap_auc(y, p, np.arange(120) // 4, iterations=200, strata=strata)
    assert auc == pytest.approx(expected) and low < auc < high


def obuchowski_by_hand(y, a, b, clusters):
    """Obuchowski's (1997) clustered variance of AUC(a) - AUC(b), written out with loops as in the paper."""
    y, clusters = np.asarray(y), np.asarray(clusters)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    names = sorted(set(clusters))
    count = len(names)
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
        return count / ((count - 1) * m) * sum((v10c[u][k] - m_c[k] * theta[u]) * (v10c[w][k] - m_c[k] * theta[w])
                                               for k in range(count))

    def s01(u, w):
        return count / ((count - 1) * n) * sum((v01c[u][k] - n_c[k] * theta[u]) * (v01c[w][k] - n_c[k] * theta[w])
                                               for k in range(count))

    def s11(u, w):
        return count / (count - 1) * sum((v10c[u][k] - m_c[k] * theta[u]) * (v01c[w][k] - n_c[k] * theta[w])
                                         for k in range(count))

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
    result = paired_auc_test(y, a, b, clusters=groups)
    auc_a, auc_b, variance = obuchowski_by_hand(y, a, b, groups)
    assert result["test"].startswith("clustered DeLong")
    assert result["auc_a"] == pytest.approx(auc_a) and result["auc_b"] == pytest.approx(auc_b)
    assert result["variance"] == pytest.approx(variance)
    from scipy.stats import norm

    assert result["p_value"] == pytest.approx(2 * norm.sf(abs((auc_a - auc_b) / np.sqrt(variance))))
    # Every case its own cluster: DeLong's test.
    assert paired_auc_test(y, a, b, clusters=np.arange(len(y)))["test"] == "DeLong"


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
