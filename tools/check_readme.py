"""Checks the README's demo table against a report of `python -m study`, cell by cell.

    python -m study && python tools/check_readme.py runs/study/report/report.md

The README's table under "## The demo study" promises what a clone prints; this
compares it with the results table of a report.md (its first table whose columns
start `dataset | backbone | metric`), matching rows by those three cells and columns
by their headers. It prints one line per cell that differs (row, column, README
value, report value, and the report's estimate, the cell's first number, minus the
README's) and one per row or column that only one of them has, and exits 1;
otherwise it prints one line and exits 0. Only the table is compared: the report's
other lines (its paths) may differ.

The README promises its digits on a CPU of the kind that made them, which both
files name in their line `CPU of the runs (their run.json): ...` (model, vector
instruction sets, oneDNN switch). When both name a CPU and the two differ, the
digits are not compared: another CPU's kernels round in another order, and the
demo's short trainings carry that into every number. The check then prints the
cells whose digits differ, for information, and fails only on what holds on every
CPU: the same rows and columns, the same `test` and `clusters` cells (they count
the data, not the training), and every other cell of the same form (its numbers
aside: an interval stays an interval, a `p =` stays a p-value, a `sel.` keeps its
letter). It also counts the comparisons whose significance at 0.05 changed; it
does not fail on them, since the report's tests hold each trained model fixed and
so leave training noise, which another CPU's rounding is, out of their p-values.
Pure Python: no TensorFlow.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # This checkout's packages, whatever is installed.

from plumbing.cli import ArgumentParser, run_command
from plumbing.errors import InputError

SECTION = "## The demo study"  # The README's section that holds the demo table.
KEY = ("dataset", "backbone", "metric")  # The columns that name a row.
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
CELL_BORDER = re.compile(r"(?<!\\)\|")  # A pipe not escaped as `\|`.


def _cells(line):
    return [cell.strip() for cell in CELL_BORDER.split(line.strip().strip("|"))]


def _section(lines, heading):
    """The lines from `heading` to the next heading of the same or a higher level (a code block's `#` is none)."""
    level = len(heading) - len(heading.lstrip("#"))
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        return None
    fenced = False
    for end in range(start, len(lines)):
        line = lines[end]
        fenced ^= line.lstrip().startswith("```")
        if not fenced and line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            return lines[start:end]
    return lines[start:]


def results_table(lines, source):
    """(header, {key: {column: cell}}) of the first Markdown table in `lines` whose columns start with KEY.

    Raises InputError naming `source` when there is none, a row's cells do not fit the
    header, or two rows share a key.
    """
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|") or tuple(_cells(line)[: len(KEY)]) != KEY:
            continue
        header = _cells(line)
        rows = {}
        for row_line in lines[i + 2 :]:  # After the header's `| --- |` line.
            if not row_line.lstrip().startswith("|"):
                break
            cells = _cells(row_line)
            if len(cells) != len(header):
                raise InputError(
                    source, f"a row of the demo table has {len(cells)} cells, not {len(header)}: {row_line}"
                )
            key = tuple(cells[: len(KEY)])
            if key in rows:
                raise InputError(source, f"the demo table has two rows {' | '.join(key)}")
            rows[key] = dict(zip(header, cells))
        if not rows:
            raise InputError(source, "the demo table has no rows")
        return header, rows
    raise InputError(source, f"has no table whose columns start with {' | '.join(KEY)}")


def readme_table(path):
    """The demo table of the README at `path`: the results table in its SECTION."""
    lines = _section(Path(path).read_text().splitlines(), SECTION)
    if lines is None:
        raise InputError(path, f"has no section {SECTION!r}")
    return results_table(lines, path)


def report_table(path):
    """The results table of a report.md written by `python -m study` (or `python -m study.report`)."""
    return results_table(Path(path).read_text().splitlines(), path)


CPU_PREFIX = "CPU of the runs (their run.json): "  # The line study/report.py writes, and the README repeats.
CPUS_PREFIX = "CPUs of the runs (their run.json): "  # Its form when the runs ran on more than one CPU.
NOT_RECORDED = "not recorded."  # What study/report.py writes for runs whose run.json names no CPU.
# Cells that count the data (clusters, the test chosen from them), not what training made: equal on every CPU.
DATA_COLUMNS = ("test", "clusters")
SIGNIFICANCE = 0.05  # The report's alpha.
P_VALUE = re.compile(r"\(p ([=<]) (" + NUMBER.pattern + r")")


def cpu_of(lines):
    """What a CPU line among `lines` says (model, vector sets, oneDNN setting), or None where none names one.

    Runs on several CPUs read as their `CPUs of the runs` line, which no single CPU equals.
    """
    for line in (line.strip() for line in lines):
        for prefix in (CPU_PREFIX, CPUS_PREFIX):
            if line.startswith(prefix):
                said = line[len(prefix) :]
                return None if said == NOT_RECORDED else (said if prefix == CPU_PREFIX else line)
    return None


def cpus(readme_path, report_path):
    """(the README's CPU, the report's CPU): each the text of its CPU line, or None."""
    theirs = cpu_of(_section(Path(readme_path).read_text().splitlines(), SECTION) or [])
    return theirs, cpu_of(Path(report_path).read_text().splitlines())


def another_cpu(readme_cpu, report_cpu):
    """True where both files name a CPU and the two differ: then the digits are not the README's promise."""
    return bool(readme_cpu and report_cpu and readme_cpu != report_cpu)


def form(cell):
    """A cell with its numbers masked and a p-value's `=` or `<` made one: what stays on every CPU."""
    return " ".join(NUMBER.sub("#", P_VALUE.sub("(p ~ #", cell)).split())


def p_value(cell):
    """(estimate, p) of a comparison cell such as `+0.064 [+0.037, +0.090] (p = 0.00257, 4 df)`, or None."""
    found, estimate = P_VALUE.search(cell), NUMBER.match(cell.strip())
    return None if found is None or estimate is None else (float(estimate.group()), float(found.group(2)))


def estimate_gap(readme_cell, report_cell):
    """The report's first number (the cell's estimate) minus the README's, as text at the cells' precision.

    None when either cell holds no number.
    """
    ours, theirs = NUMBER.search(readme_cell), NUMBER.search(report_cell)
    if ours is None or theirs is None:
        return None
    digits = max(len(m.group().partition(".")[2].partition("e")[0]) for m in (ours, theirs))
    return f"{float(theirs.group()) - float(ours.group()):+.{digits}f}"


def _cell_line(name, column, ours, theirs):
    gap = estimate_gap(ours, theirs)
    return f"row {name}, column {column!r}: README {ours!r}, report {theirs!r}" + (
        "" if gap is None else f" (estimate {gap})"
    )


def differences(readme, report, digits=True):
    """(lines that fail the check, lines for information) between two (header, rows) tables.

    With `digits`, every cell that differs fails. Without (another CPU), a cell fails only where it
    differs in a DATA_COLUMNS column or in its form; a cell that differs in its digits alone is information.
    Rows and columns that only one table has always fail.
    """
    (readme_header, readme_rows), (report_header, report_rows) = readme, report
    failing = [f"column {c!r}: in the README only" for c in readme_header if c not in report_header]
    failing += [f"column {c!r}: in the report only" for c in report_header if c not in readme_header]
    information = []
    columns = [c for c in readme_header[len(KEY) :] if c in report_header]
    for key, row in readme_rows.items():
        name = " | ".join(key)
        if key not in report_rows:
            failing.append(f"row {name}: in the README only")
            continue
        for column in columns:
            ours, theirs = row[column], report_rows[key][column]
            if " ".join(ours.split()) == " ".join(theirs.split()):
                continue
            kept = not digits and column not in DATA_COLUMNS and form(ours) == form(theirs)
            (information if kept else failing).append(_cell_line(name, column, ours, theirs))
    failing += [f"row {' | '.join(key)}: in the report only" for key in report_rows if key not in readme_rows]
    return failing, information


def findings(readme, report):
    """(comparisons, whose significance changed, reversed): comparison cells at SIGNIFICANCE in both tables.

    Reversed: significant in both, with estimates of opposite signs.
    """
    (_, readme_rows), (_, report_rows) = readme, report
    compared = changed = reversed_ = 0
    for key, row in readme_rows.items():
        for column, cell in row.items():
            ours, theirs = p_value(cell), p_value(report_rows.get(key, {}).get(column, ""))
            if ours is None or theirs is None:
                continue
            compared += 1
            significant = (ours[1] < SIGNIFICANCE, theirs[1] < SIGNIFICANCE)
            changed += significant[0] != significant[1]
            reversed_ += all(significant) and ours[0] * theirs[0] < 0
    return compared, changed, reversed_


def parse_args(argv=None):
    parser = ArgumentParser(prog="python tools/check_readme.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report.md of `python -m study` (runs/study/report/report.md).")
    parser.add_argument(
        "--readme", type=Path, default=ROOT / "README.md", help="the README to check. Default: this checkout's."
    )
    return parser.parse_args(argv)


def run(args):
    readme, report = readme_table(args.readme), report_table(args.report)
    readme_cpu, report_cpu = cpus(args.readme, args.report)
    elsewhere = another_cpu(readme_cpu, report_cpu)
    failing, information = differences(readme, report, digits=not elsewhere)
    if not failing and not information:
        print(f"README demo table matches {args.report}")
        return 0
    if elsewhere:
        for line in information:
            print(f"digits (not compared): {line}")
        compared, changed, reversed_ = findings(readme, report)
        print(
            f"findings: of {compared} comparisons, {changed} changed significance at {SIGNIFICANCE} and "
            f"{reversed_} reversed (counted, not failed: the report's p-values hold each trained model fixed)"
        )
    for line in failing:
        print(line)
    if failing:
        print(f"README demo table differs from {args.report} in {len(failing)} place(s)")
        return 1
    print(
        f"README demo table: digits not compared: the README's were made on {readme_cpu.rstrip('.')}, these "
        f"runs ran on {report_cpu.rstrip('.')}, whose kernels round in another order (README, 'The demo "
        f"study'); rows, columns, tests, clusters and the form of every cell match {args.report}"
    )
    return 0


def main(argv=None):
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
