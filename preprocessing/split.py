"""Patient-level train/validation/test split (thesis 3.1.7).

Whole patients go to one split, so no patient's slices are seen both in training
and in evaluation; the fractions are of images, as in the thesis (90/5/5).
"""

import zlib

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.90, 0.05, 0.05)  # Thesis 3.1.7.


def patient_split(frame, fractions=DEFAULT_FRACTIONS, seed=0, patient_cols=("dataset", "patient_id"), by="dataset"):
    """Assigns each row a split so that every patient lies in exactly one split.

    Patients are shuffled (seeded) within each value of `by` and laid end to end
    by image count; a patient whose images' middle falls in the first 90% of that
    dataset's images goes to train, the next 5% to val, the rest to test. Each dataset is split on its own, so every
    dataset is represented in every split in about the same proportion.

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
    bounds = np.cumsum(fractions)[:2]
    for group, rows in frame.groupby(by, sort=True):
        counts = rows.groupby(patient_cols, sort=True).size()
        # A per-dataset stream, stable across Python runs (str hash is salted; crc32 is not).
        rng = np.random.default_rng([seed, zlib.crc32(str(group).encode())])
        order = rng.permutation(len(counts))
        shuffled = counts.iloc[order]
        # Each patient goes where the middle of its images falls on the cumulative share.
        middle = (shuffled.cumsum() - shuffled / 2) / shuffled.sum()
        labels = np.array(SPLITS, dtype=object)[np.searchsorted(bounds, middle.to_numpy(), side="right")]
        assignment = pd.Series(labels, index=shuffled.index)
        keys = pd.MultiIndex.from_frame(rows[patient_cols])
        result.loc[rows.index] = assignment.reindex(keys).to_numpy()
    return result


def check_no_leak(frame, patient_cols=("dataset", "patient_id"), split_col="split"):
    """Raises ValueError naming a patient that appears in more than one split."""
    splits_per_patient = frame.groupby(list(patient_cols))[split_col].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        raise ValueError(f"{len(leaking)} patients appear in more than one split, e.g. {leaking.index[0]}")
