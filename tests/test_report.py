import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from genesis2d.metrics import delong_test
from genesis2d.report import build_report, main


def _luna_run(folder, init, probability, truth, fraction=1.0):
    """Two folds: the first half of the cases in fold 1, the rest in fold 2."""
    folder.mkdir(parents=True)
    n = len(truth)
    frame = pd.DataFrame({"seriesuid": [f"s{i % 12}" for i in range(n)], "coordX": np.arange(n, dtype=float),
                          "coordY": 0.0, "coordZ": 0.0, "class": truth, "probability": probability})
    frame.to_csv(folder / "predictions.csv", index=False)
    for name, part in (("fold1_subsets0-1", frame[: n // 2]), ("fold2_subsets2-3", frame[n // 2 :])):
        (folder / name).mkdir()
        part.to_csv(folder / name / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"task": "luna16", "init": init, "backbone": "vgg16", "train_fraction": fraction}))
    return folder


def _mura_run(folder, init, probability, truth, fraction=1.0):
    folder.mkdir(parents=True)
    pd.DataFrame({"study": [f"st{i}/" for i in range(len(truth))], "label": truth,
                  "probability": probability}).to_csv(folder / "predictions_studies.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"task": "mura", "init": init, "backbone": "vgg16", "train_fraction": fraction}))
    return folder


def test_report_table_ci_and_delong(tmp_path):
    rng = np.random.default_rng(0)
    truth = (rng.random(120) < 0.3).astype(int)
    scores = {"scratch": truth * 0.3 + rng.random(120), "genesis": truth * 0.8 + rng.random(120),
              "imagenet": truth * 0.6 + rng.random(120)}
    runs = [_luna_run(tmp_path / f"luna_{k}", k, v, truth) for k, v in scores.items()]
    runs += [_mura_run(tmp_path / f"mura_{k}", k, v[:60], truth[:60]) for k, v in scores.items() if k != "imagenet"]
    runs += [_mura_run(tmp_path / f"mura_{k}_half", k, v[:60] * 0.5 + rng.random(60), truth[:60], 0.5)
             for k, v in scores.items() if k != "imagenet"]
    table = build_report(runs, tmp_path / "report", iterations=200)
    luna = table[table["dataset"] == "luna16"].iloc[0]
    halves = (slice(0, 60), slice(60, 120))
    for init, score in scores.items():
        # The mean of the two folds' AUCs, as thesis Fig. 4.12 reports it.
        assert luna[init] == pytest.approx(np.mean([roc_auc_score(truth[h], score[h]) for h in halves]))
        assert luna[f"{init}_ci_low"] < luna[init] < luna[f"{init}_ci_high"]
    # DeLong per fold; the mean difference's variance is the sum of the folds' variances over K^2.
    per_fold = [delong_test(truth[h], scores["genesis"][h], scores["scratch"][h]) for h in halves]
    delta = np.mean([t["auc_a"] - t["auc_b"] for t in per_fold])
    z = delta / np.sqrt(sum(t["variance"] for t in per_fold) / 4)
    from scipy.stats import norm

    assert luna["genesis_vs_scratch_delta"] == pytest.approx(delta)
    assert luna["genesis_vs_scratch_p"] == pytest.approx(2 * norm.sf(abs(z)))
    mura = table[table["dataset"] == "mura"].iloc[0]
    assert pd.isna(mura.get("imagenet")) and mura["genesis"] == pytest.approx(roc_auc_score(truth[:60], scores["genesis"][:60]))
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| luna16 | vgg16 |" in text and "not run" in text and "p = " in text
    for name in ("results.csv", "roc_luna16_vgg16.png", "roc_mura_vgg16.png", "label_efficiency.png"):
        assert (tmp_path / "report" / name).is_file(), name


def test_report_refuses_runs_on_different_cases(tmp_path, capsys):
    truth = np.array([0, 1] * 20)
    a = _luna_run(tmp_path / "a", "genesis", np.linspace(0, 1, 40), truth)
    b = _luna_run(tmp_path / "b", "scratch", np.linspace(0, 1, 38), truth[:38])
    with pytest.raises(SystemExit, match="not tested on the same cases"):
        main([str(a), str(b), "--out", str(tmp_path / "r"), "--bootstrap", "10"])
    with pytest.raises(SystemExit, match="metrics.json"):
        main([str(tmp_path), "--out", str(tmp_path / "r")])
