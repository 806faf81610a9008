"""``benchmarks/commitment.py`` must not rot: its quick mode prints its three tables."""

import pytest

from tests.benchmarks.test_bench import run_script


@pytest.mark.slow
def test_quick_mode_prints_hashing_and_check_costs():
    result = run_script("commitment.py", "--quick")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    folders = [line for line in lines if line.startswith(("| 20 |", "| 2 |"))]
    assert [line.split("|")[2].strip() for line in folders] == ["32x32", "224x224"]
    for line in folders:
        load, decode, commit, hashing = map(float, line.split("|")[3:7])
        assert min(load, decode, commit, hashing) >= 0
    assert any(line.startswith("SHA-256 of a 1 MB file") for line in lines)
    check = [line for line in lines if line.startswith("| cnn |")]
    assert len(check) == 1 and int(check[0].split("|")[3]) > 32
