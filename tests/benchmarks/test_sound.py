"""``benchmarks/sound.py`` must not rot: its quick time section and its accuracy section on a
tiny model and thetas run here (timings are never checked)."""

from pathlib import Path

import pytest

from tests.benchmarks.test_bench import run_script


@pytest.mark.slow
def test_quick_time_section_prints_both_modes():
    result = run_script("sound.py", "--quick")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| digits cnn"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 4 and all(float(cell) > 0 for cell in cells[1:])


@pytest.mark.slow
def test_accuracy_section_certifies_float_and_sound(
    model_path: Path, thetas_dir: Path, tmp_path: Path
):
    result = run_script(
        "sound.py", "--sections", "accuracy", "--model", model_path, "--thetas", thetas_dir,
        "--inputs", 4, "--N", 200, "--out", tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for method in ("fixed", "isotropic", "ancer"):
        for mode in ("float", "sound"):
            assert (tmp_path / f"{method}-{mode}.csv.json").is_file()
    assert "ancer sound" in result.stdout
