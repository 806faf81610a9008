"""The audit run on toys: honest certificates are not flagged, the same file with every radius
tripled is, and a row the memory pass reassigned is audited in the region it was given.

``Linear2`` with ``w = (1, 0)``, ``b = -1/4`` says 1 iff ``x_0 > 1/4``; its smoothed classifier
under ``theta z`` says 1 with probability ``Phi((x_0 - 1/4) / theta)``, so Cohen's radius is at
most the distance ``|x_0 - 1/4|`` to the boundary, and three times it reaches across.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ancer_cli.audit import AuditRow, clopper_pearson
from ancer_cli.core.attack_settings import AttackConfig, AuditConfig
from ancer_cli.core.choices import Sampling
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.settings import AuditJob
from tests.runs import audit_toy, certify_toy, points, toy_inputs
from tests.toys import Linear2, Stripe

THETA = 0.25
JOB = AuditJob(
    search=AuditConfig(AttackConfig(steps=10, samples=8, evaluation_samples=64), boundary_points=4),
    num=2000,
)


def rows(path: Path) -> list[AuditRow]:
    return [AuditRow.parse(line) for line in path.read_text().splitlines(keepends=True)[1:]]


def certify_linear(tmp_path: Path, device: torch.device = torch.device("cpu")):
    xs = [0.6, 0.8, 1.0, 0.1, 0.0, 0.26]
    data = points([(x, 0.5) for x in xs], [int(x > 0.25) for x in xs])
    model = Linear2(torch.tensor([1.0, 0.0], device=device), -0.25)
    inputs = toy_inputs(model, data, THETA, device=device)
    results = tmp_path / "results.csv"
    session = Session(SINGLE, device)
    certify_toy(inputs, results, sampling=Sampling(100, 2000, 0.001, 2000), session=session)
    return inputs, results


@pytest.fixture
def certified(tmp_path: Path):
    return certify_linear(tmp_path)


@pytest.mark.parametrize("device_name", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_honest_certificates_are_not_flagged(tmp_path: Path, device_name: str):
    device = torch.device(device_name)
    inputs, results = certify_linear(tmp_path, device)
    out = tmp_path / "audit.csv"
    summary = audit_toy(inputs, results, out, JOB, session=Session(SINGLE, device))
    assert summary is not None
    assert out.read_text().splitlines()[0] == "idx\tradius\tviolated\tdistance\tvotes"
    written = rows(out)
    stated = [line.split("\t") for line in results.read_text().splitlines()[1:]]
    assert [(r.idx, r.radius) for r in written] == [(int(f[0]), f[3]) for f in stated]
    assert summary.violated == 0 and summary.certified == 5 and summary.abstained == 1
    assert summary.state.value == "verified" and summary.consistent
    for row, fields in zip(written, stated, strict=True):
        if fields[2] == "-1":  # x_0 = 0.26: abstained, no region
            assert math.isnan(row.distance) and row.votes == "-" and row.violated == 0
        else:
            assert 0 <= row.distance <= float(row.radius)
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["format"] == "ancer-audit/1" and record["audited"]["rows"] == "verified"
    assert record["totals"]["alpha_claimed"] == 0.001
    assert record["totals"]["alpha_source"] == "arguments.alpha"


def test_radii_tripled_are_flagged_and_the_file_reported_edited(certified, tmp_path: Path):
    inputs, results = certified
    lines = results.read_text().splitlines(keepends=True)
    edited = [lines[0]]
    for line in lines[1:]:
        fields = line.split("\t")
        fields[3] = repr(3 * float(fields[3]))
        edited.append("\t".join(fields))
    results.write_text("".join(edited))
    out = tmp_path / "audit.csv"
    summary = audit_toy(inputs, results, out, JOB)
    assert summary is not None and summary.state.value == "edited"
    assert summary.violated == 5 and not summary.consistent
    assert summary.interval[0] > 0.001
    for row in rows(out):
        if row.violated:
            assert 0 < row.distance <= float(row.radius)
            winner = int(row.votes.split(",")[0].split(":")[0])  # PREDICT's class at the flip
            assert winner != inputs.data.dataset[row.idx][1]


def test_a_reassigned_row_is_audited_in_the_region_it_was_given(tmp_path: Path):
    """Stripe (class 1 iff |x_0| < 1): A at the origin with a huge theta certifies class 0 on a
    wide region; B, inside it, takes A's class and a sub-region with A's theta. In that region
    the smoothed classifier with A's theta says 0: nothing to flag. With B's own small theta it
    says 1 at B itself -- which is what an audit that cannot find B's region checks."""
    data = points([(0, 0), (0, 0.5)], [1, 1])
    inputs = toy_inputs(Stripe(), data, {0: 10.0, 1: 0.3}.get)
    results = tmp_path / "results.csv"
    certify_toy(inputs, results, sampling=Sampling(100, 5000, 0.001, 5000))
    assert [line.split("\t")[2] for line in results.read_text().splitlines()[1:]] == ["0", "0"]
    summary = audit_toy(inputs, results, tmp_path / "audit.csv", JOB)
    assert summary is not None and summary.violated == 0
    assert summary.reassigned == 1 and summary.own_regions == 0
    Path(f"{results}.pre-memory").unlink()
    summary = audit_toy(inputs, results, tmp_path / "own.csv", JOB)
    assert summary is not None and summary.own_regions == 1 and summary.violated == 1
    assert [row.violated for row in rows(tmp_path / "own.csv")] == [0, 1]


def test_clopper_pearson_interval():
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(0.3084971, rel=1e-6))
    assert clopper_pearson(10, 10) == (pytest.approx(0.6915029, rel=1e-6), 1.0)
    low, high = clopper_pearson(3, 48)
    assert low == pytest.approx(0.01307, abs=1e-4) and high == pytest.approx(0.17196, abs=1e-4)


def test_a_file_without_a_sidecar_is_audited_at_the_default_level(certified, tmp_path: Path):
    inputs, results = certified
    Path(f"{results}.json").unlink()
    summary = audit_toy(inputs, results, tmp_path / "audit.csv", JOB)
    assert summary is not None and summary.state.value == "foreign"
    assert summary.alpha == 0.001 and summary.alpha_source == "assumed (no record)"
    assert summary.violated == 0 and summary.certified == 5
