"""How often the report's tests and intervals keep their promise, measured on synthetic clustered data.

    python tools/simulate_statistics.py                  # the full study (thousands of data sets), prints its table
    python tools/simulate_statistics.py --datasets 300   # quicker, wider binomial error

Each data set has cases nested in clusters (a LUNA16 scan's candidates, a MURA patient's
images) and clusters nested in cross-validation folds, scored by two models whose AUCs are
equal and known: a case's score is mu * label + a cluster effect of its class shared by
both models + a case effect shared by both + each model's own effect of the cluster and
class + each model's own noise, and model b's score is exp() of its own (a monotone map:
same AUC, other scale, so the models are not exchangeable). Positives and negatives of a
cluster carry independent cluster effects, so every positive-negative pair, within a
cluster or across, has the same AUC, Phi(mu / sqrt(2 * sum of the four variances)).
The table gives, per design, each test's false-positive rate at alpha 0.05 (null true) and
each interval's coverage of the true AUC of model a, with their binomial standard errors.
"""

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transfer.statistics import auc_interval, bootstrap_auc, paired_auc_test  # noqa: E402


@dataclass(frozen=True)
class Design:
    """A data-set shape: `folds` x `clusters_per_fold` clusters (the last fold may hold fewer)."""

    name: str
    folds: int
    clusters: int
    positive_share: float = 1.0  # Share of clusters holding positives (the demo's scans all do).
    positives: float = 2.0  # Mean extra positives of a cluster that has any (Poisson, plus one).
    negatives: float = 25.0  # Mean negatives of a cluster (Poisson, plus one).
    model_cluster_sd: float = 0.6  # Each model's own effect of a cluster: what makes the AUC difference cluster.

    @property
    def mu(self):
        """The positives' shift that gives both models TRUE_AUC."""
        total = CLUSTER_SD**2 + CASE_SD**2 + self.model_cluster_sd**2 + MODEL_SD**2
        return norm.ppf(TRUE_AUC) * np.sqrt(2 * total)


DESIGNS = (
    Design("demo: 5 folds x 4 scans", folds=5, clusters=20),
    Design("demo, models differ more by scan", folds=5, clusters=20, positives=1.0, model_cluster_sd=1.2),
    Design("5 folds x 8 scans", folds=5, clusters=40, positive_share=0.8),
    Design("40 patients, no folds", folds=1, clusters=40, positive_share=0.6, positives=1.0, negatives=3.0),
    Design("20 patients, no folds", folds=1, clusters=20, positive_share=0.6, positives=1.0, negatives=3.0),
    Design("LUNA16: 5 folds, 888 scans", folds=5, clusters=888, positive_share=0.67, positives=1.0, negatives=12.0),
)
# Standard deviations: the cluster effect both models see, the case effect both see and each model's own noise
# (each model's own effect of a cluster is the design's: two networks do not fail on the same scans).
CLUSTER_SD, CASE_SD, MODEL_SD = 0.5, 0.5, 0.4
TRUE_AUC = 0.9
ALPHA = 0.05
TESTS = (("delong", "normal"), ("delong", "t"), ("jackknife", "normal"), ("jackknife", "t"))


def simulate(design, rng):
    """One data set: (labels, scores of a, scores of b, clusters, folds)."""
    fold_of = np.arange(design.clusters) % design.folds
    has_positive = rng.random(design.clusters) < design.positive_share
    for f in range(design.folds):  # Every fold holds positives in at least one cluster, as LUNA16's do.
        members = np.flatnonzero(fold_of == f)
        if not has_positive[members].any():
            has_positive[rng.choice(members)] = True
    m_c = np.where(has_positive, 1 + rng.poisson(design.positives, design.clusters), 0)
    n_c = 1 + rng.poisson(design.negatives, design.clusters)
    clusters = np.concatenate([np.repeat(np.arange(design.clusters), m_c), np.repeat(np.arange(design.clusters), n_c)])
    y = np.concatenate([np.ones(m_c.sum(), int), np.zeros(n_c.sum(), int)])
    effect = rng.normal(0, CLUSTER_SD, (design.clusters, 2))[clusters, y]  # Independent per class of a cluster.
    latent = design.mu * y + effect + rng.normal(0, CASE_SD, len(y))
    own = rng.normal(0, design.model_cluster_sd, (2, design.clusters, 2))[:, clusters, y]
    a = latent + own[0] + rng.normal(0, MODEL_SD, len(y))
    b = np.exp(latent + own[1] + rng.normal(0, MODEL_SD, len(y)))
    return y, a, b, clusters, fold_of[clusters]


def measure(design, datasets, seed, bootstrap=200):
    """{method: (rate, standard error)}: false-positive rates of the tests, coverage of the intervals."""
    rng = np.random.default_rng(seed)
    rejections = {t: 0 for t in TESTS}
    covered = {"jackknife logit-t interval": 0, "percentile bootstrap": 0}
    for i in range(datasets):
        y, a, b, clusters, folds = simulate(design, rng)
        for variance in dict(TESTS):  # One fit per variance; the normal reference's p-value from the same z.
            result = paired_auc_test(y, a, b, clusters, folds, variance=variance, reference="t")
            rejections[(variance, "t")] += result["p_value"] < ALPHA
            rejections[(variance, "normal")] += 2 * norm.sf(abs(result["z"])) < ALPHA
        interval = auc_interval(y, a, clusters, folds)
        covered["jackknife logit-t interval"] += interval["ci_low"] <= TRUE_AUC <= interval["ci_high"]
        if bootstrap:
            _, low, high = bootstrap_auc(y, a, clusters, bootstrap, seed=i, strata=folds)
            covered["percentile bootstrap"] += low <= TRUE_AUC <= high
    rates = {f"{v} variance, {r} reference: false-positive rate": rejections[(v, r)] / datasets for v, r in TESTS}
    rates.update(
        {
            f"{name}: coverage": count / datasets
            for name, count in covered.items()
            if bootstrap or name != "percentile bootstrap"
        }
    )
    return {name: (rate, np.sqrt(max(rate * (1 - rate), 1e-12) / datasets)) for name, rate in rates.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=2000, help="data sets per design. Default: 2000.")
    parser.add_argument(
        "--bootstrap", type=int, default=200, help="percentile bootstrap resamples (0: skip). Default: 200."
    )
    parser.add_argument("--seed", type=int, default=0, help="seed. Default: 0.")
    parser.add_argument("--designs", nargs="*", type=int, help="indices into the designs (default: all).")
    args = parser.parse_args(argv)
    designs = [DESIGNS[i] for i in args.designs] if args.designs else DESIGNS
    print(
        f"{args.datasets} data sets per design, true AUC {TRUE_AUC} for both models, alpha {ALPHA}, "
        f"nominal coverage 0.95; +- is one binomial standard error.",
        flush=True,
    )
    results = {}
    for index, design in enumerate(designs):
        start = time.perf_counter()
        results[design.name] = measure(design, args.datasets, args.seed + index, args.bootstrap)
        print(f"  {design.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    names = list(next(iter(results.values())))
    print("| method | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r[name][0]:.3f} +- {r[name][1]:.3f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
