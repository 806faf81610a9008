"""``benchmarks/training.py`` must not rot: its quick mode trains each method, certifies at a
fixed sigma and with ANCER thetas, and prints the table; ``--keep`` reuses what it finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.benchmarks.test_bench import import_benchmark


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


@pytest.mark.slow
def test_quick_mode_reports_every_method_and_keep_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    training = import_benchmark("training")
    training.main(["--quick", "--out", str(tmp_path)])
    first = capsys.readouterr()
    rows = table_rows(first.out)
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (method, "0.25", thetas)
        for method in ("noise", "consistency", "macer", "smoothadv")
        for thetas in ("fixed", "ancer")
    ]
    for row in rows:
        accuracies = [float(cell) for cell in row[3:8]]
        assert accuracies == sorted(accuracies, reverse=True)  # certified accuracy falls with r
        acr, proxy, per_epoch = float(row[8]), float(row[9]), float(row[10])
        assert proxy >= acr >= 0  # the proxy radius is at least the radius
        assert per_epoch > 0
        if row[2] == "fixed":
            assert proxy == acr
    record = json.loads((tmp_path / "macer-0.25.pt").with_suffix(".time.json").read_text())
    assert record["epochs"] == 1 and record["seconds"] > 0
    manifest = json.loads((tmp_path / "smoothadv-0.25-thetas" / "manifest.json").read_text())
    assert manifest["arguments"]["model"] == str(tmp_path / "smoothadv-0.25.pt")

    training.main(["--quick", "--out", str(tmp_path), "--keep"])
    second = capsys.readouterr()
    assert "$ ancer" not in second.err  # every model and result was kept
    assert table_rows(second.out) == rows


@pytest.mark.slow
def test_sweep_trains_the_main_weight_at_each_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--sweep consistency=1,3`` trains consistency with lambda 1 and 3 (recorded in each
    checkpoint) and certifies each at fixed sigma, one row per value after the defaults' row."""
    training = import_benchmark("training")
    training.main(["--quick", "--out", str(tmp_path), "--methods", "consistency", "--no-ancer",
                   "--sweep", "consistency=1,3"])  # fmt: skip
    rows = table_rows(capsys.readouterr().out)
    assert [(row[0], row[2]) for row in rows] == [
        ("consistency", "fixed"), ("consistency w=1", "fixed"), ("consistency w=3", "fixed")
    ]  # fmt: skip
    for weight in (1.0, 3.0):
        checkpoint = torch.load(tmp_path / f"consistency-0.25-w{weight:g}.pt", weights_only=True)
        assert checkpoint["optimizer_state"]["config"]["consistency_weight"] == weight
    with pytest.raises(SystemExit):
        training.main(["--quick", "--out", str(tmp_path), "--sweep", "noise=1"])
