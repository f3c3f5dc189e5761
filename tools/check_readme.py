"""Checks the README's demo table against a report of `python -m study`, cell by cell.

    python -m study && python tools/check_readme.py runs/study/report/report.md

The README's table under "## The demo study" promises what a clone prints; this
compares it with the results table of a report.md (its first table whose columns
start `dataset | backbone | metric`), matching rows by those three cells and columns
by their headers. It prints one line per cell that differs (row, column, README
value, report value, and the report's estimate, the cell's first number, minus the
README's) and one per row or column that only one of them has, and exits 1;
otherwise it prints one line and exits 0. Only the table is compared: the report's
other lines (the CPU of its runs, its paths) may differ. Pure Python: no TensorFlow.
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


def cpu_of(lines):
    """What a CPU line among `lines` says (model, vector sets, oneDNN setting), or None."""
    return next((line.strip()[len(CPU_PREFIX) :] for line in lines if line.strip().startswith(CPU_PREFIX)), None)


def cpu_note(readme_path, report_path):
    """A line saying the two tables come from different CPUs (whose kernels round differently), or None."""
    theirs = cpu_of(_section(Path(readme_path).read_text().splitlines(), SECTION) or [])
    ours = cpu_of(Path(report_path).read_text().splitlines())
    if theirs and ours and theirs != ours:
        return (
            f"note: the README's table was made on {theirs.rstrip('.')}, these runs on {ours.rstrip('.')}; "
            "another CPU's kernels round in another order, and the demo's short trainings carry that into the "
            "digits (README, 'The demo study')"
        )
    return None


def estimate_gap(readme_cell, report_cell):
    """The report's first number (the cell's estimate) minus the README's, as text at the cells' precision.

    None when either cell holds no number.
    """
    ours, theirs = NUMBER.search(readme_cell), NUMBER.search(report_cell)
    if ours is None or theirs is None:
        return None
    digits = max(len(m.group().partition(".")[2].partition("e")[0]) for m in (ours, theirs))
    return f"{float(theirs.group()) - float(ours.group()):+.{digits}f}"


def differences(readme, report):
    """One line per difference between two (header, rows) tables: cells, then rows and columns only one has."""
    (readme_header, readme_rows), (report_header, report_rows) = readme, report
    lines = [f"column {c!r}: in the README only" for c in readme_header if c not in report_header]
    lines += [f"column {c!r}: in the report only" for c in report_header if c not in readme_header]
    columns = [c for c in readme_header[len(KEY) :] if c in report_header]
    for key, row in readme_rows.items():
        name = " | ".join(key)
        if key not in report_rows:
            lines.append(f"row {name}: in the README only")
            continue
        for column in columns:
            ours, theirs = row[column], report_rows[key][column]
            if " ".join(ours.split()) != " ".join(theirs.split()):
                gap = estimate_gap(ours, theirs)
                lines.append(
                    f"row {name}, column {column!r}: README {ours!r}, report {theirs!r}"
                    + ("" if gap is None else f" (estimate {gap})")
                )
    lines += [f"row {' | '.join(key)}: in the report only" for key in report_rows if key not in readme_rows]
    return lines


def parse_args(argv=None):
    parser = ArgumentParser(prog="python tools/check_readme.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report.md of `python -m study` (runs/study/report/report.md).")
    parser.add_argument(
        "--readme", type=Path, default=ROOT / "README.md", help="the README to check. Default: this checkout's."
    )
    return parser.parse_args(argv)


def run(args):
    found = differences(readme_table(args.readme), report_table(args.report))
    for line in found:
        print(line)
    if found:
        note = cpu_note(args.readme, args.report)
        if note:
            print(note)
        print(f"README demo table differs from {args.report} in {len(found)} place(s)")
        return 1
    print(f"README demo table matches {args.report}")
    return 0


def main(argv=None):
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
