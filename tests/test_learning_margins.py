"""tools/learning_margins.py: the margin of a learning assertion, and its table, from recorded rows."""

from conftest import load_tool

TOOL = load_tool("learning_margins")


def rows(*specs):
    """Rows as record_learning (tests/conftest.py) writes them, from (value, threshold, kind, seed, onednn)."""
    keys = ("value", "threshold", "kind", "seed", "onednn")
    return [{"test": "tests/t.py::test_x", "quantity": "gap", **dict(zip(keys, spec))} for spec in specs]


def test_a_margin_is_the_distance_to_the_bound_on_the_asked_side():
    above, below = rows((0.15, 0.05, "min", 0, "0"), (0.97, 1.1, "max", 0, "0"))
    assert abs(TOOL.margin(above) - 0.10) < 1e-12 and abs(TOOL.margin(below) - 0.13) < 1e-12
    (failed,) = rows((0.03, 0.05, "min", 1, "1"))
    assert abs(TOOL.margin(failed) + 0.02) < 1e-12  # Negative: the assertion failed.


def test_the_table_gives_each_kernel_sets_range_and_the_worst_margin():
    recorded = rows((0.15, 0.05, "min", 0, "0"), (0.26, 0.05, "min", 1, "0"), (0.11, 0.05, "min", 0, "1"))
    header, rule, line = TOOL.table(recorded, ["0", "1"])
    assert header == "| test | quantity | bound | TF_ENABLE_ONEDNN_OPTS=0 | TF_ENABLE_ONEDNN_OPTS=1 | worst margin |"
    assert rule.count("---") == 6
    assert line == "| test_x | gap | > 0.05 | 0.15 .. 0.26 (2 seeds) | 0.11 .. 0.11 (1 seeds) | +0.06 |"
