"""The linear probe: C chosen on the training split by grouped cross-validation, then refitted."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from plumbing.errors import InputError
from transfer.probe import C_GRID, fit_probe


def grouped_data(rng, groups=60, copies=6, dims=40, signal=0.0):
    """`copies` near-identical samples per group (views, augmented copies of one case), one label per group."""
    labels = (rng.random(groups) < 0.5).astype(int)
    centres = rng.normal(size=(groups, dims)) + signal * labels[:, None]
    features = np.repeat(centres, copies, axis=0) + 0.01 * rng.normal(size=(groups * copies, dims))
    return features, np.repeat(labels, copies), np.repeat(np.arange(groups), copies)


def test_probe_chooses_c_by_grouped_cross_validation_and_refits():
    rng = np.random.default_rng(0)
    x, y, g = grouped_data(rng, signal=0.6)
    model, record = fit_probe(x, y, g, seed=3)
    # The chosen C has the best grouped cross-validated AUC, computed here independently.
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=3)
    aucs = {
        c: cross_val_score(
            make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)),
            x,
            y,
            groups=g,
            cv=splitter,
            scoring="roc_auc",
        ).mean()
        for c in C_GRID
    }
    best = max(aucs, key=aucs.get)
    assert record["C"] == best and record["cv_auc"] == pytest.approx(aucs[best])
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=5000)).fit(x, y)
    test_x, test_y, _ = grouped_data(np.random.default_rng(1), signal=0.6)
    np.testing.assert_allclose(model.predict_proba(test_x)[:, 1], reference.predict_proba(test_x)[:, 1], rtol=1e-9)
    assert roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]) > 0.8


def test_copies_of_one_case_never_straddle_a_split():
    """Pure noise with six copies per case: grouped folds see chance, where plain folds would memorise the copies."""
    rng = np.random.default_rng(2)
    x, y, g = grouped_data(rng, signal=0.0)
    _, record = fit_probe(x, y, g)
    assert record["cv_auc"] < 0.7
    leaky = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(C=100, max_iter=5000)),
        x,
        y,
        cv=KFold(5, shuffle=True, random_state=0),
        scoring="roc_auc",
    ).mean()
    assert leaky > 0.9  # What ungrouped folds would report.


def test_a_probe_without_two_groups_of_each_class_is_one_line():
    x = np.random.default_rng(0).normal(size=(12, 4))
    with pytest.raises(InputError, match="1 positive group"):
        fit_probe(x, np.array([0] * 9 + [1] * 3), np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]))
