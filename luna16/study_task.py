"""LUNA16 as the study runs it (`transfer.tasks.StudyTask`): its root's checks, its patch extraction shared by the
cells, the counts of a fold, the official FROC and CPM of each cell, and the report's CPM section."""

import json
import os
from pathlib import Path

import numpy as np

from transfer.tasks import CellCounts, SharedStep, StudyTask

VIEWS = 3
PATCHES = "luna16/patches"  # The shared step's key.
# The thesis's test data: its 888 scans (4.2.1.1) in five folds of subset pairs (4.2.1.7), with its 1,157 positive
# and 753,418 negative patches (4.2.1.2). How they spread over the scans it does not say: spread as evenly as they
# go, the most favourable spread (the fewer scans hold them, the more they cluster and the less can be detected).
THESIS_SCANS, THESIS_POSITIVES, THESIS_NEGATIVES, THESIS_FOLDS = 888, 1_157, 753_418, 5


class Luna16Study(StudyTask):
    name, title = "luna16", "LUNA16"
    root_help = "LUNA16 folder as distributed (subset0..9, candidates_V2.csv, annotations.csv)."
    held_out = "scans"
    test_data = "LUNA16 test folds"
    expected_auc = (0.98, "the thesis's six LUNA16 cells, 0.976-0.994, Fig. 5.1")
    module, options_class = "luna16.experiment", "Luna16Options"

    def imposed(self, place):
        return {"patches": str(self.patches_dir(place)), "folds": list(place.folds)}

    def patches_dir(self, place):
        return Path(place.out) / "luna16_patches"

    def check_root(self, root, options):
        from luna16.data import candidates_path, read_candidates, scans_by_subset
        from plumbing.errors import InputError

        read_candidates(root)
        scans_by_subset(root, options.allow_outside_root)
        annotations = candidates_path(root).parent / "annotations.csv"
        if not annotations.is_file():
            raise InputError(
                annotations,
                "is missing: the LUNA16 FROC and CPM of every cell need the nodule annotations as distributed",
            )

    def shared_steps(self, root, options, place):
        from luna16.data import PatchOptions, PatchSettings, read_candidates

        settings = {name: getattr(options, name) for name in PatchSettings.__dataclass_fields__}
        patches = PatchOptions(data=str(root), out=str(self.patches_dir(place)), seed=place.seed, **settings)
        candidates = read_candidates(root)
        positives = int(candidates["class"].sum())
        stored = (len(candidates) + positives * (patches.positive_copies - 1)) * VIEWS
        return [
            SharedStep(
                PATCHES,
                f"LUNA16 candidate patches ({patches.patch_size} px, method {patches.method})",
                action=lambda: _extract(patches),
                finished=lambda: _patches_finished(Path(patches.out)),
                counts=f"{candidates['seriesuid'].nunique():,} scans, {len(candidates):,} candidates "
                f"({positives:,} positive)",
                # ~1.5 ms of CPU per candidate (benchmarks/scale.py, README), spread over --workers processes.
                seconds=len(candidates) * 0.0015 / (patches.workers or os.cpu_count() or 1),
                disk=stored * patches.patch_size**2 * 2,
            )
        ]

    def test_design(self, root, options):
        """Per fold, each test scan's positive and negative candidates; the patch level counts each of a candidate's
        three views as a case of its scan."""
        candidates = self._located(root, options)
        folds = []
        for fold in options.folds:
            test = candidates[candidates["subset"].isin([2 * fold - 2, 2 * fold - 1])]
            by_scan = test.groupby("seriesuid")["class"].agg(["sum", "count"])
            folds.append(np.column_stack([by_scan["sum"], by_scan["count"] - by_scan["sum"]]).astype(int))
        return {"candidate": folds, "patch": [fold * VIEWS for fold in folds]}

    def thesis_sizes(self):
        words = (
            f"the thesis's {THESIS_SCANS} scans (4.2.1.1) in {THESIS_FOLDS} folds of subset pairs (4.2.1.7) with its "
            f"{THESIS_POSITIVES:,} positive and {THESIS_NEGATIVES:,} negative patches (4.2.1.2), spread over the scans "
            "as evenly as they go (the most favourable spread; the thesis does not give it)"
        )
        return words, "patch", even_design(THESIS_SCANS, THESIS_POSITIVES, THESIS_NEGATIVES, THESIS_FOLDS)

    def thesis_power_file(self):
        return Path(__file__).with_name("configs") / "thesis_power.yaml"

    def _located(self, root, options):
        """The candidates with the subset of their scan, those of no scan on disk left out."""
        from luna16.data import read_candidates, scans_by_subset

        candidates = read_candidates(root)
        found = scans_by_subset(root, options.allow_outside_root)
        subset_of = {uid: int(subset) for subset, scans in found.items() for uid in scans}
        return candidates.assign(subset=candidates["seriesuid"].map(subset_of)).dropna(subset=["subset"])

    def counts(self, root, options, selection):
        """Of the largest fold: 3 views per candidate; training keeps --negative-fraction of the negatives and
        --positive-copies of each positive, less the scans held out and those --train-fraction leaves out."""
        candidates = self._located(root, options)
        held_out = options.validation_fraction if selection == "held-out" else 0.0
        per_fold = []
        for fold in options.folds:
            test = candidates["subset"].isin([2 * fold - 2, 2 * fold - 1])
            train = candidates[~test]
            positives = int(train["class"].sum())
            kept = positives * options.positive_copies + round((len(train) - positives) * options.negative_fraction)
            train_patches = kept * VIEWS * (1 - held_out) * options.train_fraction
            chosen_on = int(test.sum()) * VIEWS if selection == "test" else len(train) * VIEWS * held_out
            per_fold.append((train_patches, chosen_on, int(test.sum()) * VIEWS))
        train, chosen_on, test = (max(values) for values in zip(*per_fold))
        text = f"{len(candidates):,} candidates; per fold up to {int(train):,} training patches"
        size = options.image_size or options.patch_size
        return CellCounts(train, chosen_on, test, text, len(options.folds), size)

    def after_cell(self, folder, root, seed):
        """The official LUNA16 FROC and CPM of the cell's test predictions (all folds), beside its AUC."""
        from plumbing.lock import output_lock

        with output_lock(folder):  # The cell's runner has released it; froc.json is read and written here.
            _froc(Path(folder), Path(root), seed)

    def report_lines(self, cells):
        """The report's LUNA16 FROC section: each cell's CPM from its froc.json (none where no cell has one)."""
        lines = []
        for key, folder in cells:
            path = Path(folder) / "froc.json"
            if path.is_file():
                result = json.loads(path.read_text())
                low, high = result["cpm_ci95"]
                lines.append(
                    f"| {key} | {result['cpm']:.3f} [{low:.3f}, {high:.3f}] | {result['scans']} | {result['nodules']} |"
                )
        if not lines:
            return []
        return [
            "",
            "## LUNA16 FROC (the official CPM, beyond the thesis's AUC)",
            "",
            "The mean sensitivity at 1/8 to 8 false positives per scan (`luna16/froc.py`, the rules of the LUNA16 "
            "evaluation script), over the test folds' scans, with a 95% bootstrap interval over scans.",
            "",
            "| cell | CPM [95% interval] | scans | nodules |",
            "| --- | --- | --- | --- |",
            *lines,
        ]


def even_design(scans, positives, negatives, folds):
    """`scans` scans dealt round-robin into `folds` folds, the positives and negatives spread over them as evenly as
    they go: per fold an (its scans, 2) array."""

    def spread(total):
        return total // scans + (np.arange(scans) < total % scans)

    counts = np.column_stack([spread(positives), spread(negatives)])
    return [counts[fold::folds] for fold in range(folds)]


def _extract(options):
    from luna16 import data

    data.run(options)


def _patches_finished(folder):
    return all((folder / f"subset{k}" / "done.json").is_file() for k in range(10))


def _froc(folder, root, seed):
    """Writes froc.json from the cell's predictions and the annotations, unless it was made from the same files."""
    from luna16.froc import evaluate, layout_seriesuids, read_findings, read_predictions
    from plumbing.atomic import write_json
    from plumbing.fingerprint import file_sha256

    annotations_path = root / "annotations.csv"
    excluded_path = root / "annotations_excluded.csv"
    inputs = [folder / "predictions.csv", annotations_path] + ([excluded_path] if excluded_path.is_file() else [])
    settings = {path.name: file_sha256(path) for path in inputs}
    record = folder / "froc.json"
    if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
        return  # Made from these same predictions and annotations: kept.
    predictions = read_predictions(folder / "predictions.csv")
    annotations = read_findings(annotations_path, "annotations")
    excluded = read_findings(excluded_path, "excluded findings") if excluded_path.is_file() else None
    predicted = set(predictions["seriesuid"])
    scans = [uid for uid in layout_seriesuids(annotations_path) if uid in predicted]
    result = evaluate(predictions, annotations, excluded, scans, iterations=200, seed=seed)
    write_json(record, {"settings": settings, **{k: v for k, v in result.items() if k != "curve"}})
    print(f"{folder.name}: CPM {result['cpm']:.4f} over {result['scans']} scans, {result['nodules']} nodules")


TASK = Luna16Study()
