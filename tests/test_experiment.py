"""The thesis's experiment on the user's folders (`python -m study --corpus --luna16 --mura`): the plan, the checks
before any work, the cells split over processes and merged, and the 12 cells of thesis Fig. 5.1 with its values."""

import re
import shutil
from dataclasses import replace
from itertools import product
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks.soak_array import TINY
from study.experiment import Step, selected_steps, slurm_array


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """The demo trees laid out as a user's folders, a settings file at tiny sizes, and stand-in ImageNet files."""
    from conftest import write_imagenet_standin

    from study.demo_data import write_all

    base = tmp_path_factory.mktemp("roots")
    write_all(base / "data")
    home = base / "keras"
    for backbone in ("resnet50", "vgg16"):
        write_imagenet_standin(home / "models", backbone, recognisable=False)
    settings = {
        "roots": {
            "corpus": str(base / "data" / "pretrain"),
            "datasets": str(base / "data" / "pretrain" / "datasets.yaml"),
            "luna16": str(base / "data" / "LUNA16"),
            "mura": str(base / "data" / "MURA-v1.1"),
        },
        **TINY,
    }
    (base / "tiny.yaml").write_text(yaml.safe_dump(settings))
    return base


def study(roots, out, *extra, measure=0):
    """`python -m study` on the roots at tiny sizes, one LUNA16 fold and one MURA run per cell."""
    from study.command import main

    argv = ["--settings", str(roots / "tiny.yaml"), "--out", str(out), "--measure-steps", str(measure)]
    return main([*argv, "--folds", "1", "--repeats", "1", *extra])


@pytest.fixture
def keras_home(roots, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(roots / "keras"))
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_plan_prints_the_datas_counts_measured_times_and_disk_and_writes_nothing(roots, keras_home, tmp_path, capsys):
    out = tmp_path / "experiment"
    study(roots, out, "--plan", measure=1)
    text = capsys.readouterr().out
    assert not out.exists()  # Nothing written before the work starts.
    data = roots / "data"
    candidates = pd.read_csv(data / "LUNA16" / "candidates_V2.csv")
    assert f"{candidates['seriesuid'].nunique():,} scans, {len(candidates):,} candidates" in text
    assert f"({int(candidates['class'].sum()):,} positive)" in text
    listing = pd.read_csv(data / "MURA-v1.1" / "valid_image_paths.csv", header=None)[0]
    shoulder = listing[listing.str.contains("XR_SHOULDER")]
    assert f"{len(shoulder):,} valid images" in text
    train = pd.read_csv(data / "MURA-v1.1" / "train_image_paths.csv", header=None)[0]
    assert f"{train.str.contains('XR_SHOULDER').sum():,} training images" in text
    for step in ("manifest", "shards", "pretrain/resnet50", "pretrain/vgg16", "luna16/patches", "report"):
        assert re.search(rf"^ +\d+\. {re.escape(step)} ", text, re.M), step
    cells = re.findall(r"^ +\d+\. ((?:luna16|mura)/\w+/\w+) ", text, re.M)
    assert len(cells) == 12
    assert len(re.findall(r"\d s/step \(CPU, float32\)", text)) == 2 + 12
    assert re.search(r"projected: [\d.]+ (min|h) for the 18 steps left here; disk: [\d.]+ [MG]iB to write, ", text)
    assert "free under" in text
    slices = re.search(r"(\d+) datasets, (\d+) patients, ([\d,]+) slices", text)
    table = yaml.safe_load((data / "pretrain" / "datasets.yaml").read_text())["datasets"]
    assert int(slices.group(1)) == len(table)


@pytest.mark.slow
def test_a_plan_without_measured_steps_still_projects_each_steps_disk(roots, keras_home, tmp_path, capsys):
    from study.measure import parameters

    study(roots, tmp_path / "experiment", "--plan", "--inits", "scratch", "genesis", measure=0)
    text = capsys.readouterr().out
    rows = dict(re.findall(r"^ +\d+\. (\S+) +.*?disk +([\d.,]+ [KMG]iB) ", text, re.M))
    assert len(rows) == 2 + 2 + 1 + 8 + 1 and re.search(r"pretrain/resnet50 +not measured  disk", text)
    # A pretraining's disk is its U-Net's weights four times over (the encoder, the best model, the checkpoint's
    # weights and momentum); a cell's, each fold's or run's classifier twice.
    assert rows["pretrain/resnet50"] == f"{parameters('pretraining', 'resnet50') * 16 / 2**30:.2f} GiB"
    assert rows["mura/vgg16/genesis"] == f"{parameters('fine-tuning', 'vgg16') * 8 / 2**30:.2f} GiB"  # --repeats 1
    assert all(not value.startswith("0.0 ") and value != "0 KiB" for key, value in rows.items() if key != "report")
    assert "projected: not measured for 10 of the 14 steps left here (--measure-steps 0); " in text


@pytest.mark.slow
def test_a_missing_annotations_file_stops_before_any_work(roots, keras_home, tmp_path, capsys):
    luna = tmp_path / "LUNA16"
    shutil.copytree(roots / "data" / "LUNA16", luna, symlinks=True)
    (luna / "annotations.csv").unlink()
    settings = yaml.safe_load((roots / "tiny.yaml").read_text())
    settings["roots"]["luna16"] = str(luna)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(settings))
    from study.command import main

    out = tmp_path / "experiment"
    with pytest.raises(SystemExit) as stop:
        main(["--settings", str(tmp_path / "s.yaml"), "--out", str(out)])
    assert stop.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "annotations.csv: is missing" in error[0], error
    assert not out.exists()


@pytest.mark.slow
def test_the_plan_refuses_a_corpus_split_without_validation_slices(roots, keras_home, tmp_path, capsys):
    from study.command import main

    settings = yaml.safe_load((roots / "tiny.yaml").read_text())
    settings["manifest"]["fractions"] = [0.8, 0.0, 0.2]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(settings))
    out = tmp_path / "experiment"
    for plan in (["--plan"], []):  # The plan refuses what the run would refuse, and the run before writing.
        with pytest.raises(SystemExit) as stop:
            main(["--settings", str(tmp_path / "s.yaml"), "--out", str(out), "--measure-steps", "0", *plan])
        assert stop.value.code == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]  # After the decode's progress bar.
        assert error.startswith(f"error: {out / 'corpus' / 'manifest.csv'} (the split of "), error
        assert "has no validation slices, on which the best epoch is chosen" in error
        assert not out.exists()


@pytest.mark.slow
def test_a_missing_imagenet_file_and_a_stage_setting_the_study_owns_stop_in_one_line(
    roots, tmp_path, monkeypatch, capsys
):
    from study.command import main

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        main(["--settings", str(roots / "tiny.yaml"), "--out", str(tmp_path / "a")])
    assert "resnet50_imagenet_1000_no_top.h5: is missing" in capsys.readouterr().err
    settings = yaml.safe_load((roots / "tiny.yaml").read_text())
    settings["luna16"]["selection"] = "last"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(SystemExit):
        main(["--settings", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "b"), "--inits", "scratch"])
    assert "section luna16 sets selection, which the study sets itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # The demo's arms are chosen by --inits on your data.
        main(["--settings", str(roots / "tiny.yaml"), "--out", str(tmp_path / "c"), "--objectives", "genesis"])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--objectives: applies to the demo" in error[0]


def _steps(finished=()):
    keys = ["manifest", "shards", "pretrain/resnet50", "luna16/patches"]
    keys += [f"{t}/resnet50/{i}" for t in ("luna16", "mura") for i in ("scratch", "genesis")]
    needs = {"shards": ("manifest",), "pretrain/resnet50": ("shards",)}
    for key in keys:
        if "/resnet50/" in key:
            needs[key] = (("pretrain/resnet50",) if key.endswith("genesis") else ()) + (
                ("luna16/patches",) if key.startswith("luna16") else ()
            )
    return [Step(k, k, needs=needs.get(k, ()), finished=lambda k=k: k in finished) for k in [*keys, "report"]]


def _planned_cells(out, **changes):
    """{(task, backbone, init): resolved options} of every cell `python -m study --protocol thesis` plans, each
    genesis encoder a stand-in folder with its card (nothing is read or trained)."""
    import json
    from importlib import import_module

    from study.experiment import Experiment, ExperimentOptions

    experiment = Experiment(
        ExperimentOptions(out=out, corpus="c", roots={"luna16": "l", "mura": "m"}, protocol="thesis", **changes)
    )
    cells = {}
    for task, backbone, init in product(("luna16", "mura"), ("resnet50", "vgg16"), ("scratch", "genesis", "imagenet")):
        folder = experiment.pretrain_dir(backbone)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "encoder.h5").write_bytes(b"stand-in")
        (folder / "card.json").write_text(json.dumps({"backbone": backbone}))
        module = import_module(f"{task}.experiment")
        cells[task, backbone, init] = module.resolve_options(experiment.cell_options(task, backbone, init))
    return cells


def test_the_thesis_protocol_plans_each_cell_with_its_thesis_schedule_five_folds_and_two_runs(tmp_path, monkeypatch):
    """Every one of the 12 cells of thesis Fig. 5.1, as `python -m study --protocol thesis` plans it: the schedule of
    its row of the thesis's tables (written in tests/test_transfer.py from the thesis, not read from ours), SGD at
    0.001 with dropout 0.5, the model chosen on the test data as the thesis chose, LUNA16's five folds over subset
    pairs and MURA's two runs. A changed row of our table is caught (shown with one changed)."""
    from test_transfer import THESIS_ROWS

    import luna16.experiment

    cells = _planned_cells(tmp_path / "experiment")
    assert set(cells) == set(THESIS_ROWS)
    for cell, options in cells.items():
        schedule = (options.epochs, options.warmup_epochs, options.batch_size, options.lr_factor)
        schedule += (options.lr_patience, options.momentum)
        assert schedule == THESIS_ROWS[cell], cell
        assert (options.lr, options.dropout, options.selection) == (0.001, 0.5, "test"), cell
        if cell[0] == "luna16":
            assert list(options.folds) == [1, 2, 3, 4, 5] and options.negative_fraction == 0.1, cell
            assert (options.patch_size, options.positive_copies) == (64, 8), cell
        else:
            assert options.repeats == 2 and options.body_part == ["XR_SHOULDER"], cell
    # A table with one row changed plans that cell otherwise, and the comparison above sees it.
    table = dict(luna16.experiment.THESIS_SCHEDULES)
    table["vgg16", "genesis"] = replace(table["vgg16", "genesis"], epochs=14)
    monkeypatch.setattr(luna16.experiment, "THESIS_SCHEDULES", table)
    changed = _planned_cells(tmp_path / "mutated")
    assert [cell for cell in THESIS_ROWS if changed[cell].epochs != THESIS_ROWS[cell][0]] == [
        ("luna16", "vgg16", "genesis")
    ]


def test_cells_select_by_pattern_pull_unfinished_prerequisites_and_split_over_an_array():
    keys = [s.key for s in selected_steps(_steps(), ["mura/*/genesis"])]
    assert keys == ["manifest", "shards", "pretrain/resnet50", "mura/resnet50/genesis", "report"]
    done = ("manifest", "shards", "pretrain/resnet50", "luna16/patches")
    assert [s.key for s in selected_steps(_steps(done), ["mura/*/genesis"])] == ["mura/resnet50/genesis", "report"]
    shares = [[s.key for s in selected_steps(_steps(done), [], (k, 3))] for k in range(3)]
    cells = [key for share in shares for key in share if key.count("/") == 2]
    assert sorted(cells) == sorted(k for k in (s.key for s in _steps()) if k.count("/") == 2)  # Each cell once.
    assert all(share[-1] == "report" for share in shares)
    # Array tasks started together pull the shared prerequisites their cells need (`run` does each under its lock).
    shares = [[s.key for s in selected_steps(_steps(("luna16/patches",)), [], (k, 2))] for k in range(2)]
    assert shares == [
        ["luna16/resnet50/scratch", "mura/resnet50/scratch", "report"],  # Its cells need the patches only.
        ["manifest", "shards", "pretrain/resnet50", "luna16/resnet50/genesis", "mura/resnet50/genesis", "report"],
    ]
    with pytest.raises(Exception, match="luna17/\\*"):
        selected_steps(_steps(), ["luna17/*"])


def test_slurm_array_index_counts_from_the_arrays_first_id(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert slurm_array() == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")  # --array=3-9:2: ids 3, 5, 7, 9.
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    assert slurm_array() == (3, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    with pytest.raises(Exception, match="gives task 3 of an array of 3"):
        slurm_array()
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert slurm_array() is None


def _recomputed_auc(folder, level):
    """A cell's AUC at `level` from its saved test scores by scikit-learn: the mean over runs of the mean over the
    folds that hold both classes, as the report defines it."""
    from sklearn.metrics import roc_auc_score

    scores = pd.read_csv(Path(folder) / "test_scores.csv")
    scores = scores[scores["level"] == level]
    runs = []
    for _, run in scores.groupby("run"):
        folds = [roc_auc_score(f.label, f.probability) for _, f in run.groupby("stratum") if f["label"].nunique() > 1]
        runs.append(sum(folds) / len(folds))
    return sum(runs) / len(runs)


def _mtimes(out):
    """Every file under `out` (the locks aside) and its modification time."""
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.endswith("lock")}


@pytest.mark.slow
def test_the_thesis_protocol_fills_all_12_cells_split_over_processes_and_a_rerun_keeps_every_step(
    roots, keras_home, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "experiment"
    study(roots, out, "--protocol", "thesis", "--cells", "luna16/*/*")  # One machine's share, prerequisites pulled.
    first = capsys.readouterr().out
    assert "report: 6 of 12 cells not finished yet" in first
    assert not (out / "report" / "report.md").exists()
    for index in (0, 1):  # A two-task Slurm array over every cell: the luna16 ones kept, the mura ones dealt out.
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(index))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        study(roots, out, "--protocol", "thesis")
        text = capsys.readouterr().out
        assert ("report: " in text) and ((out / "report" / "report.md").exists() == (index == 1)), text[-2000:]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    results = pd.read_csv(out / "report" / "results.csv")
    thesis = yaml.safe_load(Path("study/thesis_results.yaml").read_text())["cells"]
    report = (out / "report" / "report.md").read_text()
    assert "**Protocol: thesis**" in report and "Cells: 12 of 12." in report
    filled = 0
    for cell in thesis:
        if cell["task"] == "mura" and cell.get("body_parts") not in (None, ["XR_SHOULDER"]):
            continue
        rows = results[(results["dataset"] == cell["task"]) & (results["backbone"] == cell["backbone"])]
        rows = rows[(rows["metric"] == "auc") & (rows["level"] == cell["level"])]
        assert len(rows) == 1, (cell, results[["dataset", "backbone", "level", "metric"]])
        row = rows.iloc[0]
        folder = out / "cells" / f"{cell['task']}_{cell['backbone']}_{cell['init']}"
        assert row[cell["init"]] == pytest.approx(_recomputed_auc(folder, cell["level"]), abs=1e-9)  # Our value ...
        assert row[f"thesis_{cell['init']}"] == pytest.approx(cell["auc"])  # ... beside the thesis's.
        filled += 1
    assert filled == 12
    luna = results[(results["dataset"] == "luna16") & (results["metric"] == "auc")].set_index("level")
    assert luna.loc["patch", "thesis"].str.contains("its own level").all()  # The thesis's level (its wording) ...
    assert luna.loc["candidate", "thesis"].str.contains("read as a candidate scored by the mean of its 3").all()
    assert report.count("| luna16/") == 6  # The CPM of every LUNA16 cell.
    before = _mtimes(out)
    assert len(before) > 12 * 6 + 6  # Each cell's weights, scores, metrics, figures; the report; the steps' records.
    study(roots, out, "--protocol", "thesis")  # Run again: every step kept, nothing trained, no file written.
    again = capsys.readouterr().out
    assert _mtimes(out) == before
    assert again.count("done earlier with these settings and data, kept (") == 12  # Every fold and run of 12 cells.
    assert "Epoch" not in again


def test_the_readmes_settings_example_reaches_each_stage_checked(tmp_path):
    import textwrap

    from genesis2d import pretrain
    from study.experiment import Experiment, ExperimentOptions, read_settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "settings.yaml").write_text(textwrap.dedent(block))
    sections = read_settings(tmp_path / "settings.yaml")
    roots = sections.pop("roots")
    assert set(roots) == {"corpus", "luna16", "mura"}
    corpus = roots.pop("corpus")
    experiment = Experiment(
        ExperimentOptions(out=tmp_path / "out", corpus=corpus, roots=roots, stage_settings=sections)
    )
    config = experiment.stage("pretrain", pretrain.PretrainConfig, pretrain.build_parser())
    assert (config.epochs, config.precision) == (50, "mixed_float16")
    luna = experiment.cell_options("luna16", "resnet50", "genesis")
    assert luna.workers == 16 and luna.selection == "held-out" and luna.encoder.endswith("pretrain/resnet50")
    assert experiment.cell_options("mura", "vgg16", "scratch").body_part == ["XR_SHOULDER"]
    (tmp_path / "bad.yaml").write_text(textwrap.dedent(block).replace("epochs: 50", "epochs: fifty"))
    bad = read_settings(tmp_path / "bad.yaml")
    bad.pop("roots")
    with pytest.raises(Exception, match="section pretrain: --epochs"):
        Experiment(ExperimentOptions(out=tmp_path / "out", roots=roots, stage_settings=bad)).stage(
            "pretrain", pretrain.PretrainConfig, pretrain.build_parser()
        )


@pytest.mark.slow
def test_the_arms_beyond_the_thesis_pretrain_their_own_encoders_with_equal_steps(roots, keras_home, tmp_path, capsys):
    """--inits contrastive genesis+contrastive: one pretraining step per backbone and objective, each its own folder,
    the same steps of the same batch as genesis's, and each cell needing its own encoder."""
    from study.experiment import Experiment, ExperimentOptions, read_settings

    out = tmp_path / "experiment"
    inits = ["scratch", "genesis", "contrastive", "genesis+contrastive"]
    study(roots, out, "--plan", "--inits", *inits)
    text = capsys.readouterr().out
    assert not out.exists()
    for backbone in ("resnet50", "vgg16"):
        for key in (
            f"pretrain/{backbone}",
            f"pretrain/{backbone}_contrastive",
            f"pretrain/{backbone}_genesis+contrastive",
        ):
            assert re.search(rf"^ +\d+\. {re.escape(key)} ", text, re.M), key
    assert len(re.findall(r"^ +\d+\. ((?:luna16|mura)/\w+/[\w+]+) ", text, re.M)) == 2 * 2 * 4
    sections = read_settings(roots / "tiny.yaml")
    roots_section = sections.pop("roots")
    corpus, datasets = roots_section.pop("corpus"), roots_section.pop("datasets")
    experiment = Experiment(
        ExperimentOptions(
            out=out,
            corpus=corpus,
            datasets=datasets,
            roots=roots_section,
            inits=tuple(inits),
            stage_settings=sections,
            folds=(1,),
        )
    )
    configs = {o: experiment.pretrain_config("resnet50", o) for o in ("genesis", "contrastive", "genesis+contrastive")}
    assert {o: Path(c.out).name for o, c in configs.items()} == {
        "genesis": "resnet50",
        "contrastive": "resnet50_contrastive",
        "genesis+contrastive": "resnet50_genesis+contrastive",
    }
    assert len({(c.epochs, c.steps_per_epoch, c.batch_size) for c in configs.values()}) == 1  # Equal compute.
    assert configs["contrastive"].objective == "contrastive"
    cell = experiment.cell_options("luna16", "resnet50", "contrastive")
    assert cell.encoder == configs["contrastive"].out
    step = next(s for s in experiment.steps(measure=False) if s.key == "mura/vgg16/genesis+contrastive")
    assert step.needs == ("pretrain/vgg16_genesis+contrastive",)
    # Each arm's epoch is the same number of steps (equal compute), whatever the slices a step reads.
    counts = {o: experiment._pretrain_step("resnet50", {"train": 100, "val": 20}, False, o) for o in configs}
    assert len({step.train_steps for step in counts.values()}) == 1


@pytest.mark.slow
def test_a_models_weights_are_counted_at_any_input_size():
    from study.measure import classifier_step, parameters, pretraining_step

    assert pretraining_step("resnet18", 64, 2, "float32", steps=1).parameters == parameters("pretraining", "resnet18")
    assert classifier_step("resnet18", 64, 2, "float32", steps=1).parameters == parameters("fine-tuning", "resnet18")


def _squares_settings(tmp_path, **extra):
    """A settings file that adds the tests' made-up task (tests/squares_task.py) to the study, at tiny sizes."""
    folder = tmp_path / "squares_data"
    folder.mkdir(exist_ok=True)
    settings = {
        "tasks": ["squares_task:TASK"],
        "roots": {"squares": str(folder)},
        "squares": {"image_size": 32, "steps_per_epoch": 8, "lr": 0.01, "bn_momentum": 0.5, "verbose": 0},
        **extra,
    }
    path = tmp_path / "squares.yaml"
    path.write_text(yaml.safe_dump(settings))
    return ["--settings", str(path), "--inits", "scratch", "--backbone", "resnet18", "--measure-steps", "0"]


def test_a_task_of_ones_own_joins_the_plan_without_a_change_to_the_study(tmp_path, capsys):
    """The made-up third task, named in the settings file, is a step of the plan with its own counts; the installed
    tasks are flags of `python -m study` without the study naming them."""
    from study.command import build_parser, main

    main([*_squares_settings(tmp_path), "--out", str(tmp_path / "out"), "--plan"])
    text = capsys.readouterr().out
    assert re.search(r"^ +1\. squares/resnet18/scratch +not measured .* Squares resnet18, init scratch$", text, re.M)
    assert "48 images of squares; 1 x 2 epochs of 8 steps at 32 px, batch 16" in text
    assert re.search(r"^ +2\. report ", text, re.M) and not (tmp_path / "out").exists()
    assert "training groups held out (Squares: slides); the test data never choose" in text  # The task's words.
    flags = build_parser().format_help()
    assert "--luna16 LUNA16" in flags and "--mura MURA" in flags  # From the installed tasks' entry points.


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": ["nowhere.at_all:TASK"]}, "nowhere.at_all:TASK: names no task (No module named 'nowhere')"),
        ({"tasks": ["squares_task:SIZE"]}, "squares_task:SIZE: is a int, not a transfer.tasks.StudyTask"),
        ({"roots": {"squares2": "x"}}, "section roots: unknown keys squares2; known: corpus, datasets, luna16, mura"),
        ({"squares": {"seed": 3}}, "section squares sets seed, which the study sets itself"),
    ],
)
def test_a_task_or_root_the_study_cannot_use_stops_in_one_line(tmp_path, capsys, change, message):
    from study.command import main

    with pytest.raises(SystemExit) as stop:
        main([*_squares_settings(tmp_path, **change), "--out", str(tmp_path / "out"), "--plan"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error


def test_a_task_of_ones_own_runs_in_the_study_and_is_a_row_of_its_report(tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from study.command import main

    out = tmp_path / "out"
    main([*_squares_settings(tmp_path), "--out", str(out)])
    predictions = pd.read_csv(out / "cells" / "squares_resnet18_scratch" / "predictions.csv")
    results = pd.read_csv(out / "report" / "results.csv")
    row = results[(results["dataset"] == "squares") & (results["metric"] == "auc")].iloc[0]
    assert row["scratch"] == pytest.approx(roc_auc_score(predictions["label"], predictions["probability"]), abs=1e-9)
    assert row["thesis"] == "the thesis has no squares results"
    assert "squares" in (out / "report" / "report.md").read_text()


def test_the_plan_says_what_difference_each_tasks_test_data_can_detect(roots, tmp_path):
    """Each task's test data as the plan simulates them, against an independent count of the trees: per fold of
    LUNA16 each test scan's positive and negative candidates; MURA's valid split, each patient's abnormal and normal
    images. The plan's line for each is the smallest difference simulated on that shape at the task's AUC."""
    from study.experiment import Experiment, ExperimentOptions
    from transfer.power import detectable_difference

    data = roots / "data"
    options = ExperimentOptions(
        out=tmp_path / "out", roots={"luna16": str(data / "LUNA16"), "mura": str(data / "MURA-v1.1")}
    )
    experiment = Experiment(options)
    designs = {
        name: task.test_design(Path(options.roots[name]), experiment.cell_options(name, "resnet50", "scratch"))
        for name, task in experiment.tasks.items()
    }
    candidates = pd.read_csv(data / "LUNA16" / "candidates_V2.csv")
    for fold in range(1, 6):
        scans = {p.stem for k in (2 * fold - 2, 2 * fold - 1) for p in (data / "LUNA16" / f"subset{k}").glob("*.mhd")}
        test = candidates[candidates["seriesuid"].isin(scans)]
        expected = sorted(zip(test.groupby("seriesuid")["class"].sum(), test.groupby("seriesuid").size()))
        got = sorted((int(p), int(p + n)) for p, n in designs["luna16"]["candidate"][fold - 1])
        assert got == [(int(p), int(c)) for p, c in expected], fold
        assert (designs["luna16"]["patch"][fold - 1] == 3 * designs["luna16"]["candidate"][fold - 1]).all()
    images = pd.read_csv(data / "MURA-v1.1" / "valid_image_paths.csv", header=None, names=["path"])
    images = images[images["path"].str.contains("XR_SHOULDER")]
    images["patient"] = images["path"].str.extract(r"(patient\d+)")[0]
    images["label"] = images["path"].str.contains("_positive").astype(int)
    per_patient = images.groupby("patient")["label"].agg(["sum", "count"])
    expected = sorted(zip(per_patient["sum"], per_patient["count"] - per_patient["sum"]))
    assert sorted(map(tuple, designs["mura"]["image"][0].tolist())) == [(int(a), int(b)) for a, b in expected]
    lines = experiment.power_lines()
    assert "for each comparison (genesis vs scratch, genesis vs imagenet)" in lines[0]
    for name, level in (("luna16", "candidate"), ("mura", "image")):
        found = detectable_difference(designs[name][level], experiment.tasks[name].expected_auc[0])
        line = next(line for line in lines if line.startswith(f"  {name} {level}: "))
        assert f"{found['difference']:.4f}" in line and f"{found['clusters']:,} clusters" in line


def test_the_demo_is_the_experiment_with_its_settings_file(capsys):
    """`python -m study` without roots plans the experiment on the demo trees with study/demo.yaml: its probes and
    MURA's label fractions are cells, and each pretraining arm reads its own config file beneath the shared values."""
    import yaml as yaml_module

    from genesis2d.options import DEMO_CONFIG, DEMO_CONTRASTIVE_CONFIG
    from study.command import DEMO_SETTINGS, parse_args
    from study.experiment import Experiment

    options = parse_args(["--plan"])
    assert options.settings_file == str(DEMO_SETTINGS) and options.out.name == "study"
    assert options.backbones == ("resnet18",) and options.probe and options.fractions == {"mura": (0.25, 0.5)}
    assert options.inits[:4] == ("scratch", "genesis", "contrastive", "genesis+contrastive")
    experiment = Experiment(options)
    keys = [cell.key for cell in experiment.cells()]
    assert "luna16/resnet18/genesis_probe" in keys and "mura/resnet18/scratch_labels25" in keys
    assert not any(key.startswith("luna16/") and "_labels" in key for key in keys)
    assert len(keys) == len(options.inits) * (2 + 2 + 2)  # LUNA16: cells, probes; MURA: cells, probes, 2 fractions.
    for objective, path in (("genesis", DEMO_CONFIG), ("contrastive", DEMO_CONTRASTIVE_CONFIG)):
        config = experiment.pretrain_config("resnet18", objective)
        file = yaml_module.safe_load(Path(path).read_text())
        assert config.lr == file["lr"] and config.batch_size == file["batch_size"]  # The arm's own file...
        assert (config.epochs, config.steps_per_epoch) == (3, 40)  # ...beneath the demo's shared values.
        assert config.manifest and not config.shards  # 220 slices: read from the manifest, no shards.
    probe = experiment.cell_options("mura", "resnet18", "genesis", probe=True)
    fraction = experiment.cell_options("mura", "resnet18", "genesis", fraction=0.25)
    assert (probe.probe, probe.repeats) == (True, 1) and (fraction.train_fraction, fraction.repeats) == (0.25, 2)
    flagged = parse_args(["--repeats", "3", "--fractions", "0.5", "--pretrain-steps", "7"])
    assert flagged.repeats == 3 and flagged.fractions == {"mura": (0.5,)}  # Flags win over the file.
    assert Experiment(flagged).pretrain_config("resnet18").steps_per_epoch == 7


@pytest.mark.parametrize(
    "study, message",
    [
        ({"repeats": 0}, "squares.yaml: section study: --repeats: must be at least 1. Received: 0."),
        ({"fractions": {"squares": [1.5]}}, "--fractions: must be shares in (0, 1) (study: fractions: a mapping"),
        ({"fractions": {"mura": [0.5]}}, "--fractions: names tasks without a root: mura; tasks: squares"),
        ({"probe": "yes"}, "section study: --probe: must be true or false. Received: 'yes'."),
        ({"inits": ["scratch", "resnet"]}, "section study: --inits: must be one of scratch, genesis, imagenet"),
        ({"epochs": 3}, "squares.yaml: section study: unknown options epochs"),
    ],
)
def test_a_bad_study_setting_stops_in_one_line(tmp_path, capsys, study, message):
    from study.command import main

    argv = _squares_settings(tmp_path, study=study)
    with pytest.raises(SystemExit) as stop:
        main([*[a for a in argv if a != "--inits" and a != "scratch"], "--out", str(tmp_path / "out"), "--plan"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not (tmp_path / "out").exists()


def test_a_sections_config_file_is_read_from_the_settings_folder_beneath_its_own_keys(tmp_path, capsys):
    from study.command import main

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "squares.yaml").write_text("image_size: 64\nsteps_per_epoch: 3\n")
    argv = _squares_settings(tmp_path)
    settings = yaml.safe_load(Path(argv[1]).read_text())
    settings["squares"] = {"config": "configs/squares.yaml", "steps_per_epoch": 5, "verbose": 0}
    Path(argv[1]).write_text(yaml.safe_dump(settings))
    main([*argv, "--out", str(tmp_path / "out"), "--plan"])
    assert "epochs of 5 steps at 64 px" in capsys.readouterr().out


def test_a_library_call_meets_the_flags_line(tmp_path):
    from plumbing.errors import UsageError
    from study.experiment import ExperimentOptions

    with pytest.raises(UsageError, match=r"^--repeats: must be at least 1\. Received: 0\.$"):
        ExperimentOptions(out=tmp_path, repeats=0)
    with pytest.raises(UsageError, match=r"^--inits: must be one of scratch, .*Received: 'resnet'\.$"):
        ExperimentOptions(out=tmp_path, inits=("scratch", "resnet"))
