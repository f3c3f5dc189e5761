import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from study.report import build_report, main
from transfer.results import SCORE_COLUMNS, read_results
from transfer.statistics import paired_auc_test

LEVELS = [
    {"name": "eye", "description": "eyes of the test set", "group": "patient", "metrics": ["auc", "accuracy"]},
    {"name": "patient", "description": "patients (mean of eyes)", "group": "patient", "metrics": ["auc"]},
]


def _contract(folder, init, runs, truth, patients, folds, fraction=1.0, method=None, levels=LEVELS, **extra):
    """A results contract written by hand for a made-up task, 'retina': eyes nested in patients, two folds.

    `levels` with one level writes only the first; `extra` adds to metrics.json (task, backbone, selection...).
    """
    folder.mkdir(parents=True)
    rows = []
    for run, score in enumerate(runs, start=1):
        # Made-up scores as probabilities, as the contract holds: monotone (AUCs unchanged) and 0.5 kept in place.
        probability = 1 / (1 + np.exp(-(np.asarray(score, float) - 0.5)))
        for i, (y, p, patient, fold) in enumerate(zip(truth, probability, patients, folds)):
            rows.append((levels[0]["name"], f"eye{i}", y, p, f"pt{patient}", fold, run))
        frame = pd.DataFrame({"y": truth, "p": probability, "patient": patients, "fold": folds})
        for patient, part in frame.groupby("patient") if len(levels) > 1 else ():
            rows.append(
                (
                    "patient",
                    f"pt{patient}",
                    int(part["y"].max()),
                    part["p"].mean(),
                    f"pt{patient}",
                    part["fold"].iloc[0],
                    run,
                )
            )
    pd.DataFrame(rows, columns=SCORE_COLUMNS).to_csv(folder / "test_scores.csv", index=False)
    metrics = {"task": "retina", "backbone": "vgg16", "init": init, "train_fraction": fraction, "levels": levels}
    (folder / "metrics.json").write_text(json.dumps({**metrics, **({"method": method} if method else {}), **extra}))
    return folder


@pytest.fixture
def retina(tmp_path):
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 2)  # Two eyes per patient.
    truth = np.repeat((rng.random(60) < 0.4).astype(int), 2)
    folds = np.where(patients < 30, 1, 2)
    shared = np.repeat(rng.normal(0, 0.5, 60), 2)
    scores = {
        "scratch": [truth * 0.4 + shared + rng.random(120)],
        "genesis": [truth * 0.9 + shared + rng.random(120) for _ in range(2)],  # Two repeats.
        "imagenet": [truth * 0.6 + shared + rng.random(120)],
    }
    runs = [_contract(tmp_path / k, k, v, truth, patients, folds) for k, v in scores.items()]
    runs += [
        _contract(tmp_path / f"{k}_half", k, [v[0] * 0.5 + rng.random(120)], truth, patients, folds, 0.5)
        for k, v in scores.items()
        if k != "imagenet"
    ]
    return runs, scores, truth, patients, folds


def test_report_builds_from_a_hand_written_contract_of_a_new_task(retina, tmp_path):
    runs, scores, truth, patients, folds = retina
    table = build_report(runs, tmp_path / "report", iterations=200)
    auc = table[(table["level"] == "eye") & (table["metric"] == "auc")].iloc[0]
    for init, probabilities in scores.items():
        # The mean over runs of the mean over folds of the AUC (thesis Fig. 4.12; repeats averaged as in 4.2.4.4).
        expected = np.mean(
            [np.mean([roc_auc_score(truth[folds == f], p[folds == f]) for f in (1, 2)]) for p in probabilities]
        )
        assert auc[init] == pytest.approx(expected)
        assert auc[f"{init}_ci_low"] <= auc[init] <= auc[f"{init}_ci_high"]
    per_run = [np.mean([roc_auc_score(truth[folds == f], p[folds == f]) for f in (1, 2)]) for p in scores["genesis"]]
    assert auc["genesis_sd"] == pytest.approx(np.std(per_run, ddof=1)) and auc["genesis_runs"] == 2
    # Eyes of one patient are not independent: the test clusters them.
    expected = paired_auc_test(
        truth, np.stack(scores["genesis"]), scores["scratch"][0], clusters=patients, strata=folds
    )
    assert auc["genesis_vs_scratch_p"] == pytest.approx(expected["p_value"])
    # 60 patients, 30 a fold: the p-value from the cluster permutation test, the interval from the jackknife.
    assert auc["test"] == (
        "cluster permutation (10,000 random sign patterns); interval: cluster jackknife, clusters: patients, "
        "folds combined"
    )
    assert np.isnan(auc["genesis_vs_scratch_df"]) and np.isnan(expected["df"])  # A normal reference: no df.
    assert auc["genesis_vs_scratch_p_how"] == expected["p_how"] == "10,000 random sign patterns"
    # The difference's 95% interval is the test's, and holds the difference.
    assert (auc["genesis_vs_scratch_ci_low"], auc["genesis_vs_scratch_ci_high"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"])
    )
    assert expected["ci_low"] < auc["genesis_vs_scratch_delta"] < expected["ci_high"]
    accuracy = table[(table["level"] == "eye") & (table["metric"] == "accuracy")].iloc[0]
    assert accuracy["scratch"] == pytest.approx(
        np.mean([accuracy_score(truth[folds == f], scores["scratch"][0][folds == f] >= 0.5) for f in (1, 2)])
    )
    # Patients are one per row at their level: the case jackknife there, and the permutation exchanges cases.
    assert (
        table[(table["level"] == "patient") & (table["metric"] == "auc")].iloc[0]["test"]
        == "permutation (10,000 random sign patterns); interval: jackknife, folds combined"
    )
    ensemble = table[table["metric"] == "auc_ensemble"]
    assert len(ensemble) == 2 and "ensemble" in ensemble.iloc[0]["label"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| retina | vgg16 | AUC, eyes of the test set |" in text and "(sd " in text and "p = " in text
    assert text.index("AUC, eyes of the test set") < text.index("AUC, patients")  # Headline level first.
    for name in ("results.csv", "roc_retina_vgg16.png", "label_efficiency.png", "label_efficiency.csv"):
        assert (tmp_path / "report" / name).is_file(), name
    efficiency = pd.read_csv(tmp_path / "report" / "label_efficiency.csv")
    assert (efficiency["ci_low"] <= efficiency["auc"]).all() and (efficiency["auc"] <= efficiency["ci_high"]).all()


def test_report_takes_a_paired_t_over_folds_when_folds_hold_few_patients(tmp_path):
    # 20 patients in 5 folds of 4 (the demo's layout): the p-value and the interval from the folds' differences.
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(20), 3)
    truth = np.tile([0, 1, 0], 20)
    folds = patients % 5
    scores = {init: truth * weight + rng.random(60) for init, weight in (("genesis", 0.8), ("scratch", 0.4))}
    runs = [_contract(tmp_path / k, k, [v], truth, patients, folds, levels=LEVELS[:1]) for k, v in scores.items()]
    auc = build_report(runs, tmp_path / "report", iterations=50)
    auc = auc[auc["metric"] == "auc"].iloc[0]
    expected = paired_auc_test(truth, scores["genesis"], scores["scratch"], clusters=patients, strata=folds)
    assert expected["p_method"] == "folds" and auc["genesis_vs_scratch_p"] == pytest.approx(expected["p_value"])
    assert auc["test"] == "paired t over folds (5 folds; patients within each)" and auc["genesis_vs_scratch_df"] == 4
    text = (tmp_path / "report" / "report.md").read_text()
    assert ", 4 df)" in text


def test_report_refuses_runs_on_different_cases_with_one_line(retina, tmp_path, capsys):
    runs, _, _, _, _ = retina
    other = tmp_path / "other"
    other.mkdir()
    scores = pd.read_csv(runs[2] / "test_scores.csv")
    scores[scores["key"] != "eye0"].to_csv(other / "test_scores.csv", index=False)
    (other / "metrics.json").write_text((runs[2] / "metrics.json").read_text())
    for folders, message in (([runs[1], other], "not tested on the same cases"), ([tmp_path], "not a finished")):
        with pytest.raises(SystemExit) as exit_info:
            main([*map(str, folders), "--out", str(tmp_path / "r"), "--bootstrap", "10"])
        assert exit_info.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]
    assert read_results(runs[0]).task == "retina"


def test_linear_probes_sit_beside_fine_tuning_and_are_tested_against_genesis_probe(retina, tmp_path):
    runs, scores, truth, patients, folds = retina
    rng = np.random.default_rng(1)
    probes = {init: truth * weight + rng.random(120) for init, weight in (("genesis", 0.7), ("scratch", 0.2))}
    runs = runs + [
        _contract(tmp_path / f"{k}_probe", k, [v], truth, patients, folds, method="linear probe")
        for k, v in probes.items()
    ]
    table = build_report(runs, tmp_path / "report", iterations=100)
    auc = table[(table["level"] == "eye") & (table["metric"] == "auc")].iloc[0]
    expected = np.mean([roc_auc_score(truth[folds == f], probes["scratch"][folds == f]) for f in (1, 2)])
    assert auc["scratch probe"] == pytest.approx(expected)
    # Probes are compared with genesis's probe, fine-tuned runs with genesis fine-tuned.
    test = paired_auc_test(truth, probes["genesis"], probes["scratch"], clusters=patients, strata=folds)
    assert auc["genesis probe_vs_scratch probe_p"] == pytest.approx(test["p_value"])
    assert "genesis_vs_scratch probe_p" not in auc and not pd.isna(auc["genesis_vs_scratch_p"])
    header = (tmp_path / "report" / "report.md").read_text().splitlines()[2]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:8] == ["scratch", "genesis", "imagenet", "scratch probe", "genesis probe"]
    assert "genesis probe vs scratch probe" in columns and "genesis vs imagenet" in columns


def test_report_links_every_runs_saliency_gallery(retina, tmp_path):
    runs, *_ = retina
    (runs[0] / "fold1").mkdir()
    (runs[0] / "fold1" / "saliency.png").write_bytes(b"png")
    build_report(runs, tmp_path / "report", iterations=10)
    text = (tmp_path / "report" / "report.md").read_text()
    assert (
        "## Where the classifiers look" in text
        and "- retina vgg16 scratch: [fold1](../scratch/fold1/saliency.png)" in text
    )


LUNA16_LEVELS = [{"name": "patch", "description": "patches", "group": "scan", "metrics": ["auc"]}]
MURA_LEVELS = [{"name": "image", "description": "images of valid", "group": "patient", "metrics": ["auc"]}]


def _scans(rng, scans=30, folds=5):
    """Candidates nested in scans nested in five folds: (truth, scans, folds)."""
    scan = np.repeat(np.arange(scans), 8)
    truth = (rng.random(len(scan)) < 0.3).astype(int)
    return truth, scan, scan % folds + 1


def test_thesis_cells_sit_beside_the_runs_that_match_them_with_the_difference(tmp_path):
    from study.report import load_thesis

    rng = np.random.default_rng(4)
    truth, scans, folds = _scans(rng)
    scores = {init: truth * weight + rng.random(len(truth)) for init, weight in (("scratch", 0.5), ("genesis", 1.5))}
    rule = "best validation AUC on 10% of training scans held out"
    runs = [
        _contract(tmp_path / init, init, [p], truth, scans, folds, levels=LUNA16_LEVELS, task="luna16", selection=rule)
        for init, p in scores.items()
    ]
    runs += [
        _contract(
            tmp_path / f"mura_{init}",
            init,
            [truth * 0.8 + rng.random(len(truth))],
            truth,
            scans,
            np.zeros(len(truth), int),
            levels=MURA_LEVELS,
            task="mura",
            backbone="resnet50",
            body_parts=parts,
        )
        for init, parts in (("genesis", ["XR_SHOULDER"]), ("scratch", ["XR_HAND"]))
    ]
    table = build_report(runs, tmp_path / "report")
    cells = {(c["task"], c["backbone"], c["init"]): c for c in load_thesis()["cells"]}
    luna = table[(table["dataset"] == "luna16") & (table["metric"] == "auc")].iloc[0]
    ours = {
        init: np.mean([roc_auc_score(truth[folds == f], p[folds == f]) for f in range(1, 6)])
        for init, p in scores.items()
    }
    assert luna["thesis_scratch"] == cells[("luna16", "vgg16", "scratch")]["auc"] == 0.98172  # Fig. 5.1.
    assert luna["thesis_genesis"] == 0.98672
    for init in scores:
        theirs = cells[("luna16", "vgg16", init)]["auc"]
        assert (
            f"{init} {theirs:.5g} (Fig. 5.1" in luna["thesis"] and f"ours {ours[init] - theirs:+.3f}" in luna["thesis"]
        )
    assert (
        "- luna16 vgg16 scratch: Fig. 5.1 (LUNA16 Vgg16 Scratch); Fig. 4.12 AVG; Fig. 4.19; the five folds of "
        "Fig. 4.12 average 0.97972" in (tmp_path / "report" / "report.md").read_text()
    )
    # MURA: the thesis's cells are the shoulder's; a hand run does not match, and the column says why.
    mura = table[(table["dataset"] == "mura") & (table["metric"] == "auc")].iloc[0]
    assert mura["thesis_genesis"] == 0.7791 and pd.isna(mura.get("thesis_scratch", np.nan))
    text = (tmp_path / "report" / "report.md").read_text()
    # Per fold, Fig. 4.12's subsets 0-1 .. 8-9 beside ours.
    fold1 = roc_auc_score(truth[folds == 1], scores["scratch"][folds == 1])
    assert f"| luna16 | vgg16 | scratch | 1 (subsets 0-1; ours: 1) | 0.9802 (Fig. 4.12) | {fold1:.4f} |" in text
    # The selection rule beside every number, and the thesis's (chosen on its test data) beside its column.
    assert f"- sel. A: {rule}" in text and "- sel. B: not recorded" in text
    assert "sel. T (the `thesis` column): chosen on the test data" in text and "4.2.4.4" in text
    row = next(line for line in text.splitlines() if line.startswith("| luna16 | vgg16 | AUC"))
    assert row.count("sel. A") == 2 and row.endswith("sel. T |")
    # What these 30 scans could detect: from the paired t over the 5 folds' interval (4 df), 80% power, beside the
    # thesis's own +0.0050 (0.98672 - 0.98172), which is far below it.
    from scipy.stats import t as student

    low, high = luna["genesis_vs_scratch_ci_low"], luna["genesis_vs_scratch_ci_high"]
    detectable = (student(4).ppf(0.975) + student(4).ppf(0.8)) * (high - low) / 2 / student(4).ppf(0.975)
    assert luna["genesis_vs_scratch_detectable"] == pytest.approx(detectable)
    level = luna["level"]
    line = next(x for x in text.splitlines() if x.startswith(f"| luna16 | vgg16 | {level} | genesis vs scratch |"))
    assert line.endswith(f"| {detectable:.4f} | +0.0050 | **no**: below what these data detect |"), line
    # And on the thesis's own 888 scans (luna16/configs/thesis_power.yaml): its ResNet50 +0.0026 and VGG16 +0.0050
    # lie below what its data could detect, its ImageNet differences above.
    import yaml

    power = yaml.safe_load(Path("luna16/configs/thesis_power.yaml").read_text())
    assert 0.0050 < power["detectable"] < 0.0069
    assert "| luna16 | resnet50 | genesis vs scratch | +0.0026 | **no** |" in text
    assert "| luna16 | vgg16 | genesis vs scratch | +0.0050 | **no** |" in text
    assert "| luna16 | vgg16 | genesis vs imagenet | -0.0069 | yes |" in text


def test_without_a_matching_cell_the_thesis_column_says_why(retina, tmp_path):
    runs, *_ = retina
    table = build_report(runs, tmp_path / "report", iterations=10)
    assert set(table.loc[table["metric"] == "auc", "thesis"]) == {"the thesis has no retina results"}
    rng = np.random.default_rng(0)
    truth, scans, folds = _scans(rng)
    demo = [
        _contract(
            tmp_path / "demo" / i,
            i,
            [truth + rng.random(len(truth))],
            truth,
            scans,
            folds,
            levels=LUNA16_LEVELS,
            task="luna16",
            backbone="resnet18",
        )
        for i in ("scratch", "genesis")
    ]
    table = build_report(demo, tmp_path / "demo_report", iterations=10)
    assert table.iloc[0]["thesis"] == "none: the thesis's luna16 runs used resnet50 and vgg16, not resnet18"


def test_a_fold_with_its_positives_in_one_scan_and_a_fold_with_one_positive_each_get_a_line(tmp_path):
    rng = np.random.default_rng(6)
    truth, scans, folds = _scans(rng, scans=15, folds=3)
    truth[(folds == 2) & (scans != 1)] = 0  # Fold 2: every positive in scan 1.
    truth[(folds == 3)] = 0
    truth[np.flatnonzero(folds == 3)[0]] = 1  # Fold 3: one positive.
    runs = [
        _contract(
            tmp_path / i,
            i,
            [truth * w + rng.random(len(truth))],
            truth,
            scans,
            folds,
            levels=LUNA16_LEVELS,
            task="luna16",
        )
        for i, w in (("scratch", 0.3), ("genesis", 1.0))
    ]
    table = build_report(runs, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("- luna16 vgg16 patch: genesis vs scratch")]
    assert len(lines) == 2 and "fold 2: all" in lines[0] and "positives in one scan" in lines[0]
    assert "fold 3: one positive case, too few to estimate a variance; left out" in lines[1]
    row = table.iloc[0]
    assert row["genesis_vs_scratch_clusters"] == 5  # Only fold 1's five scans are behind the test.
    positive = sum(len(set(scans[(folds == f) & (truth == 1)])) for f in (1, 2, 3))
    assert (
        f"15 scans ({positive} with a positive, 15 with a negative) in 3 folds; fewer than 20, or 10 on a "
        "side: intervals and p-values not validated" in text
    )
    assert "patients in 2 folds; fewer" not in text


@pytest.mark.parametrize(
    "case, message",
    [
        ("metrics_list", "holds a list, not a mapping"),
        ("levels_text", "levels that are not a list"),
        ("fraction_text", "train_fraction 'all'"),
        ("label_two", "labels are 0 or 1"),
        ("probability_text", "probability 'high' is not a finite number"),
        ("empty_scores", "cannot be read as a CSV table"),
        ("latin1_scores", "cannot be read as a CSV table"),
        ("level_without_rows", "has no rows of the patient level"),
        ("selection_number", "has selection 3"),
    ],
)
def test_malformed_results_end_in_one_line(retina, tmp_path, capsys, case, message):
    runs, *_ = retina
    folder = runs[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    scores = pd.read_csv(folder / "test_scores.csv")
    if case == "metrics_list":
        (folder / "metrics.json").write_text("[1, 2]")
    elif case in ("levels_text", "fraction_text", "selection_number"):
        key, value = {
            "levels_text": ("levels", "eye"),
            "fraction_text": ("train_fraction", "all"),
            "selection_number": ("selection", 3),
        }[case]
        (folder / "metrics.json").write_text(json.dumps({**metrics, key: value}))
    elif case == "label_two":
        scores.loc[3, "label"] = 2
        scores.to_csv(folder / "test_scores.csv", index=False)
    elif case == "probability_text":
        scores["probability"] = scores["probability"].astype(object)
        scores.loc[5, "probability"] = "high"
        scores.to_csv(folder / "test_scores.csv", index=False)
    elif case == "empty_scores":
        (folder / "test_scores.csv").write_text("")
    elif case == "latin1_scores":
        (folder / "test_scores.csv").write_bytes("level,key\n\xe9t\xe9,\xff\n".encode("latin-1"))
    elif case == "level_without_rows":
        scores[scores["level"] != "patient"].to_csv(folder / "test_scores.csv", index=False)
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder), str(runs[1]), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), lines


def test_the_arms_beyond_the_thesis_are_tested_against_genesis_scratch_and_imagenet(retina, tmp_path):
    """contrastive and genesis+contrastive: after the thesis's columns, each tested against genesis (as every arm) and
    against scratch and ImageNet, each p-value that of the paired test run here on the same cases."""
    from study.report import _aligned, comparisons

    runs, scores, truth, patients, folds = retina
    rng = np.random.default_rng(2)
    extra = {"contrastive": truth * 0.7 + rng.random(120), "genesis+contrastive": truth * 0.8 + rng.random(120)}
    runs = runs + [_contract(tmp_path / k, k, [v], truth, patients, folds) for k, v in extra.items()]
    table = build_report(runs, tmp_path / "report", iterations=100)
    auc = table[(table["level"] == "eye") & (table["metric"] == "auc")].iloc[0]
    by_arm = {read_results(folder).arm: read_results(folder) for folder in runs if "half" not in folder.name}
    for arm in extra:
        for baseline in ("scratch", "imagenet"):
            # The cases in the report's order (the permutation test draws its sign patterns cluster by cluster).
            y, p_arm, p_base, groups, strata = _aligned(by_arm[arm], by_arm[baseline], "eye")
            test = paired_auc_test(y, p_arm, p_base, clusters=groups, strata=strata)
            assert auc[f"{arm}_vs_{baseline}_p"] == pytest.approx(test["p_value"])
            assert auc[f"{arm}_vs_{baseline}_delta"] == pytest.approx(test["difference"])
            auc_arm = np.mean([roc_auc_score(truth[folds == f], extra[arm][folds == f]) for f in (1, 2)])
            auc_base = np.mean([roc_auc_score(truth[folds == f], scores[baseline][0][folds == f]) for f in (1, 2)])
            assert test["difference"] == pytest.approx(auc_arm - auc_base)
    header = (tmp_path / "report" / "report.md").read_text().splitlines()[2]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:8] == ["scratch", "genesis", "imagenet", "contrastive", "genesis+contrastive"]
    assert columns[8:15] == [
        "genesis vs scratch",
        "genesis vs imagenet",
        "genesis vs contrastive",
        "genesis vs genesis+contrastive",
        "contrastive vs scratch",
        "contrastive vs imagenet",
        "genesis+contrastive vs scratch",
    ]
    # Probes only against probes; an arm whose baseline did not run is not compared with it.
    probes = comparisons(["scratch probe", "genesis probe", "contrastive probe", "contrastive"])
    assert probes == [
        ("genesis probe", "scratch probe"),
        ("genesis probe", "contrastive probe"),
        ("contrastive probe", "scratch probe"),
    ]
