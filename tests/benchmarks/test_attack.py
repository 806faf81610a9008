"""``benchmarks/attack.py`` must not rot: its quick mode on the session's model."""

from pathlib import Path

from tests.benchmarks.test_bench import run_script


def test_quick_mode_prints_certified_against_empirical(model_path: Path, tmp_path: Path):
    result = run_script("attack.py", "--quick", "--model", model_path, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| l2", "| linf"))]
    assert [row.split("|")[2].strip() for row in rows] == [
        "0.25", "0.5", "0.75", "1", "1/16", "1/8",
    ]  # fmt: skip
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        certified, attacked, randomly, gap = map(float, cells[2:6])
        assert 0 <= certified <= 1 and 0 <= attacked <= 1 and 0 <= randomly <= 1
        assert gap == round(attacked - certified, 3) or abs(gap - (attacked - certified)) < 2e-3
        assert int(cells[6].replace(",", "")) > 200 and float(cells[7]) > 0
    assert (tmp_path / "attack-linf-random.csv.json").is_file()
