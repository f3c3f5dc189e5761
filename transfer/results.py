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
- `selection`: which epoch (or model) was kept and on what data, in words, e.g. "best
  validation AUC on 10% of training scans held out", "last epoch, all training data",
  "best AUC on the test data"; the report prints it beside every number (a run without
  it reads "not recorded");
- `body_parts` (optional): the body parts the run covers, e.g. `["XR_SHOULDER"]`
  (MURA); the report matches runs with the thesis's cells on it;

and whatever the task adds. `metrics.json` is written last: it marks the run finished.
A new task only writes these two files to appear in the report.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.atomic import write_csv, write_json
from plumbing.errors import InputError

SCORES_FILE = "test_scores.csv"
METRICS_FILE = "metrics.json"
SCORE_COLUMNS = ("level", "key", "label", "probability", "group", "stratum", "run")
IDENTITY = ("task", "backbone", "init", "train_fraction", "levels")
REPORT_METRICS = ("auc", "accuracy", "kappa", "sensitivity", "specificity")
NOT_RECORDED = "not recorded"


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

    @property
    def selection(self):
        """How the kept model was chosen, in words; "not recorded" for a run that does not say."""
        return self.metrics.get("selection") or NOT_RECORDED

    @property
    def body_parts(self):
        """The body parts the run covers, as a sorted tuple (empty where the task has none)."""
        return tuple(sorted(self.metrics.get("body_parts") or ()))

    def level(self, name):
        """The rows of one level."""
        return self.scores[self.scores["level"] == name]

    def arrays(self, name):
        """One level as arrays, a column per unit: (keys, labels, probabilities (R, N), groups, strata).

        Row r of the probabilities is run r; every run must have scored every key once.
        """
        rows = self.level(name)
        if rows.empty:
            raise ResultsError(self.folder / SCORES_FILE, f"has no rows of the {name} level that metrics.json declares")
        try:
            wide = rows.pivot(index="key", columns="run", values="probability")
        except ValueError:
            raise ResultsError(self.folder / SCORES_FILE, f"scores a {name} key twice in one run") from None
        if wide.isna().any().any():
            raise ResultsError(self.folder / SCORES_FILE, f"has {name} keys that not every run scored")
        first = rows.drop_duplicates("key").set_index("key").loc[wide.index]
        return (
            wide.index.to_numpy(),
            first["label"].to_numpy(int),
            wide.to_numpy(float).T,
            first["group"].to_numpy(),
            first["stratum"].to_numpy(),
        )


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
        raise ValueError(
            f"results must have metrics {IDENTITY} and score columns {SCORE_COLUMNS}. "
            f"Received: missing metrics {missing}, columns {list(scores.columns)}"
        )
    write_csv(Path(out) / SCORES_FILE, scores)
    write_json(Path(out) / METRICS_FILE, metrics)


def _check_metrics(path, metrics):
    """Raises ResultsError with one line where metrics.json does not hold what the report reads."""
    if not isinstance(metrics, dict):
        raise ResultsError(path, f"holds a {type(metrics).__name__}, not a mapping")
    missing = [key for key in IDENTITY if key not in metrics]
    if missing:
        raise ResultsError(path, f"lacks {', '.join(missing)}")
    for key in ("task", "backbone", "init"):
        if not isinstance(metrics[key], str) or not metrics[key]:
            raise ResultsError(path, f"has {key} {metrics[key]!r}, not a name")
    fraction = metrics["train_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ResultsError(path, f"has train_fraction {fraction!r}, not a number in (0, 1]")
    levels = metrics["levels"]
    if (
        not isinstance(levels, list)
        or not levels
        or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in levels)
    ):
        raise ResultsError(path, "has levels that are not a list of mappings each with a name")
    for level in levels:
        asked = level.get("metrics", ["auc"])
        if not isinstance(asked, list):
            raise ResultsError(path, f"level {level['name']} lists its metrics as {asked!r}, not a list")
        bad = sorted(set(map(str, asked)) - set(REPORT_METRICS))
        if bad:
            raise ResultsError(path, f"level {level['name']} asks for unknown metrics {bad}")
    for key, kind in (("selection", str), ("body_parts", list), ("method", str)):
        if metrics.get(key) is not None and not isinstance(metrics[key], kind):
            raise ResultsError(path, f"has {key} {metrics[key]!r}, not a {kind.__name__}")


def _check_scores(path, scores, names):
    """Raises ResultsError with one line where test_scores.csv cannot be scored."""
    if list(scores.columns) != list(SCORE_COLUMNS):
        raise ResultsError(path, f"has columns {list(scores.columns)}, expected {list(SCORE_COLUMNS)}")
    if scores.empty:
        raise ResultsError(path, "has no rows")
    unknown = sorted(set(scores["level"].astype(str)) - set(names))
    if unknown:
        raise ResultsError(path, f"has levels {unknown} that metrics.json does not declare")
    if scores[["level", "key", "group"]].isna().any().any():
        raise ResultsError(path, "has rows without a level, key or group")
    for column in ("label", "probability", "stratum", "run"):
        values = pd.to_numeric(scores[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # The header is line 1.
            raise ResultsError(path, f"line {row}: {column} {scores[column].iloc[row - 2]!r} is not a finite number")
        scores[column] = values
    labels = sorted(set(scores["label"]) - {0, 1})
    if labels:
        raise ResultsError(path, f"has labels {labels[:3]}; labels are 0 or 1")
    outside = ((scores["probability"] < 0) | (scores["probability"] > 1)).to_numpy()
    if outside.any():
        row = int(np.flatnonzero(outside)[0]) + 2
        raise ResultsError(path, f"line {row}: probability {scores['probability'].iloc[row - 2]:g} lies outside [0, 1]")


def read_results(folder):
    """Reads and checks a run folder's contract. Raises ResultsError with one line when it is not one."""
    folder = Path(folder)
    metrics_path, scores_path = folder / METRICS_FILE, folder / SCORES_FILE
    if not metrics_path.is_file() or not scores_path.is_file():
        raise ResultsError(folder, f"holds no {METRICS_FILE} and {SCORES_FILE} (not a finished downstream run)")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ResultsError(metrics_path, f"is not JSON ({error})") from None
    _check_metrics(metrics_path, metrics)
    try:
        scores = pd.read_csv(scores_path, dtype={"key": str, "group": str, "level": str}, encoding="utf-8")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:  # EmptyDataError is a ValueError.
        raise ResultsError(scores_path, f"cannot be read as a CSV table ({str(error).splitlines()[0]})") from None
    _check_scores(scores_path, scores, [level["name"] for level in metrics["levels"]])
    scores["label"] = scores["label"].astype(int)
    return Results(folder, metrics, scores)
