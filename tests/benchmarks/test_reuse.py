"""``benchmarks/reuse.py`` must not rot: its quick mode on the session's model and thetas."""

from pathlib import Path

import pytest

from tests.benchmarks.test_bench import run_script


@pytest.mark.slow
def test_quick_mode_compares_reuse_with_scratch(model_path: Path, thetas_dir: Path, tmp_path: Path):
    result = run_script(
        "reuse.py", "--quick", "--model", model_path, "--thetas", thetas_dir, "--out", tmp_path,
        "--radii-rule",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| fixed", "| ancer"))]
    assert len(rows) == 16
    for i, row in enumerate(rows):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == ("0.05", "radii")[i % 2]  # the default --reuse-tolerance, then radii
        assert sum(int(k) for k in cells[3].split("/")) == 4  # every input took one route
        assert float(cells[4]) > 0 and float(cells[5]) == 5100
