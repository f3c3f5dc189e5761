"""The report's test and interval keep their promise at the sizes people have: a seeded simulation in the suite.

A few hundred synthetic data sets per size (tools/simulate_statistics.py runs thousands and
prints the README's table): two models of equal, known AUC, cases nested in scans, scans in
folds. The promise, checked with a binomial tolerance (a rate is refused only when a true
rate at the promise would give so extreme a count less than 1% of the time): a
false-positive rate at alpha 0.05 of at most 0.07, and a 95% AUC interval that covers the
true AUC at least 90% of the time.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from transfer.statistics import auc_interval, paired_auc_test

ROOT = Path(__file__).resolve().parents[1]
DATASETS = 300
MAX_FALSE_POSITIVE, MIN_COVERAGE, TOLERANCE = 0.07, 0.90, 0.01


def _simulation():
    spec = importlib.util.spec_from_file_location("simulate_statistics", ROOT / "tools" / "simulate_statistics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIMULATION = _simulation()
DESIGNS = {design.name: design for design in SIMULATION.DESIGNS}


@pytest.mark.parametrize("name", ["demo: 5 folds x 4 scans", "40 patients, no folds", "20 patients, no folds"])
def test_false_positive_rate_and_coverage_hold_at_few_clusters(name):
    design = DESIGNS[name]
    rng = np.random.default_rng(20)
    rejected = covered = 0
    for _ in range(DATASETS):
        y, a, b, clusters, folds = SIMULATION.simulate(design, rng)
        rejected += paired_auc_test(y, a, b, clusters, folds)["p_value"] < SIMULATION.ALPHA
        interval = auc_interval(y, a, clusters, folds)
        covered += interval["ci_low"] <= SIMULATION.TRUE_AUC <= interval["ci_high"]
    assert rejected <= binom.ppf(1 - TOLERANCE, DATASETS, MAX_FALSE_POSITIVE), rejected / DATASETS
    assert covered >= binom.ppf(TOLERANCE, DATASETS, MIN_COVERAGE), covered / DATASETS


def test_the_simulated_models_have_the_stated_auc():
    # The true AUC the rates are measured against: a very large data set of the demo's design gets it.
    from sklearn.metrics import roc_auc_score

    design = SIMULATION.Design("large", folds=1, clusters=1500, negatives=5.0)
    y, a, b, _, _ = SIMULATION.simulate(design, np.random.default_rng(1))
    assert roc_auc_score(y, a) == pytest.approx(SIMULATION.TRUE_AUC, abs=0.01)
    assert roc_auc_score(y, b) == pytest.approx(SIMULATION.TRUE_AUC, abs=0.01)
