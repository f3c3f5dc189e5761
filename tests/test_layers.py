"""The package layering: plumbing <- preprocessing <- genesis2d <- transfer <- luna16, mura <- study; no import runs
upward."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["plumbing", "preprocessing", "genesis2d", "transfer", ("luna16", "mura"), "study"]
LAYERS = [set(layer) if isinstance(layer, tuple) else {layer} for layer in ORDER]
# Every package may import those below it, never one above it nor (for the tasks) its sibling.
ABOVE = {package: set().union(*LAYERS[i:]) - {package} for i, layer in enumerate(LAYERS) for package in layer}


def imported_packages(path):
    """Top-level packages a module imports, anywhere in it (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_layer_imports_a_layer_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & ABOVE[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_lower_layers_name_the_tasks_only_in_prose():
    """Strings and comments may mention the tasks; identifiers may not."""
    import io
    import tokenize

    for package in ("plumbing", "preprocessing", "genesis2d", "transfer"):
        for path in (ROOT / package).rglob("*.py"):
            tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            names = {t.string for t in tokens if t.type == tokenize.NAME}
            assert not {n for n in names if "luna16" in n.lower() or "mura" in n.lower()}, path


def test_every_package_is_in_the_order():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set().union(*LAYERS)


@pytest.mark.parametrize("module", ["study/experiment.py", "study/report.py", "study/command.py"])
def test_the_study_runs_every_task_alike_and_names_none(module):
    """The experiment and the report reach the tasks through `transfer.tasks` only: no identifier names one and no
    string is one's name or step (prose, such as a --help example, may mention them)."""
    import io
    import tokenize

    tokens = list(tokenize.generate_tokens(io.StringIO((ROOT / module).read_text()).readline))
    names = {t.string for t in tokens if t.type == tokenize.NAME and ("luna16" in t.string or "mura" in t.string)}
    words = {t.string.strip("\"'") for t in tokens if t.type == tokenize.STRING}
    assert names == set() and words & {"luna16", "mura", "luna16/patches", "LUNA16", "MURA"} == set()
