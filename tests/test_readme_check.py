"""tools/check_readme.py: the README's demo table against a report of `python -m study`, and the CPU in run records.

Reports here are written from the README's own table, in the layout `study.report` writes
(the CPU line, the note, the results table, then the run-to-run spread's table, whose
columns also start `dataset | backbone | metric`), so no test trains anything.
"""

import json
from pathlib import Path

import pytest
from conftest import load_tool

from plumbing.runtime import ONEDNN_VARIABLE, cpu, versions
from study.report import cpu_line

ROOT = Path(__file__).resolve().parents[1]


CHECK = load_tool("check_readme")
SPREAD = [
    "## Run-to-run spread",
    "",
    "| dataset | backbone | metric | comparison | per | differences |",
    "| --- | --- | --- | --- | --- | --- |",
    "| luna16 | resnet18 | AUC, made up | genesis vs scratch | fold | +0.1, -0.1 |",
]


def _readme_table_lines():
    """The lines of the real README's demo table: header, `| --- |` line and rows."""
    lines = CHECK._section((ROOT / "README.md").read_text().splitlines(), CHECK.SECTION)
    start = next(i for i, line in enumerate(lines) if line.startswith("| dataset | backbone | metric"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


@pytest.fixture
def table():
    return _readme_table_lines()


def _write_report(path, table_lines):
    lines = ["# Results", "", "**Demo data.** Synthetic phantoms.", "", *table_lines, "", "Each number...", ""]
    lines += [*SPREAD, "", "## Runs", "", "CPU of the runs (their run.json): Some CPU (avx2), TF_ENABLE_ONEDNN_OPTS=0."]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_readme(path, table_lines):
    lines = ["# project", "", "```bash", "# a comment, not a heading", "```", "", CHECK.SECTION, "", "Words.", ""]
    lines += [*table_lines, "", "- sel. A: ...", "", "## Demo data", "", *SPREAD]
    path.write_text("\n".join(lines) + "\n")
    return path


def _check(tmp_path, capsys, readme_lines, report_lines):
    readme = _write_readme(tmp_path / "README.md", readme_lines)
    report = _write_report(tmp_path / "report.md", report_lines)
    code = CHECK.main(["--readme", str(readme), str(report)])
    return code, capsys.readouterr().out.strip().splitlines(), report


def test_the_readme_has_a_demo_table_and_matches_a_report_made_from_it(table, tmp_path, capsys):
    header, rows = CHECK.readme_table(ROOT / "README.md")
    assert header[:3] == ["dataset", "backbone", "metric"] and len(rows) > 0
    assert len(rows) == len(table) - 2 and {key[0] for key in rows} <= {"luna16", "mura"}
    report = _write_report(tmp_path / "report.md", table)
    assert CHECK.main([str(report)]) == 0  # The checkout's README.md, the default.
    assert capsys.readouterr().out.strip().splitlines() == [f"README demo table matches {report}"]


def test_an_identical_report_passes(table, tmp_path, capsys):
    code, out, report = _check(tmp_path, capsys, table, table)
    assert code == 0 and out == [f"README demo table matches {report}"]


def test_a_changed_digit_is_named_with_its_row_and_column(table, tmp_path, capsys):
    header, row = CHECK._cells(table[0]), CHECK._cells(table[2])
    column = header.index("genesis")
    before = row[column]
    digit = next(i for i, c in enumerate(before) if c.isdigit() and i > 0 and before[i - 1] == ".")
    after = before[:digit] + str((int(before[digit]) + 1) % 10) + before[digit + 1 :]
    changed = row.copy()
    changed[column] = after
    report = [*table[:2], "| " + " | ".join(changed) + " |", *table[3:]]
    code, out, _ = _check(tmp_path, capsys, table, report)
    assert code == 1 and len(out) == 2, out
    assert out[0].startswith(f"row {' | '.join(row[:3])}, column 'genesis': README {before!r}, report {after!r}")
    assert "(estimate " in out[0] and out[1].endswith("in 1 place(s)")


def test_a_missing_row_and_an_extra_row_are_named(table, tmp_path, capsys):
    missing = CHECK._cells(table[-1])
    extra = "| mura | resnet18 | a new metric |" + " x |" * (len(CHECK._cells(table[0])) - 3)
    code, out, _ = _check(tmp_path, capsys, table, [*table[:-1], extra])
    assert code == 1
    assert out[:2] == [
        f"row {' | '.join(missing[:3])}: in the README only",
        "row mura | resnet18 | a new metric: in the report only",
    ]


def test_a_missing_column_is_named(table, tmp_path, capsys):
    column = CHECK._cells(table[0]).index("thesis")
    dropped = ["| " + " | ".join(c for i, c in enumerate(CHECK._cells(line)) if i != column) + " |" for line in table]
    code, out, _ = _check(tmp_path, capsys, table, dropped)
    assert code == 1 and out[0] == "column 'thesis': in the README only" and len(out) == 2


def test_a_file_without_the_table_ends_in_one_line(table, tmp_path, capsys):
    readme = _write_readme(tmp_path / "README.md", table)
    (tmp_path / "report.md").write_text("# Results\n\nno table\n")
    with pytest.raises(SystemExit) as ended:
        CHECK.main(["--readme", str(readme), str(tmp_path / "report.md")])
    assert ended.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'report.md'}: has no table whose columns start with dataset | backbone | metric."
    )


def test_cpu_names_model_vector_sets_and_onednn_switch(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f amx_tile\n"
    )
    monkeypatch.setenv(ONEDNN_VARIABLE, "0")
    assert cpu(info) == {
        "model": "Test CPU 9000",
        "isa": ["sse4_2", "avx", "avx2", "fma", "avx512f", "amx_tile"],
        ONEDNN_VARIABLE: "0",
    }
    monkeypatch.delenv(ONEDNN_VARIABLE)
    elsewhere = cpu(tmp_path / "absent")  # Not Linux: no /proc/cpuinfo.
    assert elsewhere["isa"] is None and elsewhere[ONEDNN_VARIABLE] is None
    assert json.loads(json.dumps(versions()))["cpu"].keys() == {"model", "isa", ONEDNN_VARIABLE}


def test_the_report_names_the_cpu_of_its_runs(tmp_path):
    record = {"versions": {"cpu": {"model": "Test CPU", "isa": ["avx", "avx2"], ONEDNN_VARIABLE: None}}}
    for name in ("a", "b", "old"):
        (tmp_path / name).mkdir()
    for name in ("a", "b"):
        (tmp_path / name / "run.json").write_text(json.dumps(record))
    assert cpu_line([tmp_path / "a", tmp_path / "b"]) == (
        "CPU of the runs (their run.json): Test CPU (avx, avx2), TF_ENABLE_ONEDNN_OPTS=unset."
    )
    assert cpu_line([tmp_path / "a", tmp_path / "old"]) == (
        "CPUs of the runs (their run.json): Test CPU (avx, avx2), TF_ENABLE_ONEDNN_OPTS=unset (a); not recorded (old)."
    )


def _runs_on(folder, model, isa, onednn=None):
    """Run folders whose run.json names a CPU, and the report's CPU line that study.report writes for them."""
    record = {"versions": {"cpu": {"model": model, "isa": isa, ONEDNN_VARIABLE: onednn}}}
    for name in ("luna16_resnet18_scratch", "mura_resnet18_scratch"):
        (folder / name).mkdir(parents=True)
        (folder / name / "run.json").write_text(json.dumps(record))
    return cpu_line(sorted(folder.iterdir()))


def _with_cell(table, row_index, column, value):
    """The table's lines with one cell replaced."""
    header, row = CHECK._cells(table[0]), CHECK._cells(table[row_index])
    row[header.index(column)] = value
    return [*table[:row_index], "| " + " | ".join(row) + " |", *table[row_index + 1 :]]


def _readme_on(path, table, cpu_text):
    return _write_readme(path, [*table, "", cpu_text])


def _report_on(path, table, cpu_text):
    report = _write_report(path, table)
    report.write_text(
        report.read_text().replace(f"{CHECK.CPU_PREFIX}Some CPU (avx2), TF_ENABLE_ONEDNN_OPTS=0.", cpu_text)
    )
    return report


def _every_digit_moved(table):
    """The table as another CPU might print it: every number of every cell not about the data moved."""
    header = CHECK._cells(table[0])
    lines = table[:2]
    for line in table[2:]:
        cells = CHECK._cells(line)
        for i, column in enumerate(header):
            if i >= len(CHECK.KEY) and column not in CHECK.DATA_COLUMNS + ("thesis",):
                cells[i] = CHECK.NUMBER.sub(lambda m: m.group().replace("0", "5").replace("9", "1"), cells[i])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def test_a_report_from_another_cpu_passes_without_its_digits(table, tmp_path, capsys):
    """run.json names another CPU: every digit differs and the check passes, saying why and listing the digits."""
    readme = _readme_on(tmp_path / "README.md", table, _runs_on(tmp_path / "xeon", "Xeon", ["avx512f", "amx_tile"]))
    moved = _every_digit_moved(table)
    assert moved != table
    other = _runs_on(tmp_path / "epyc", "EPYC", ["avx2"])
    report = _report_on(tmp_path / "report.md", moved, other)
    assert CHECK.main(["--readme", str(readme), str(report)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("README demo table: digits not compared: the README's were made on Xeon (avx512f, ")
    assert "these runs ran on EPYC (avx2), TF_ENABLE_ONEDNN_OPTS=unset, whose kernels round" in out[-1]
    assert sum(line.startswith("digits (not compared): row ") for line in out) > 10
    assert out[-2].startswith("findings: of ") and "reversed (counted, not failed" in out[-2]
    # oneDNN's switch alone makes another kernel set.
    same_model = _runs_on(tmp_path / "off", "Xeon", ["avx512f", "amx_tile"], onednn="0")
    assert CHECK.main(["--readme", str(readme), str(_report_on(tmp_path / "off.md", moved, same_model))]) == 0
    capsys.readouterr()


def test_a_changed_digit_from_the_same_cpu_still_fails(table, tmp_path, capsys):
    line = _runs_on(tmp_path / "xeon", "Xeon", ["avx512f"])
    readme = _readme_on(tmp_path / "README.md", table, line)
    before = CHECK._cells(table[2])[CHECK._cells(table[0]).index("scratch")]
    report = _report_on(tmp_path / "report.md", _with_cell(table, 2, "scratch", "0.5" + before[3:]), line)
    assert CHECK.main(["--readme", str(readme), str(report)]) == 1
    out = capsys.readouterr().out
    assert "column 'scratch'" in out and "digits not compared" not in out and "findings" not in out, out


@pytest.mark.parametrize(
    "column, value, reason",
    [
        ("clusters", "19 scans (19 with a positive, 20 with a negative) in 5 folds", "counts the data"),
        ("test", "cluster jackknife, clusters: scans", "names the test"),
        ("genesis vs scratch", "-", "form: a comparison became a dash"),
        ("genesis", "0.990 sel. A", "form: the interval went"),
        ("scratch", "0.926 [0.896, 0.948] sel. B", "form: another selection rule"),
    ],
)
def test_what_holds_on_every_cpu_is_still_checked(table, tmp_path, capsys, column, value, reason):
    readme = _readme_on(tmp_path / "README.md", table, _runs_on(tmp_path / "xeon", "Xeon", ["avx512f"]))
    report = _report_on(tmp_path / "report.md", _with_cell(table, 2, column, value), _runs_on(tmp_path / "a", "A", []))
    assert CHECK.main(["--readme", str(readme), str(report)]) == 1, reason
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith(f"row {' | '.join(CHECK._cells(table[2])[:3])}, column {column!r}: README "), out
    assert out[-1].endswith("in 1 place(s)")


def test_a_missing_row_fails_on_another_cpu_too(table, tmp_path, capsys):
    readme = _readme_on(tmp_path / "README.md", table, _runs_on(tmp_path / "xeon", "Xeon", ["avx512f"]))
    report = _report_on(tmp_path / "report.md", table[:-1], _runs_on(tmp_path / "a", "A", []))
    assert CHECK.main(["--readme", str(readme), str(report)]) == 1
    assert f"row {' | '.join(CHECK._cells(table[-1])[:3])}: in the README only" in capsys.readouterr().out


def test_findings_count_changed_and_reversed_significance():
    """One comparison loses its significance and one is significant the other way; a third keeps both."""
    header = ["dataset", "backbone", "metric", "a vs b", "c vs b", "d vs b"]
    readme = {
        ("t", "r", "m"): dict(zip(header, ["t", "r", "m", "+0.06 (p = 0.003)", "-0.07 (p = 0.01)", "+0.1 (p < 0.001)"]))
    }
    report = {
        ("t", "r", "m"): dict(zip(header, ["t", "r", "m", "+0.01 (p = 0.4)", "+0.09 (p = 0.02)", "+0.2 (p < 0.001)"]))
    }
    assert CHECK.findings((header, readme), (header, report)) == (3, 1, 1)
    assert CHECK.form("+0.06 [+0.03, +0.09] (p = 0.003, 4 df) sel. A") == CHECK.form(
        "-0.1 [-0.2, +0.1] (p < 0.001, 4 df) sel. A"
    )


def test_a_report_or_readme_without_a_cpu_line_compares_digits(tmp_path):
    (tmp_path / "README.md").write_text(f"{CHECK.SECTION}\n\nno CPU named\n")
    (tmp_path / "report.md").write_text(f"## Runs\n\n{CHECK.CPU_PREFIX}not recorded.\n")
    assert CHECK.cpus(tmp_path / "README.md", tmp_path / "report.md") == (None, None)
    assert not CHECK.another_cpu("Xeon (avx512f), x=unset.", None)
    assert CHECK.cpu_of([f"{CHECK.CPUS_PREFIX}A (avx2), x=unset (a); B (avx2), x=unset (b)."]).startswith("CPUs of")
