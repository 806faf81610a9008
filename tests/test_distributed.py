"""torchrun with two CPU processes (gloo) gives exactly the single-process output."""

import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ANCER = [sys.executable, "-m", "ancer_cli"]


def _run(command: list[object]) -> subprocess.CompletedProcess:
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _without_time(path: Path) -> list[list[str]]:
    """Every field but ``time`` (the 8th), including the sequential columns after it."""
    return [
        [f for i, f in enumerate(line.split("\t")) if i != 7]
        for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_torchrun_optimize_and_certify_match_single_process(model_path: Path, tmp_path: Path):
    optimize = [
        "optimize",
        "--model",
        model_path,
        "--max-index",
        "10",
        "--batch-size",
        "3",
        "--iso-iterations",
        "10",
        "--iterations",
        "10",
        "--iso-samples",
        "16",
        "--samples",
        "16",
        "--device",
        "cpu",
    ]
    _run([*ANCER, *optimize, "--out", tmp_path / "single"])
    _run([*TORCHRUN, "-m", "ancer_cli", *optimize, "--out", tmp_path / "ranks"])
    names = sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*.pt"))
    assert len(names) == 20
    for name in names:
        assert (tmp_path / "ranks" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()

    certify = [
        "certify",
        "--thetas",
        tmp_path / "single",
        "--N0",
        "20",
        "--N",
        "1000",
        "--device",
        "cpu",
    ]
    single = _run([*ANCER, *certify, "--out", tmp_path / "single.csv"])
    ranks = _run([*TORCHRUN, "-m", "ancer_cli", *certify, "--out", tmp_path / "ranks.csv"])
    assert _without_time(tmp_path / "ranks.csv") == _without_time(tmp_path / "single.csv")
    assert "memory pass" in single.stdout and "memory pass" in ranks.stdout
    # rank 0 merged: no shard files are left, one sidecar says complete
    assert sorted(p.name for p in tmp_path.glob("ranks.csv*")) == [
        "ranks.csv",
        "ranks.csv.json",
        "ranks.csv.pre-memory",
    ]
    assert '"world_size": 2' in (tmp_path / "ranks.csv.json").read_text()
    assert '"complete": true' in (tmp_path / "ranks.csv.json").read_text()

    fixed = [
        "certify",
        "--model",
        model_path,
        "--sigma",
        "0.25",
        "--N0",
        "20",
        "--N",
        "500",
        "--max-index",
        "7",
        "--device",
        "cpu",
    ]
    _run([*ANCER, *fixed, "--out", tmp_path / "fixed1.csv"])
    _run([*TORCHRUN, "-m", "ancer_cli", *fixed, "--out", tmp_path / "fixed2.csv"])
    assert _without_time(tmp_path / "fixed2.csv") == _without_time(tmp_path / "fixed1.csv")

    # sequential radius mode with the memory pass: the same rows, sample counts included
    sequential = [*certify, "--N", "20000", "--radius", "0.25"]
    _run([*ANCER, *sequential, "--out", tmp_path / "seq1.csv"])
    _run([*TORCHRUN, "-m", "ancer_cli", *sequential, "--out", tmp_path / "seq2.csv"])
    rows = _without_time(tmp_path / "seq1.csv")
    assert rows[0][-2:] == ["samples", "stop"] and len(rows) == 11
    assert _without_time(tmp_path / "seq2.csv") == rows
