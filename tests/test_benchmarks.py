"""The benchmarks run (tiny sizes, on CPU), so they cannot rot; their figures belong to bigger machines."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_training_benchmark_reports_both_feeds_with_jit_off_and_on():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training.py"), "--backbones", "resnet18",
                             "--image-size", "32", "--crop-size", "64", "--slice-size", "96", "--batch-size", "4",
                             "--steps", "2", "--repeats", "1", "--volumes", "2", "--depth", "8"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("U-Net training at")):]
    assert lines[0].startswith("U-Net training at 32x32, batch 4, float32, CPU")
    rows = [line.split() for line in lines[2:]]
    assert [(row[0], row[1]) for row in rows] == [("resnet18", "off"), ("resnet18", "on")]
    for _, _, memory, pipeline, ratio, peak in rows:
        assert float(memory) > 0 and float(pipeline) > 0 and peak == "-"
        assert abs(float(ratio) - float(pipeline) / float(memory)) < 0.01
