"""MURA as the study runs it (`transfer.tasks.StudyTask`): its root's checks and the counts of a run."""

import numpy as np

from transfer.tasks import CellCounts, StudyTask

SPLITS = ("train", "valid")


class MuraStudy(StudyTask):
    name, title = "mura", "MURA"
    root_help = "MURA folder as distributed (MURA-v1.1 and its csv files, or its parent)."
    held_out = "patients"
    test_data = "MURA valid"
    expected_auc = (0.80, "the thesis's six MURA shoulder cells, 0.757-0.832, Fig. 5.1")
    module, options_class = "mura.experiment", "MuraOptions"

    def imposed(self, place):
        return {"repeats": place.repeats}

    def check_root(self, root, options):
        self._splits(root, options)

    def _splits(self, root, options):
        from mura.data import body_parts_of, read_split

        parts = body_parts_of(options.body_part)
        return [read_split(root, split, parts, False, options.allow_outside_root) for split in SPLITS]

    def test_design(self, root, options):
        """The valid split, one fold: each patient's abnormal and normal images, and studies."""
        _, valid = self._splits(root, options)
        studies = valid.drop_duplicates("study")
        design = {}
        for level, table in (("image", valid), ("study", studies)):
            by_patient = table.groupby("patient")["label"].agg(["sum", "count"])
            design[level] = [np.column_stack([by_patient["sum"], by_patient["count"] - by_patient["sum"]]).astype(int)]
        return design

    def counts(self, root, options, selection):
        """Training images per epoch (--epoch-size), the images that choose the epoch, the valid images."""
        train, valid = self._splits(root, options)
        held_out = options.validation_fraction if selection == "held-out" else 0.0
        chosen_on = len(valid) if selection == "test" else len(train) * held_out
        text = (
            f"{len(train):,} training images ({train['patient'].nunique():,} patients), {len(valid):,} valid images "
            f"({valid['study'].nunique():,} studies)"
        )
        return CellCounts(options.epoch_size, chosen_on, len(valid), text, options.repeats, options.image_size)


TASK = MuraStudy()
