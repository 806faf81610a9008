"""torchrun with two CPU processes (gloo) gives exactly the single-process output, at equal
threads per process (every process here runs one thread: ``tests/conftest.py``; the
single-process runs go through CliRunner in the test process); across thread counts, the same
output within a float tolerance."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from tests.helpers import ok

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ANCER = [sys.executable, "-m", "ancer_cli"]


def _run(command: list[object], threads: int = 1) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(
        list(map(str, command)), capture_output=True, text=True, timeout=600, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _single(*args: object) -> Result:
    """One process: ``ancer ARGS...`` in this one (one thread, as the ranks run), through
    CliRunner; only the torchrun runs need processes of their own."""
    return ok(*args)


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
        "--iso-samples",
        "64",
        "--iterations",
        "10",
        "--samples",
        "16",
        "--guard-samples",
        "64",
        "--device",
        "cpu",
    ]
    _single(*optimize, "--out", tmp_path / "single")
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
    # no --seed: rank 0 draws one from OS entropy and every rank uses it (the single process
    # below reproduces the run from the recorded seed only if they all did)
    ranks = _run([*TORCHRUN, "-m", "ancer_cli", *certify, "--out", tmp_path / "ranks.csv"])
    seed = json.loads((tmp_path / "ranks.csv.json").read_text())["arguments"]["seed"]
    certify += ["--seed", seed]
    single = _single(*certify, "--out", tmp_path / "single.csv")
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
        "--seed",
        "0",
        "--device",
        "cpu",
    ]
    _single(*fixed, "--out", tmp_path / "fixed1.csv")
    _run([*TORCHRUN, "-m", "ancer_cli", *fixed, "--out", tmp_path / "fixed2.csv"])
    assert _without_time(tmp_path / "fixed2.csv") == _without_time(tmp_path / "fixed1.csv")

    # sequential radius mode with the memory pass: the same rows, sample counts included
    sequential = [*certify, "--N", "20000", "--radius", "0.25"]
    _single(*sequential, "--out", tmp_path / "seq1.csv")
    _run([*TORCHRUN, "-m", "ancer_cli", *sequential, "--out", tmp_path / "seq2.csv"])
    rows = _without_time(tmp_path / "seq1.csv")
    assert rows[0][-2:] == ["samples", "stop"] and len(rows) == 11
    assert _without_time(tmp_path / "seq2.csv") == rows


def _torchrun(processes: int) -> list[str]:
    return [*TORCHRUN[:-1], str(processes), "-m", "ancer_cli"]


def _fails(command: list[object]) -> subprocess.CompletedProcess:
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    return result


def _theta_bytes(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("theta_*.pt"))}


@pytest.mark.slow
def test_runs_interrupted_on_4_processes_resume_on_2_or_1(model_path: Path, tmp_path: Path):
    """A 4-process optimize run stopped by one rank's unreadable theta file (the others finish
    their share), and the shards a 4-process certify run leaves when it is killed part-way:
    resumed on one process (optimize) or two (certify) each ends exactly as an uninterrupted
    single-process run."""
    optimize = ["optimize", "--model", model_path, "--max-index", 8, "--batch-size", 2,
                "--objective", "reference", "--iso-iterations", 6, "--iso-samples", 8,
                "--iterations", 6, "--samples", 8,
                "--device", "cpu"]  # fmt: skip
    single = tmp_path / "single"
    _single(*optimize, "--out", single)
    # the ANCER stage from the stored isotropic stage writes the same files (test_optimize.py)
    iso = tmp_path / "iso"
    shutil.copytree(single / "isotropic", iso)
    from_iso = [*optimize, "--isotropic-thetas", iso]
    (iso / "theta_test_3.pt").write_bytes(b"unreadable")  # batch [2, 3]: rank 1 of 4 fails
    ranks = tmp_path / "ranks"
    _fails([*_torchrun(4), *from_iso, "--out", ranks])
    assert sorted(p.name for p in ranks.glob("theta_*.pt")) == [
        f"theta_test_{i}.pt" for i in (0, 1, 4, 5, 6, 7)
    ]
    assert '"world_size": 4' in (ranks / "manifest.json").read_text()
    (iso / "theta_test_3.pt").write_bytes((single / "isotropic" / "theta_test_3.pt").read_bytes())
    resumed = _single(*from_iso, "--out", ranks, "--resume")
    assert "2 inputs optimized, 6 kept" in resumed.stdout
    assert _theta_bytes(ranks) == {
        name: data for name, data in _theta_bytes(single).items() if name.parent == Path(".")
    }
    assert '"complete": true' in (ranks / "manifest.json").read_text()

    certify = ["certify", "--N0", 20, "--N", 500, "--seed", 0, "--device", "cpu"]
    reference = tmp_path / "single.csv"
    _single(*certify, "--thetas", single, "--out", reference)
    # what a 4-process run killed part-way leaves: a shard per rank (rank 2 wrote nothing, rank
    # 1 one row of two, one cut mid-line) and its record, not finished. (A run cannot be made to
    # fail part-way by a broken theta file any more: it hashes every theta before it starts.)
    out = tmp_path / "ranks.csv"
    lines = Path(f"{reference}.pre-memory").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    left = {0: rows[0] + rows[4], 1: rows[1] + rows[5][:5], 2: "", 3: rows[3] + rows[7]}
    for rank, text in left.items():
        Path(f"{out}.pre-memory.rank{rank}-of-4").write_text(header + text)
    record = json.loads(Path(f"{reference}.json").read_text())
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False, "world_size": 4}))
    again = _run([*_torchrun(2), *certify, "--thetas", single, "--out", out, "--resume"])
    assert "5 rows kept" in again.stdout
    assert _without_time(out) == _without_time(reference)
    assert not list(tmp_path.glob("ranks.csv*.rank*"))
    sidecar = Path(str(out) + ".json").read_text()
    assert '"complete": true' in sidecar and '"world_size": 2' in sidecar


@pytest.mark.slow
def test_torchrun_predict_matches_single_process(model_path: Path, tmp_path: Path):
    predict = ["predict", "--model", model_path, "--sigma", 0.25, "--N", 300, "--max-index", 7,
               "--seed", 0, "--device", "cpu"]  # fmt: skip
    _single(*predict, "--out", tmp_path / "single.csv")
    _run([*_torchrun(2), *predict, "--out", tmp_path / "ranks.csv"])
    single = [line.split("\t")[:4] for line in (tmp_path / "single.csv").read_text().splitlines()]
    ranks = [line.split("\t")[:4] for line in (tmp_path / "ranks.csv").read_text().splitlines()]
    assert ranks == single and len(single) == 8
    assert sorted(p.name for p in tmp_path.glob("ranks.csv*")) == ["ranks.csv", "ranks.csv.json"]


@pytest.mark.slow
def test_torchrun_attack_and_audit_match_single_process(model_path: Path, tmp_path: Path):
    """``ancer attack`` shards its (idx, eps) rows and ``ancer audit`` its rows across two
    processes: the files of one process, every column but the time."""
    results = tmp_path / "results.csv"
    _run([*ANCER, "certify", "--model", model_path, "--sigma", 0.25, "--N0", 20, "--N", 500,
          "--seed", 0, "--device", "cpu", "--max", 5, "--out", results])  # fmt: skip
    attack = ["attack", results, "--eps", 0, "--eps", 0.5, "--steps", 3, "--samples", 4,
              "--N", 200, "--seed", 1, "--device", "cpu"]  # fmt: skip
    _run([*ANCER, *attack, "--out", tmp_path / "single.csv"])
    _run([*_torchrun(2), *attack, "--out", tmp_path / "ranks.csv"])
    single = [line.split("\t")[:-1] for line in (tmp_path / "single.csv").read_text().split("\n")]
    ranks = [line.split("\t")[:-1] for line in (tmp_path / "ranks.csv").read_text().split("\n")]
    assert ranks == single and len(single) == 1 + 10 + 1  # header, rows, the final newline
    audit = ["audit", results, "--steps", 3, "--samples", 4, "--boundary-points", 2,
             "--N", 200, "--seed", 1, "--device", "cpu"]  # fmt: skip
    _run([*ANCER, *audit, "--out", tmp_path / "audit1.csv"])
    _run([*_torchrun(2), *audit, "--out", tmp_path / "audit2.csv"])
    assert (tmp_path / "audit2.csv").read_text() == (tmp_path / "audit1.csv").read_text()
    sidecar = json.loads((tmp_path / "audit2.csv.json").read_text())
    assert sidecar["complete"] is True and sidecar["world_size"] == 2


@pytest.mark.slow
def test_torchrun_reuse_matches_single_process_and_resumes(model_path: Path, tmp_path: Path):
    """``certify --reuse`` on two processes: the rows (route and samples included) of one
    process; a run cut short resumes on one process to the same rows."""
    earlier = tmp_path / "earlier.csv"
    _single("certify", "--model", model_path, "--sigma", 0.25, "--N0", 20, "--N", 2000,
            "--batch-size", 200, "--seed", 0, "--device", "cpu", "--max", 7,
            "--out", earlier)  # fmt: skip
    changed = tmp_path / "changed.pt"
    checkpoint = torch.load(model_path, map_location="cpu", weights_only=True)
    for key, value in checkpoint["state_dict"].items():  # a changed model: weights rounded
        if value.is_floating_point():
            checkpoint["state_dict"][key] = value.to(torch.bfloat16).float()
    torch.save(checkpoint, changed)
    reuse = ["certify", "--reuse", earlier, "--model", changed, "--seed", 1, "--device", "cpu",
             "--reuse-tolerance", 0.3]  # fmt: skip
    _single(*reuse, "--out", tmp_path / "single.csv")
    _run([*_torchrun(2), *reuse, "--out", tmp_path / "ranks.csv"])
    single = _without_time(tmp_path / "single.csv")
    assert single[0][-2:] == ["samples", "path"] and len(single) == 8
    assert {row[-1] for row in single[1:]} >= {"reuse"}
    assert _without_time(tmp_path / "ranks.csv") == single
    sidecar = json.loads((tmp_path / "ranks.csv.json").read_text())
    assert sidecar["complete"] is True and sidecar["world_size"] == 2
    # cut to the header and three rows, as a crash before the end would leave it; resume on one
    cut = tmp_path / "cut.csv"
    shutil.copy(tmp_path / "ranks.csv", cut)
    shutil.copy(tmp_path / "ranks.csv.json", f"{cut}.json")
    cut.write_text("".join(cut.read_text().splitlines(keepends=True)[:4]))
    record = json.loads(Path(f"{cut}.json").read_text())
    record["complete"] = False
    record.pop("totals", None)
    Path(f"{cut}.json").write_text(json.dumps(record))
    _single(*reuse, "--out", cut, "--resume")
    assert _without_time(cut) == single
    assert json.loads(Path(f"{cut}.json").read_text())["totals"]["resumed_rows"] == 3


@pytest.mark.slow
def test_thread_count_changes_results_only_within_float_tolerance(model_path: Path, tmp_path: Path):
    """One thread against two in one process: float reductions may differ in their last bits on
    some CPUs (docs/scaling.md), so optimize's thetas agree within a small relative tolerance
    and certify's predictions agree, its radii within a few votes' worth."""
    optimize = ["optimize", "--model", model_path, "--max-index", 4, "--batch-size", 2,
                "--objective", "reference", "--iso-iterations", 6, "--iso-samples", 8,
                "--iterations", 6, "--samples", 8, "--device", "cpu"]  # fmt: skip
    for threads in (1, 2):
        _run([*ANCER, *optimize, "--out", tmp_path / f"thetas{threads}"], threads=threads)
    names = sorted(
        p.relative_to(tmp_path / "thetas1") for p in (tmp_path / "thetas1").rglob("*.pt")
    )
    assert len(names) == 8
    for name in names:
        one = torch.load(tmp_path / "thetas1" / name, weights_only=True)
        two = torch.load(tmp_path / "thetas2" / name, weights_only=True)
        assert torch.allclose(one, two, rtol=1e-4, atol=1e-7), name
    certify = ["certify", "--model", model_path, "--sigma", 0.25, "--N0", 20, "--N", 500,
               "--max-index", 7, "--seed", 0, "--device", "cpu"]  # fmt: skip
    for threads in (1, 2):
        _run([*ANCER, *certify, "--out", tmp_path / f"fixed{threads}.csv"], threads=threads)
    one, two = (_without_time(tmp_path / f"fixed{t}.csv")[1:] for t in (1, 2))
    assert [row[:3] for row in one] == [row[:3] for row in two]
    for a, b in zip(one, two, strict=True):
        assert abs(float(a[3]) - float(b[3])) <= 0.05, (a, b)
