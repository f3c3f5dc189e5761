"""The report's test and intervals keep their promise where clusters differ: a seeded simulation in the suite.

A few hundred synthetic data sets per design (tools/simulate_statistics.py runs thousands and
prints the README's table): two models of equal AUC, cases nested in clusters that differ in
size, in their share of positives (many with none) and in their correlation, clusters in folds.
Each promise is checked with a binomial tolerance: a rate is refused only when a true rate at
the promise's bound would give so extreme a count less than 1% of the time.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from transfer.statistics import auc_interval, paired_auc_test

ROOT = Path(__file__).resolve().parents[1]
DATASETS = 400
TOLERANCE = 0.01


def _simulation():
    spec = importlib.util.spec_from_file_location("simulate_statistics", ROOT / "tools" / "simulate_statistics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIMULATION = _simulation()
HARSH = {design.name: design for design in SIMULATION.HARSH}


def _rates(design, seed):
    """Rejections of the default test and of Obuchowski's t test (the old default), and the AUC interval's hits."""
    rng = np.random.default_rng(seed)
    rejected = old = covered = 0
    for _ in range(DATASETS):
        y, a, b, clusters, folds = design.simulate(rng)
        rejected += paired_auc_test(y, a, b, clusters, folds)["p_value"] < SIMULATION.ALPHA
        obuchowski = paired_auc_test(y, a, b, clusters, folds, variance="delong", reference="t", test="variance")
        old += obuchowski["p_value"] < SIMULATION.ALPHA
        interval = auc_interval(y, a, clusters, folds)
        covered += interval["ci_low"] <= design.true_auc <= interval["ci_high"]
    return rejected, old, covered


def _at_most(count, rate):
    return count <= binom.ppf(1 - TOLERANCE, DATASETS, rate)


def _at_least(count, rate):
    return count >= binom.ppf(TOLERANCE, DATASETS, rate)


@pytest.mark.parametrize(
    "name",
    ["clusters differ: 5 folds x 4 (the demo's layout)", "most clusters without a positive: 5 folds x 4"],
)
def test_default_test_holds_its_window_at_4_clusters_a_fold(name):
    # The paired t over the 5 folds (README): within [0.03, 0.065], where the jackknife fell below 0.03 and the
    # permutation test and Obuchowski's t test rose above 0.065; and the AUC interval covers at least 0.94.
    rejected, _, covered = _rates(HARSH[name], seed=20)
    assert _at_most(rejected, 0.065) and _at_least(rejected, 0.03), rejected / DATASETS
    assert _at_least(covered, 0.94), covered / DATASETS


def test_default_test_holds_its_window_at_20_patients_without_folds():
    rejected, _, covered = _rates(HARSH["patients of 1-10 images: 20, no folds"], seed=21)
    assert _at_most(rejected, 0.065) and _at_least(rejected, 0.03), rejected / DATASETS
    assert _at_least(covered, 0.94), covered / DATASETS


def test_permutation_test_holds_its_window_at_40_clusters_in_folds_of_8():
    # The default there (README): the cluster permutation test, where Obuchowski's t test rejects about 0.10.
    rejected, old, _ = _rates(HARSH["most without a positive: 5 folds x 8"], seed=22)
    assert _at_most(rejected, 0.065) and _at_least(rejected, 0.03), rejected / DATASETS
    assert old > rejected, f"the design no longer tells the tests apart: {old / DATASETS}"  # About 0.10 and 0.06.


def test_auc_interval_covers_at_40_clusters_without_folds():
    # Where the df of clusters covered 0.931-0.937 (README), the effective df covers at least 0.94.
    _, _, covered = _rates(HARSH["clusters differ: 40, no folds"], seed=23)
    assert _at_least(covered, 0.94), covered / DATASETS


def test_the_simulated_models_have_the_stated_auc():
    # The population AUC the coverage is measured against: pairs across clusters of a very large data set.
    from sklearn.metrics import roc_auc_score

    for design in (HARSH["clusters differ: 40, no folds"], HARSH["ROC curves cross: 40, no folds"]):
        large = SIMULATION.Harsh("large", folds=1, clusters=4000, crossing=design.crossing)
        y, a, b, _, _ = large.simulate(np.random.default_rng(1))
        assert roc_auc_score(y, a) == pytest.approx(design.true_auc, abs=0.01)
        assert roc_auc_score(y, b) == pytest.approx(design.true_auc, abs=0.01)
    alike = SIMULATION.Design("large", folds=1, clusters=1500, negatives=5.0)
    y, a, b, _, _ = SIMULATION.simulate(alike, np.random.default_rng(1))
    assert roc_auc_score(y, a) == pytest.approx(SIMULATION.TRUE_AUC, abs=0.01)
