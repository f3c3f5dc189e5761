"""Writes what the thesis's own test data could detect: each task's `thesis_power.yaml`, which the report reads.

    python tools/thesis_power.py          # ~30 s on 2 cores

For every registered task that gives the shape of the thesis's test data
(`transfer.tasks.StudyTask.thesis_sizes`: LUNA16's 888 scans in five folds with its
patch counts), the smallest AUC difference the report's test detects with 80% power at
alpha 0.05 on data of that shape, simulated as the plan simulates the user's
(`transfer.power`, seed 0), at the task's expected AUC. The report sets the thesis's
own differences beside it. `tests/test_power.py` recomputes the file and compares.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # This checkout's packages, whatever is installed.

from plumbing.cli import ArgumentParser, run_command


def thesis_power(task):
    """The mapping `thesis_power.yaml` holds for `task`, or None where the thesis gives no shape."""
    from transfer.power import POWER, detectable_difference

    sizes = task.thesis_sizes()
    if sizes is None:
        return None
    words, level, design = sizes
    auc, source = task.expected_auc
    found = detectable_difference(design, auc, seed=0)
    return {
        "data": words,
        "level": level,
        "auc": auc,
        "auc_source": source,
        "power": POWER,
        "detectable": round(found["difference"], 5),
        "test": found["test"],
        "clusters": found["clusters"],
        "positives": found["positives"],
        "negatives": found["negatives"],
        "command": "python tools/thesis_power.py",
    }


def parse_args(argv=None):
    parser = ArgumentParser(prog="python tools/thesis_power.py", description=__doc__.split("\n\n")[0])
    return parser.parse_args(argv)


def run(args):
    import yaml

    from plumbing.atomic import write_text
    from transfer.tasks import registered

    for name, task in registered().items():
        values = thesis_power(task)
        if values is not None:
            path = task.thesis_power_file()
            write_text(
                path, "# Written by `python tools/thesis_power.py`; read by the report.\n" + yaml.safe_dump(values)
            )
            print(f"{name}: detectable {values['detectable']:.4f} at the thesis's sizes -> {path}")


def main(argv=None):
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
