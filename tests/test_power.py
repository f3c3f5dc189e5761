"""What difference the data can detect: the plan's simulated figure against the report's own test's power."""

import numpy as np
import pytest
from scipy.stats import norm

from transfer.power import detectable_difference, observed_detectable, simulate
from transfer.statistics import paired_auc_test

DATASETS = 200


def _design(folds, clusters, positives, negatives, seed=0):
    """Per fold, (clusters, 2) positives (Poisson) and negatives (1 + Poisson) per cluster."""
    rng = np.random.default_rng(seed)
    return [
        np.column_stack([rng.poisson(positives, clusters), 1 + rng.poisson(negatives, clusters)]) for _ in range(folds)
    ]


def _power(design, auc, difference, seed):
    """Share of data sets of `design` with a true AUC difference on which the report's test rejects at 0.05."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(DATASETS):
        y, a, b, clusters, folds = simulate(design, auc, difference, rng=rng)
        rejected += paired_auc_test(y, a, b, clusters=clusters, strata=folds)["p_value"] < 0.05
    return rejected / DATASETS


@pytest.mark.parametrize(
    "design, test",
    [
        (_design(5, 12, 1.5, 10), "permutation"),  # 60 scans in 5 folds: the cluster permutation test.
        (_design(5, 5, 2.0, 10), "folds"),  # 25 scans in 5 folds: the paired t over folds.
    ],
)
def test_the_plans_detectable_difference_is_where_the_reports_test_reaches_80_percent_power(design, test):
    """Data simulated with a known difference at the planned shape: the difference at which the report's own test
    rejects 80% of the time (interpolated between 0.8, 1 and 1.25 times the plan's) lies within 20% of the plan's."""
    plan = detectable_difference(design, 0.8)
    assert plan["test"] == test
    multiples = (0.8, 1.0, 1.25)
    powers = [_power(design, 0.8, m * plan["difference"], seed=index) for index, m in enumerate(multiples)]
    print(f"{test}: plan {plan['difference']:.4f}; power at 0.8x, 1x, 1.25x: {powers}")
    assert powers[0] < 0.8 < powers[2], powers  # Bracketed: the 80% point lies within [0.8, 1.25] x the plan's.
    low = 0 if powers[1] >= 0.8 else 1
    share = (0.8 - powers[low]) / (powers[low + 1] - powers[low])
    simulated = (multiples[low] + share * (multiples[low + 1] - multiples[low])) * plan["difference"]
    print(f"{test}: simulated 80% point {simulated:.4f}")
    assert abs(plan["difference"] - simulated) <= 0.2 * simulated


def test_the_plans_figure_grows_as_the_data_shrink_and_the_clusters_tighten():
    large, small = _design(5, 40, 1.5, 10), _design(5, 10, 1.5, 10)
    assert detectable_difference(large, 0.8)["difference"] < detectable_difference(small, 0.8)["difference"]
    loose = detectable_difference(large, 0.8, within=0.3)["difference"]
    assert loose < detectable_difference(large, 0.8, within=0.7)["difference"]


def test_the_observed_detectable_difference_is_the_power_sum_of_quantiles_times_the_standard_error():
    from scipy.stats import t

    standard_error = 0.01
    half = norm.ppf(0.975) * standard_error
    expected = (norm.ppf(0.975) + norm.ppf(0.8)) * standard_error  # 2.80 standard errors.
    assert observed_detectable(0.05 - half, 0.05 + half) == pytest.approx(expected)
    half = t(4).ppf(0.975) * standard_error  # The paired t over 5 folds.
    assert observed_detectable(-half, half, df=4) == pytest.approx((t(4).ppf(0.975) + t(4).ppf(0.8)) * standard_error)
    assert np.isnan(observed_detectable(np.nan, np.nan))


def test_the_stored_figure_of_the_thesiss_own_data_is_what_the_tool_computes():
    """luna16/configs/thesis_power.yaml, which the report reads, against `python tools/thesis_power.py` run now."""
    from pathlib import Path

    import yaml
    from conftest import load_tool

    from luna16.study_task import TASK, even_design

    design = even_design(888, 1157, 753418, 5)
    assert [len(fold) for fold in design] == [178, 178, 178, 177, 177]
    assert sum(int(f[:, 0].sum()) for f in design) == 1157 and sum(int(f[:, 1].sum()) for f in design) == 753418
    assert max(int(f[:, 1].max() - f[:, 1].min()) for f in design) <= 1  # As evenly as they go.
    stored = yaml.safe_load(Path(TASK.thesis_power_file()).read_text())
    assert load_tool("thesis_power").thesis_power(TASK) == stored
