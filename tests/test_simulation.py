"""The report's test and intervals keep their promise where clusters differ: a seeded simulation in the suite.

A few hundred synthetic data sets per design (tools/simulate_statistics.py runs thousands and
prints the README's table): two models of equal AUC, cases nested in clusters that differ in
size, in their share of positives (many with none) and in their correlation, clusters in folds.
Each promise is checked with a binomial tolerance: a rate is refused only when a true rate at
the promise's bound would give so extreme a count less than 1% of the time.
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool
from scipy.stats import binom

from transfer.statistics import auc_interval, paired_auc_test

ROOT = Path(__file__).resolve().parents[1]
DATASETS = 400
TOLERANCE = 0.01


SIMULATION = load_tool("simulate_statistics")
HARSH = {design.name: design for design in SIMULATION.HARSH}


def _rates(design, seed, datasets=DATASETS, compare=None):
    """Rejections of the default test and of another on the same data sets (`compare`: paired_auc_test's keywords)."""
    rng = np.random.default_rng(seed)
    rejected = other = 0
    for _ in range(datasets):
        y, a, b, clusters, folds = design.simulate(rng)
        rejected += paired_auc_test(y, a, b, clusters, folds)["p_value"] < SIMULATION.ALPHA
        if compare:
            other += paired_auc_test(y, a, b, clusters, folds, **compare)["p_value"] < SIMULATION.ALPHA
    return rejected, other


def _coverage(design, seed, datasets=DATASETS):
    """Data sets whose AUC interval (the default's) holds model a's population AUC."""
    rng = np.random.default_rng(seed)
    covered = 0
    for _ in range(datasets):
        y, a, _, clusters, folds = design.simulate(rng)
        interval = auc_interval(y, a, clusters, folds)
        covered += interval["ci_low"] <= design.true_auc <= interval["ci_high"]
    return covered


def _at_most(count, rate, datasets=DATASETS):
    return count <= binom.ppf(1 - TOLERANCE, datasets, rate)


def _at_least(count, rate, datasets=DATASETS):
    return count >= binom.ppf(TOLERANCE, datasets, rate)


JACKKNIFE = {"variance": "jackknife", "reference": "normal", "test": "variance"}  # The default before the fold t.


@pytest.mark.parametrize(
    "name",
    ["clusters differ: 5 folds x 4 (the demo's layout)", "most clusters without a positive: 5 folds x 4"],
)
def test_default_test_holds_its_window_at_4_clusters_a_fold(name):
    # The paired t over the 5 folds (README): within [0.03, 0.065], where the jackknife with a normal reference fell
    # below 0.03 (it must still reject less often on the same data sets, or the design no longer tells them apart).
    datasets = 1000
    rejected, jackknife = _rates(HARSH[name], seed=20, datasets=datasets, compare=JACKKNIFE)
    assert _at_most(rejected, 0.065, datasets) and _at_least(rejected, 0.03, datasets), rejected / datasets
    assert jackknife < rejected, (jackknife / datasets, rejected / datasets)
    assert _at_least(_coverage(HARSH[name], seed=20), 0.94)


def test_default_test_holds_its_window_at_20_patients_without_folds():
    rejected, _ = _rates(HARSH["patients of 1-10 images: 20, no folds"], seed=21)
    assert _at_most(rejected, 0.065) and _at_least(rejected, 0.03), rejected / DATASETS
    assert _at_least(_coverage(HARSH["patients of 1-10 images: 20, no folds"], seed=21), 0.94)


def test_permutation_test_holds_its_window_at_40_clusters_in_folds_of_8():
    # The default there (README): the cluster permutation test, where Obuchowski's t test rejects about 0.10.
    obuchowski = {"variance": "delong", "reference": "t", "test": "variance"}
    rejected, old = _rates(HARSH["most without a positive: 5 folds x 8"], seed=22, compare=obuchowski)
    assert _at_most(rejected, 0.065) and _at_least(rejected, 0.03), rejected / DATASETS
    assert old > rejected, f"the design no longer tells the tests apart: {old / DATASETS}"  # About 0.10 and 0.06.


def test_auc_interval_covers_at_40_clusters_without_folds():
    # Where the df of clusters covered 0.931-0.937 (README), the effective df covers 0.94 or more.
    assert _at_least(_coverage(HARSH["clusters differ: 40, no folds"], seed=23, datasets=1000), 0.94, 1000)


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
