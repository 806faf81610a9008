"""``ancer verify``: a results file checked against its record and the files it names -- the
rows' digest, the model, the thetas, every input -- and certified again on a fresh seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ancer_cli.distributed import SINGLE, Session
from ancer_cli.results import rows_digest
from ancer_cli.verify import Overrides, verify
from tests.helpers import invoke, ok

CPU = Session(SINGLE, torch.device("cpu"))
RUN = ("--N0", 20, "--N", 1000, "--max", 8, "--device", "cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, model_path: Path, thetas_dir: Path):
    folder = tmp_path_factory.mktemp("verify")
    shutil.copy(model_path, folder / "model.pt")
    ok("certify", "--model", folder / "model.pt", "--sigma", 0.25, "--out", folder / "fixed.csv",
       *RUN)  # fmt: skip
    shutil.copytree(thetas_dir, folder / "thetas")
    ok("certify", "--thetas", folder / "thetas", "--out", folder / "ancer.csv", *RUN[:-4],
       "--max", 6, "--device", "cpu")  # fmt: skip
    return folder


def _copy(runs: Path, name: str, to: Path) -> Path:
    for suffix in ("", ".json", ".pre-memory"):
        if Path(f"{runs / name}{suffix}").exists():
            shutil.copy(f"{runs / name}{suffix}", f"{to / name}{suffix}")
    return to / name


def test_honest_runs_verify_and_recertify_within_their_level(runs: Path) -> None:
    for name in ("fixed.csv", "ancer.csv"):
        report = verify(runs / name, CPU, recertify=8)
        assert report.ok, report.problems
        assert report.recertified is not None and report.recertified.rows > 0
        assert report.recertified.below == 0
        assert any("match their recorded hashes" in line for line in report.passed)
    kinds = next(line for line in verify(runs / "ancer.csv", CPU).passed if "hashes" in line)
    assert "thetas" in kinds and "6 inputs" in kinds


def test_a_changed_model_theta_or_row_is_reported(runs: Path, tmp_path: Path) -> None:
    changed = tmp_path / "model.pt"
    checkpoint = torch.load(runs / "model.pt", weights_only=True)
    bias = "1.classifier.1.bias"
    checkpoint["state_dict"][bias] = checkpoint["state_dict"][bias] + 1e-3
    torch.save(checkpoint, changed)
    report = verify(runs / "fixed.csv", CPU, Overrides(model=changed))
    assert [p for p in report.problems if p.startswith("the model (SHA-256")]
    thetas = tmp_path / "thetas"
    shutil.copytree(runs / "thetas", thetas)
    theta = torch.load(thetas / "theta_test_3.pt", weights_only=True)
    torch.save(theta * 1.01, thetas / "theta_test_3.pt")
    report = verify(runs / "ancer.csv", CPU, Overrides(thetas=thetas))
    assert report.problems == ["theta of input 3 differs from the record"]
    out = _copy(runs, "fixed.csv", tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))  # the last row removed
    report = verify(out, CPU)
    assert report.problems == [f"{out} is not the file its run wrote (edited or replaced)"]


def test_inflated_radii_fall_below_their_record_on_a_fresh_seed(runs: Path, tmp_path: Path):
    """A forger who tripled every radius and recomputed the digest passes the digest check;
    certified again on a seed they could not know, most rows cannot reach their radius."""
    out = _copy(runs, "fixed.csv", tmp_path)
    header, *rows = out.read_text().splitlines(keepends=True)
    forged = []
    for line in rows:
        fields = line.split("\t")
        fields[3] = f"{3 * float(fields[3]):.7f}"
        forged.append("\t".join(fields))
    out.write_text(header + "".join(forged))
    record = json.loads(Path(f"{out}.json").read_text())
    record["rows_sha256"]["results"] = rows_digest(out)
    Path(f"{out}.json").write_text(json.dumps(record))
    report = verify(out, CPU, recertify=8)
    assert report.recertified is not None
    certified = sum(float(line.split("\t")[3]) > 0 for line in rows)
    assert report.recertified.rows == certified and report.recertified.below >= certified // 2
    assert not report.ok and "fall below their recorded radius" in report.problems[-1]


def test_cli_exit_codes(runs: Path, tmp_path: Path) -> None:
    result = ok("verify", runs / "fixed.csv", "--device", "cpu")
    assert "ok: fixed.csv holds the rows its run wrote" in result.stdout
    out = _copy(runs, "fixed.csv", tmp_path)
    out.write_text(out.read_text().replace("\t0.25\t", "\t0.26\t", 1))
    result = invoke("verify", out, "--device", "cpu")
    assert result.exit_code == 1 and "mismatch: " in result.stdout
    bare = tmp_path / "bare.csv"
    shutil.copy(runs / "fixed.csv", bare)
    result = invoke("verify", bare, "--device", "cpu")
    assert result.exit_code == 1 and "has no sidecar" in result.stderr


def test_accuracy_warns_of_an_edited_file_and_refuses_its_bounds(runs: Path, tmp_path: Path):
    """``ancer accuracy`` still reads a hand-edited results file, with a warning; its
    high-probability bounds, which rest on the run's own rows, refuse it in one line."""
    out = _copy(runs, "fixed.csv", tmp_path)
    out.write_text(out.read_text().replace("\t0.25\t", "\t0.26\t", 1))
    result = ok("accuracy", out, "--radius", 0.25)
    assert "warning: fixed.csv is not the file its run wrote" in result.stderr
    result = invoke("accuracy", out, "--radius", 0.25, "--high-probability")
    assert result.exit_code == 1 and "is not the finished file its run wrote" in result.stderr
    clean = ok("accuracy", runs / "fixed.csv", "--radius", 0.25, "--high-probability")
    assert "warning" not in clean.stderr
