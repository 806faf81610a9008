"""``benchmarks/denoisers.py`` must not rot: its quick mode trains, optimizes and certifies."""

import json
from pathlib import Path

import pytest

from tests.benchmarks.test_bench import import_benchmark, run_script


@pytest.mark.slow
def test_quick_mode_reports_every_base_classifier(tmp_path: Path) -> None:
    result = run_script("denoisers.py", "--quick", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| clean")]
    rows += [line for line in result.stdout.splitlines() if line.startswith("| noise-trained")]
    names = [row.strip("|").split("|")[0].strip() for row in rows]
    assert names == [
        "clean", "clean+mse", "clean+classifier", "clean+classifier, isotropic thetas",
        "clean+classifier, ancer thetas", "noise-trained",
    ]  # fmt: skip
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        accuracies = [float(c) for c in cells[2:6]]
        assert accuracies == sorted(accuracies, reverse=True)  # certified accuracy falls with r
        assert float(cells[7]) >= float(cells[6]) >= 0  # the proxy ACR is at least the ACR
    ancer = json.loads((tmp_path / "thetas-0.25" / "manifest.json").read_text())
    assert ancer["arguments"]["denoiser"] == str(tmp_path / "denoiser-classifier.pt")


@pytest.mark.slow
def test_layout_benchmark_times_both_layouts_on_the_same_certificates(
    tmp_path: Path, model_path: Path
) -> None:
    from tests.models.test_denoisers import save_random_denoiser

    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    result = run_script(
        "denoiser_layout.py", model_path, denoiser, "--inputs", 2, "--N", 300, "--rounds", 1
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("default:") and line.endswith("s/cert") for line in lines)
    assert any(line.strip().startswith("channels-last:") for line in lines)
    assert any(line.startswith("default / channels-last: ") for line in lines)
    assert "same predictions and radii: True" in lines


def test_seconds_per_certificate_are_the_mean_of_the_time_column(tmp_path: Path) -> None:
    """A resumed or torchrun-split run: the sidecar's seconds cover one part; the rows cover all."""
    denoisers = import_benchmark("denoisers")
    path = tmp_path / "r.csv"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
        "0\t1\t1\t0.5\t0.5\t1\t0.25\t2.0\n"
        "1\t2\t-1\t0.0\t0.0\t0\t0.25\t4.0\n"
        "2\t3\t3\t0.3\t0.3\t1\t0.25\t0:00:06\n"
    )
    (tmp_path / "r.csv.json").write_text(json.dumps({"totals": {"seconds_this_run": 1.0}}))
    row = denoisers.measure(path)
    assert row["seconds"] == 4.0
    assert row["abstain"] == 1
    assert (row["0.25"], row["0.5"], row["0.75"]) == (2 / 3, 1 / 3, 0)  # radius >= r counts
