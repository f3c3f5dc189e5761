"""Splits by whole groups (patients, series): the one home of every hold-out in the project.

Whole groups go to one part, so no patient's (or series') images are seen both in
training and in evaluation. `split_groups` is the mechanism; `patient_split` uses
it for the pretraining split (thesis 3.1.7: 90/5/5 of images, per dataset), and
`hold_out_groups` for a share of groups held out (validation series, model
selection patients, label-efficiency subsets).
"""

import zlib

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.90, 0.05, 0.05)  # Thesis 3.1.7.


def split_groups(sizes, fractions, rng):
    """The part (0, 1, ...) of each group: groups shuffled, laid end to end by size.

    A group goes to the part in which the middle of its images falls on the
    cumulative share, so parts get about their fraction of the images.

    Args:
        sizes: pandas.Series of images per group, indexed by group.
        fractions: floats summing to 1, one per part.
        rng: numpy Generator. Shuffles the groups.

    Returns:
        pandas.Series of part indices, indexed like `sizes` (in shuffled order).
    """
    fractions = tuple(float(f) for f in fractions)
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative numbers summing to 1. Received: fractions={fractions}")
    shuffled = sizes.iloc[rng.permutation(len(sizes))]
    middle = (shuffled.cumsum() - shuffled / 2) / shuffled.sum()
    parts = np.searchsorted(np.cumsum(fractions)[:-1], middle.to_numpy(), side="right")
    return pd.Series(parts, index=shuffled.index)


def hold_out_groups(groups, fraction, rng, minimum=0):
    """The set of groups held out: about `fraction` of the distinct groups, at least `minimum`.

    Every group counts once, whatever its size (series for validation, patients for
    model selection). The count is round(fraction * groups), at least `minimum`
    when there are that many groups.
    """
    names = pd.Index(sorted(set(groups)))
    if not len(names) or fraction <= 0:
        return set()
    count = min(len(names), max(minimum, int(round(fraction * len(names)))))
    return set(names[rng.permutation(len(names))[:count]])


def patient_split(frame, fractions=DEFAULT_FRACTIONS, seed=0, patient_cols=("dataset", "patient_id"), by="dataset"):
    """Assigns each row a split so that every patient lies in exactly one split.

    Patients are shuffled (seeded) within each value of `by` and split by image count
    with `split_groups`: a patient whose images' middle falls in the first 90% of that
    dataset's images goes to train, the next 5% to val, the rest to test. Each dataset
    is split on its own, so every dataset is represented in every split in about the
    same proportion.

    Args:
        frame: pandas.DataFrame with the `patient_cols` and `by` columns, one row per image.
        fractions: three floats summing to 1. Defaults to (0.9, 0.05, 0.05).
        seed: int. Defaults to 0. The same seed and rows give the same split.

    Returns:
        pandas.Series of 'train' / 'val' / 'test', aligned with `frame`.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1. Received: fractions={fractions}")
    patient_cols = list(patient_cols)
    result = pd.Series(index=frame.index, dtype=object)
    for group, rows in frame.groupby(by, sort=True):
        counts = rows.groupby(patient_cols, sort=True).size()
        # A per-dataset stream, stable across Python runs (str hash is salted; crc32 is not).
        rng = np.random.default_rng([seed, zlib.crc32(str(group).encode())])
        parts = split_groups(counts, fractions, rng)
        assignment = pd.Series(np.array(SPLITS, dtype=object)[parts.to_numpy()], index=parts.index)
        keys = pd.MultiIndex.from_frame(rows[patient_cols])
        result.loc[rows.index] = assignment.reindex(keys).to_numpy()
    return result


def check_no_leak(frame, patient_cols=("dataset", "patient_id"), split_col="split"):
    """Raises ValueError naming a patient that appears in more than one split."""
    splits_per_patient = frame.groupby(list(patient_cols))[split_col].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        raise ValueError(f"{len(leaking)} patients appear in more than one split, e.g. {leaking.index[0]}")
