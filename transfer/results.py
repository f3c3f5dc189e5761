"""The results contract: what every downstream run writes, and all that the report reads.

A finished run folder holds two files:

`test_scores.csv`, one row per scored test unit and training run:

| column | meaning |
| --- | --- |
| level | what the row scores, e.g. `candidate` and `patch` (LUNA16), `image` and `study` (MURA) |
| key | the unit's id, the same in every run tested on the same data (paired tests join on it) |
| label | truth, 0 or 1 |
| probability | the model's probability of class 1 |
| group | the independent unit that the statistics resample and cluster on (a scan, a patient) |
| stratum | the cross-validation fold (each fold has its own model), 0 without folds |
| run | the training run (`--repeats`), 1..R; metrics are averaged over runs |

`metrics.json`, a mapping with at least:

- `task`, `backbone`, `init`, `train_fraction`: the run's identity, with `method`
  ("fine-tune", the default when absent, or "linear probe");
- `settings` and `fingerprint`: every setting that changes training, and its hash
  (`fingerprint`); a rerun reuses the run only under the same settings (`finished_with`);
- `levels`: the levels in report order, the first the headline (the thesis's
  metric), each `{"name", "description", "group", "metrics"}`: `description` labels
  the number (e.g. "AUC of candidates, mean of 3 views"), `group` names the
  resampling unit (e.g. "scan"), and `metrics` lists what the report shows for the
  level, from `REPORT_METRICS` (AUC first);

and whatever the task adds. `metrics.json` is written last: it marks the run finished.
A new task only writes these two files to appear in the report.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plumbing.atomic import write_csv, write_json
from plumbing.errors import InputError

SCORES_FILE = "test_scores.csv"
METRICS_FILE = "metrics.json"
SCORE_COLUMNS = ("level", "key", "label", "probability", "group", "stratum", "run")
IDENTITY = ("task", "backbone", "init", "train_fraction", "levels")
REPORT_METRICS = ("auc", "accuracy", "kappa", "sensitivity", "specificity")


class ResultsError(InputError):
    """A run folder that does not hold a valid results contract."""


@dataclass
class Results:
    folder: Path
    metrics: dict
    scores: pd.DataFrame

    @property
    def task(self):
        return self.metrics["task"]

    @property
    def init(self):
        return self.metrics["init"]

    @property
    def method(self):
        return self.metrics.get("method", "fine-tune")

    @property
    def arm(self):
        """The report's column: the init, and 'probe' after it for a linear probe (e.g. 'genesis probe')."""
        return self.init if self.method == "fine-tune" else f"{self.init} probe"

    @property
    def backbone(self):
        return self.metrics["backbone"]

    @property
    def fraction(self):
        return float(self.metrics["train_fraction"])

    @property
    def levels(self):
        return self.metrics["levels"]

    def level(self, name):
        """The rows of one level."""
        return self.scores[self.scores["level"] == name]

    def arrays(self, name):
        """One level as arrays, a column per unit: (keys, labels, probabilities (R, N), groups, strata).

        Row r of the probabilities is run r; every run must have scored every key once.
        """
        rows = self.level(name)
        try:
            wide = rows.pivot(index="key", columns="run", values="probability")
        except ValueError:
            raise ResultsError(self.folder / SCORES_FILE, f"scores a {name} key twice in one run") from None
        if wide.isna().any().any():
            raise ResultsError(self.folder / SCORES_FILE, f"has {name} keys that not every run scored")
        first = rows.drop_duplicates("key").set_index("key").loc[wide.index]
        return (wide.index.to_numpy(), first["label"].to_numpy(int), wide.to_numpy(float).T,
                first["group"].to_numpy(), first["stratum"].to_numpy())


def score_rows(level, key, label, probability, group, stratum=0, run=1):
    """A contract table for one level (scalars are broadcast)."""
    frame = pd.DataFrame({"key": key, "label": label, "probability": probability, "group": group})
    frame.insert(0, "level", level)
    frame["stratum"], frame["run"] = stratum, run
    return frame[list(SCORE_COLUMNS)]


def write_results(out, scores, metrics):
    """Writes test_scores.csv, then metrics.json (last, so it marks the run finished)."""
    missing = [key for key in IDENTITY if key not in metrics]
    if missing or list(scores.columns) != list(SCORE_COLUMNS):
        raise ValueError(f"results must have metrics {IDENTITY} and score columns {SCORE_COLUMNS}. "
                         f"Received: missing metrics {missing}, columns {list(scores.columns)}")
    write_csv(Path(out) / SCORES_FILE, scores)
    write_json(Path(out) / METRICS_FILE, metrics)


def read_results(folder):
    """Reads and checks a run folder's contract. Raises ResultsError with one line when it is not one."""
    folder = Path(folder)
    metrics_path, scores_path = folder / METRICS_FILE, folder / SCORES_FILE
    if not metrics_path.is_file() or not scores_path.is_file():
        raise ResultsError(folder, f"holds no {METRICS_FILE} and {SCORES_FILE} (not a finished downstream run)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except ValueError as error:
        raise ResultsError(metrics_path, f"is not JSON ({error})") from None
    missing = [key for key in IDENTITY if key not in metrics]
    if missing:
        raise ResultsError(metrics_path, f"lacks {', '.join(missing)}")
    scores = pd.read_csv(scores_path, dtype={"key": str, "group": str, "level": str})
    if list(scores.columns) != list(SCORE_COLUMNS):
        raise ResultsError(scores_path, f"has columns {list(scores.columns)}, expected {list(SCORE_COLUMNS)}")
    names = [level["name"] for level in metrics["levels"]]
    unknown = sorted(set(scores["level"]) - set(names))
    if unknown or not names:
        raise ResultsError(scores_path, f"has levels {unknown or 'none'} that metrics.json does not declare")
    for level in metrics["levels"]:
        bad = sorted(set(level.get("metrics", ["auc"])) - set(REPORT_METRICS))
        if bad:
            raise ResultsError(metrics_path, f"level {level['name']} asks for unknown metrics {bad}")
    return Results(folder, metrics, scores)
