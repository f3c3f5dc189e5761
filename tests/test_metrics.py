import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from genesis2d.metrics import binary_metrics, bootstrap_auc, delong_test, delong_test_strata, stratified_auc


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
    one_stratum = delong_test_strata(y, a, b, np.zeros(len(y)))
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
