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

from transfer.statistics import (  # noqa: E402
    auc_interval,
    bootstrap_auc,
    choose_test,
    paired_auc_test,
)


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
DEFAULT_NAME = "default (permutation from 40 clusters, 8 a fold; else paired t over 5+ folds; else jackknife, normal)"
# The AUC interval's df rules (transfer.statistics.DF_FROM) and their names in the table.
INTERVAL_DF = {"sides": "the fewer side", "clusters": "clusters", "effective": "effective clusters (the default)"}


def simulate(design, rng):
    """One data set: (labels, scores of a, scores of b, clusters, folds)."""
    if isinstance(design, Harsh):
        return design.simulate(rng)
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


@dataclass(frozen=True)
class Harsh:
    """Clusters that differ: their size, their share of positives (many with none), their correlation.

    A case's score under model m is mu * label + u_c + v_mc + e_i + n_mi: u_c the cluster's effect both models
    see (variance 0.6 rho_c), v_mc model m's own effect of the cluster (0.4 rho_c), e_i the case's effect both see
    (0.4 (1 - rho_c)), n_mi model m's own noise (0.6 (1 - rho_c)). So within a cluster a model's scores correlate
    rho_c (drawn per cluster), the two models' scores of a case correlate 0.5 (0.46-0.54), and every case's score is
    N(mu * label, 1) whatever its cluster: a positive and a negative of two clusters are ordered right with
    probability Phi(mu / sqrt 2) = TRUE_AUC, the population AUC. The cluster effect is shared by its positives and
    negatives, as a scan's noise is, so pairs within a cluster are easier (a mean-of-folds AUC over few clusters sits
    above the population AUC: `bias` measures it). Model b's score is exp() of its own (another scale, same AUC);
    with `crossing`, b's positives spread twice as wide (sd 2), with mu raised to keep the AUC: the two ROC curves
    cross, the models are not exchangeable, and only the AUCs are equal.
    """

    name: str
    folds: int
    clusters: int
    sizes: tuple = (5, 30)  # Cases per cluster, uniform integers.
    empty_share: float = 0.3  # Share of clusters without a positive (at least two per fold hold one).
    share: tuple = (0.5, 1.0)  # Beta(a, b) of the positives' share in a cluster that holds any (mean 1/3).
    rho: tuple = (0.3, 0.7)  # Within-cluster correlation of a model's scores, uniform per cluster.
    crossing: bool = False
    true_auc: float = 0.8

    def simulate(self, rng):
        """One data set: (labels, scores of a, scores of b, clusters, folds)."""
        count = self.clusters
        fold_of = np.arange(count) % self.folds
        size = rng.integers(self.sizes[0], self.sizes[1] + 1, count)
        has = rng.random(count) >= self.empty_share
        m_c = np.where(has, np.clip(rng.binomial(size, rng.beta(*self.share, count)), 1, size), 0)
        for f in range(self.folds):  # Two clusters with a positive and two with a negative per fold, or no test.
            members = np.flatnonzero(fold_of == f)
            for chosen in rng.permutation(members)[: max(0, 2 - int((m_c[members] > 0).sum()))]:
                m_c[chosen] = max(1, m_c[chosen])
            for chosen in rng.permutation(members)[: max(0, 2 - int((m_c[members] < size[members]).sum()))]:
                size[chosen] = m_c[chosen] + 1
        n_c = size - m_c
        ids = np.arange(count)
        clusters = np.concatenate([np.repeat(ids, m_c), np.repeat(ids, n_c)])
        y = np.concatenate([np.ones(m_c.sum(), int), np.zeros(n_c.sum(), int)])
        rho = rng.uniform(*self.rho, count)
        shared = rng.normal(0, np.sqrt(0.6 * rho))[clusters] + rng.normal(0, np.sqrt(0.4 * (1 - rho[clusters])))
        own = [
            rng.normal(0, np.sqrt(0.4 * rho))[clusters] + rng.normal(0, np.sqrt(0.6 * (1 - rho[clusters])))
            for _ in range(2)
        ]
        mu = norm.ppf(self.true_auc) * np.sqrt(2)
        a = mu * y + shared + own[0]
        if self.crossing:
            spread = np.where(y == 1, 2.0, 1.0)
            b = np.exp(norm.ppf(self.true_auc) * np.sqrt(1 + 2.0**2) * y + spread * (shared + own[1]))
        else:
            b = np.exp(mu * y + shared + own[1])
        return y, a, b, clusters, fold_of[clusters]


HARSH = (
    Harsh("clusters differ: 5 folds x 4 (the demo's layout)", folds=5, clusters=20),
    Harsh("most clusters without a positive: 5 folds x 4", folds=5, clusters=20, empty_share=0.8),
    Harsh("patients of 1-10 images: 20, no folds", folds=1, clusters=20, sizes=(1, 10), empty_share=0.4, share=(2, 1)),
    Harsh("clusters differ: 40, no folds", folds=1, clusters=40),
    Harsh("most without a positive: 5 folds x 8", folds=5, clusters=40, empty_share=0.8),
    Harsh("patients of 1-10 images: 40, no folds", folds=1, clusters=40, sizes=(1, 10), empty_share=0.4, share=(2, 1)),
    Harsh("ROC curves cross: 5 folds x 4", folds=5, clusters=20, crossing=True),
    Harsh("ROC curves cross: 40, no folds", folds=1, clusters=40, crossing=True),
    Harsh("LUNA16-like: 888 in 10 folds, 2/3 without a positive", folds=10, clusters=888, empty_share=0.67),
    Harsh("ROC curves cross: 888 in 10 folds", folds=10, clusters=888, empty_share=0.67, crossing=True),
)


def measure(design, datasets, seed, bootstrap=200, permutations=None):
    """{method: (rate, standard error)}: false-positive rates of the tests, coverage of the intervals; and
    {figure: value}: the intervals' widths against the Monte Carlo spread, the mean-of-folds AUC's bias."""
    rng = np.random.default_rng(seed)
    true_auc = getattr(design, "true_auc", TRUE_AUC)
    rejections = {name: 0 for name in (*TESTS, "permutation", "folds", "auto")}
    covered = {f"jackknife logit-t interval, df of {name}": 0 for name in INTERVAL_DF.values()}
    covered["percentile bootstrap"] = 0
    estimates, differences = [], []
    widths = {name: [] for name in (*INTERVAL_DF, "delong", "jackknife", "jackknife normal", "folds")}
    for i in range(datasets):
        y, a, b, clusters, folds = simulate(design, rng)
        for variance in dict(TESTS):  # One fit per variance; the normal reference's p-value from the same z.
            result = paired_auc_test(y, a, b, clusters, folds, variance=variance, reference="t", test="variance")
            rejections[(variance, "t")] += result["p_value"] < ALPHA
            rejections[(variance, "normal")] += 2 * norm.sf(abs(result["z"])) < ALPHA
            widths[variance].append(result["ci_high"] - result["ci_low"])
            if variance == "delong":
                differences.append(result["difference"])
            else:
                widths["jackknife normal"].append(2 * norm.ppf(0.975) * np.sqrt(result["variance"]))
                jackknife_normal = 2 * norm.sf(abs(result["z"]))
        exchanged = paired_auc_test(y, a, b, clusters, folds, test="permutation", permutations=permutations, seed=i)
        rejections["permutation"] += exchanged["p_value"] < ALPHA
        by_folds = None
        if exchanged["folds"] > 1:
            by_folds = paired_auc_test(y, a, b, clusters, folds, test="folds")
            rejections["folds"] += by_folds["p_value"] < ALPHA
            widths["folds"].append(by_folds["ci_high"] - by_folds["ci_low"])
        auto = choose_test(exchanged["clusters"], exchanged["smallest_fold"], exchanged["folds"])
        p_values = {"permutation": exchanged["p_value"], "variance": jackknife_normal}
        p_values["folds"] = by_folds["p_value"] if by_folds else np.nan
        rejections["auto"] += p_values[auto] < ALPHA
        for df_from, name in INTERVAL_DF.items():
            interval = auc_interval(y, a, clusters, folds, df_from=df_from)
            widths[df_from].append(interval["ci_high"] - interval["ci_low"])
            covered[f"jackknife logit-t interval, df of {name}"] += (
                interval["ci_low"] <= true_auc <= interval["ci_high"]
            )
        estimates.append(interval["auc"])
        if bootstrap:
            _, low, high = bootstrap_auc(y, a, clusters, bootstrap, seed=i, strata=folds)
            covered["percentile bootstrap"] += low <= true_auc <= high
    rates = {f"{v} variance, {r} reference: false-positive rate": rejections[(v, r)] / datasets for v, r in TESTS}
    rates["cluster permutation: false-positive rate"] = rejections["permutation"] / datasets
    # Without folds there is nothing to take a t over: "-" in the table.
    rates["paired t over folds: false-positive rate"] = rejections["folds"] / datasets if widths["folds"] else np.nan
    rates[f"{DEFAULT_NAME}: false-positive rate"] = rejections["auto"] / datasets
    rates.update(
        {
            f"{name}: coverage": count / datasets
            for name, count in covered.items()
            if bootstrap or name != "percentile bootstrap"
        }
    )
    needed = 2 * norm.ppf(0.975)  # A 95% interval's width if the estimate's spread were known: 3.92 sd.
    figures = {
        **{
            f"AUC interval (df of {name}) width / (3.92 x Monte Carlo sd)": np.mean(widths[df_from])
            / (needed * np.std(estimates))
            for df_from, name in INTERVAL_DF.items()
        },
        "difference interval (DeLong, t) width / (3.92 x sd)": np.mean(widths["delong"])
        / (needed * np.std(differences)),
        "difference interval (jackknife, t) width / (3.92 x sd)": np.mean(widths["jackknife"])
        / (needed * np.std(differences)),
        "difference interval (jackknife, normal) width / (3.92 x sd)": np.mean(widths["jackknife normal"])
        / (needed * np.std(differences)),
        "difference interval (paired t over folds) width / (3.92 x sd)": np.mean(widths["folds"])
        / (needed * np.std(differences))
        if widths["folds"]
        else np.nan,
        "mean-of-folds AUC - population AUC (bias)": np.mean(estimates) - true_auc,
    }
    rates = {name: (rate, np.sqrt(max(rate * (1 - rate), 1e-12) / datasets)) for name, rate in rates.items()}
    return rates, figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=4000, help="data sets per design. Default: 4000.")
    parser.add_argument(
        "--bootstrap", type=int, default=0, help="percentile bootstrap resamples (0: skip). Default: 0."
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=None,
        help="Monte Carlo sign patterns of the permutation test above its exact range (default: the report's).",
    )
    parser.add_argument(
        "--large-datasets",
        type=int,
        default=2000,
        help="data sets per design of more than 100 clusters (a second each). Default: 2000.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed. Default: 0.")
    parser.add_argument(
        "--set",
        choices=("harsh", "alike", "all"),
        default="harsh",
        help="harsh: clusters that differ (the defaults are chosen on these); alike: the first designs. "
        "Default: harsh.",
    )
    parser.add_argument("--designs", nargs="*", type=int, help="indices into the set's designs (default: all).")
    args = parser.parse_args(argv)
    pool = {"harsh": HARSH, "alike": DESIGNS, "all": DESIGNS + HARSH}[args.set]
    designs = [pool[i] for i in args.designs] if args.designs else pool
    print(
        f"{args.datasets} data sets per design ({args.large_datasets} above 100 clusters), equal AUCs, "
        f"alpha {ALPHA}, nominal coverage 0.95; "
        "[low-high] is the 95% Monte Carlo interval (rate +- 1.96 binomial standard errors).",
        flush=True,
    )
    results, figures = {}, {}
    for design in designs:
        start = time.perf_counter()
        seed = args.seed + 1000 * (design in HARSH) + pool.index(design)
        datasets = args.large_datasets if design.clusters > 100 else args.datasets
        results[design.name], figures[design.name] = measure(design, datasets, seed, args.bootstrap, args.permutations)
        print(f"  {design.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print("| method | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for name in next(iter(results.values())):
        cells = [
            f"{r[name][0]:.3f} [{r[name][0] - 1.96 * r[name][1]:.3f}-{r[name][0] + 1.96 * r[name][1]:.3f}]"
            if np.isfinite(r[name][0])
            else "-"
            for r in results.values()
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name in next(iter(figures.values())):
        print(
            f"| {name} | "
            + " | ".join(
                "-" if not np.isfinite(f[name]) else f"{f[name]:+.3f}" if "bias" in name else f"{f[name]:.2f}"
                for f in figures.values()
            )
            + " |"
        )


if __name__ == "__main__":
    main()
