"""The sequential-certification benchmark must not rot: its quick size runs here, and what it
reports is consistent with the files it wrote (sample counts are checked, never timings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ancer_cli.results import read_results

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_sequential_benchmark(tmp_path: Path) -> None:
    out, report = tmp_path / "work", tmp_path / "sequential.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sequential.py"), "--quick", "--out", str(out),
         "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| analytic l2 (sigma 0.25) |" in result.stdout
    numbers = json.loads(report.read_text())
    [analytic] = numbers["results"]
    for entry in analytic["radius"]:
        frame = read_results(out / "analytic" / f"radius{entry['R']:g}.csv")
        assert entry["mean_samples"] == frame["samples"].mean()
    assert analytic["adaptive"]["mean_samples"] <= analytic["cap"]
