"""The attack run on toys whose smoothed classifier is known (tests/toys.py): its rows, PREDICT at
eps 0, resuming, and the attack against random perturbations of the same size.

``Linear2(w, b)`` and ``SteepLinear2(w, b)`` say 1 iff ``w.x + b > 0``; under Gaussian noise
``theta z`` their smoothed classifier says 1 with probability ``Phi((w.x + b) / (theta
||w||_2))``, and the most adverse perturbation of l2 norm eps moves ``x`` along ``-w`` (as long
as the point stays in [0, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import norm as normal

from ancer_cli.attack import AttackRow
from ancer_cli.core.attack_settings import AttackConfig, Threat
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.errors import AncerError
from ancer_cli.settings import AttackJob, PredictConfig
from tests.runs import attack_toy, points, predict_toy, toy_inputs
from tests.toys import Linear2, SteepLinear2

THETA = 0.25
QUICK = AttackConfig(steps=10, samples=8, evaluation_samples=16)
JUDGE = PredictConfig(400, 0.01, 1000)


def job(*eps: float, **options) -> AttackJob:
    return AttackJob(eps, attack=QUICK, num=JUDGE.num, alpha=JUDGE.alpha, **options)


def rows(path: Path) -> list[AttackRow]:
    return [AttackRow.parse(line) for line in path.read_text().splitlines(keepends=True)[1:]]


def first_pixel_model(device: str = "cpu") -> SteepLinear2:
    """Class 1 iff ``x_0 > 1/4``: the smoothed classifier says 1 with ``Phi((x_0 - 1/4) /
    theta)``."""
    return SteepLinear2(torch.tensor([1.0, 0.0], device=device), -0.25)


@pytest.mark.parametrize("device_name", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_rows_are_the_known_smoothed_classifier_at_the_most_adverse_point(
    tmp_path: Path, device_name: str
):
    data = points([(0.75, 0.5), (0.9, 0.5)], [1, 1])
    out = tmp_path / "attack.csv"
    device = torch.device(device_name)
    inputs = toy_inputs(first_pixel_model(device_name), data, THETA, device=device)
    summary = attack_toy(inputs, out, job(0.75, 0.25), session=Session(SINGLE, device))
    header = out.read_text().splitlines()[0]
    assert header == "idx\tlabel\teps\tpredict\tcorrect\tnorm_l2\tnorm_l1\tnorm_linf\ttime"
    written = rows(out)
    assert [(row.idx, row.eps) for row in written] == [(0, 0.25), (0, 0.75), (1, 0.25), (1, 0.75)]
    for row in written:
        x0 = (0.75, 0.9)[row.idx]
        moved = max(0.0, x0 - row.eps)  # along -w, every step of the attack
        p_one = normal.cdf((moved - 0.25) / THETA)
        assert p_one > 0.8 or p_one < 0.35  # far from 1/2: PREDICT's answer is its class
        assert row.predict == int(p_one > 0.5) and row.correct == int(p_one > 0.5)
        for norm in (row.norm_l2, row.norm_l1, row.norm_linf):
            assert norm == pytest.approx(row.eps, abs=1e-6) and norm <= row.eps
    assert summary is not None and [s.accuracy for s in summary.per_eps] == [1.0, 0.0]
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["format"] == "ancer-attack/1" and record["complete"] is True
    assert record["arguments"]["threat"] == "l2" and record["arguments"]["eps"] == [0.25, 0.75]
    assert record["arguments"]["perturbation"] == "smoothadv"
    assert record["totals"]["per_eps"][1]["empirical_accuracy"] == 0.0


@pytest.mark.parametrize("per_input", [False, True], ids=["fixed", "per-input thetas"])
def test_eps_zero_is_predict_on_the_same_seed(tmp_path: Path, per_input: bool):
    """At eps 0 the point is the input: the row is the one ``ancer predict`` writes with the same
    seed (inputs near the boundary, where PREDICT abstains on some), each input smoothed with its
    own theta."""
    data = points([(x, 0.5) for x in (0.2, 0.24, 0.26, 0.3, 0.4, 0.1)], [1, 1, 1, 1, 1, 0])
    thetas = (lambda i: (0.05, 0.5)[i % 2]) if per_input else THETA
    inputs = toy_inputs(first_pixel_model(), data, thetas)
    attack_toy(inputs, tmp_path / "attack.csv", job(0.0, 0.1), seed=7)
    predict_toy(inputs, tmp_path / "predict.csv", config=JUDGE, seed=7)
    lines = (tmp_path / "predict.csv").read_text().splitlines()[1:]
    at_zero = [row for row in rows(tmp_path / "attack.csv") if row.eps == 0]
    assert [[str(r.idx), str(r.label), str(r.predict), str(r.correct)] for r in at_zero] == [
        line.split("\t")[:4] for line in lines
    ]
    assert -1 in [row.predict for row in at_zero]  # the comparison covers abstentions
    assert all(row.norm_l2 == row.norm_l1 == row.norm_linf == 0.0 for row in at_zero)


def test_an_interrupted_attack_resumes_to_the_same_rows(tmp_path: Path):
    data = points([(0.3 + 0.1 * i, 0.5) for i in range(4)], [1] * 4)
    inputs = toy_inputs(first_pixel_model(), data, THETA)
    reference = tmp_path / "reference.csv"
    attack_toy(inputs, reference, job(0.1, 0.3))
    out = tmp_path / "attack.csv"

    def crash(row: AttackRow) -> None:
        if (row.idx, row.eps) == (1, 0.1):  # one eps of input 1 written, the other not
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attack_toy(inputs, out, job(0.1, 0.3), on_row=crash)
    assert [(row.idx, row.eps) for row in rows(out)] == [(0, 0.1), (0, 0.3), (1, 0.1)]
    written: list[tuple[int, float]] = []
    started: list[tuple[int, int]] = []
    summary = attack_toy(
        inputs, out, job(0.1, 0.3), resume=True, seed=None,
        on_row=lambda row: written.append(row.key), on_start=lambda *a: started.append(a),
    )  # fmt: skip
    assert summary is not None and summary.resumed == 3 and started == [(3, 5)]
    assert written == [(1, 0.3), (2, 0.1), (2, 0.3), (3, 0.1), (3, 0.3)]

    def without_time(path: Path) -> list[list[str]]:
        return [line.split("\t")[:-1] for line in path.read_text().splitlines()]

    assert without_time(out) == without_time(reference)
    with pytest.raises(AncerError, match="eps"):  # other eps: not the interrupted run's
        attack_toy(inputs, out, job(0.2), resume=True, seed=None)


@pytest.mark.parametrize("threat", ["l2", "linf"])
def test_the_attack_beats_random_perturbations_of_the_same_norm(tmp_path: Path, threat: str):
    """In 64 dimensions the most adverse direction is one of many: at an eps where the attack
    flips every input, random points of the same sphere (or cube corners) flip none."""
    w = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(3))
    norm_w = float(w.norm()) if threat == "l2" else float(w.abs().sum())
    noise = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    x = torch.full((1, 8, 8), 0.5) + 0.02 * noise
    b = 3.0 * THETA * float(w.norm()) - float((x.mean(0) * w).sum())  # pA about Phi(3)
    model = Linear2(w, b)  # logits (0, score): a softmax that never saturates to 1 in float32
    eps = 5.0 * THETA * float(w.norm()) / norm_w  # the attack lowers the score by 5 theta ||w||
    data = points([(0.0, 0.0)] * 6, [1] * 6)
    data.dataset.tensors = (x, torch.ones(6, dtype=torch.long))  # type: ignore[attr-defined]
    inputs = toy_inputs(model, data, THETA)
    settings = {"threat": Threat(threat)}
    attacked = attack_toy(inputs, tmp_path / "attack.csv", job(0.0, eps, **settings))
    randomly = attack_toy(inputs, tmp_path / "random.csv", job(0.0, eps, random=True, **settings))
    assert attacked is not None and randomly is not None
    assert attacked.per_eps[0].accuracy == randomly.per_eps[0].accuracy == 1.0
    assert attacked.per_eps[1].accuracy == 0.0 and randomly.per_eps[1].accuracy == 1.0
    column = {"l2": "norm_l2", "linf": "norm_linf"}[threat]
    for path in (tmp_path / "attack.csv", tmp_path / "random.csv"):
        sizes = [getattr(row, column) for row in rows(path) if row.eps > 0]
        assert all(size <= eps for size in sizes) and min(sizes) > 0.5 * eps  # some clipped
    record = json.loads((tmp_path / "random.csv.json").read_text())["arguments"]
    assert record["perturbation"] == "random" and record["attack"] is None


def test_refusals(tmp_path: Path):
    data = points([(0.75, 0.5)], [-1])
    inputs = toy_inputs(first_pixel_model(), data, THETA)
    with pytest.raises(AncerError, match="--eps"):
        attack_toy(inputs, tmp_path / "none.csv", job())
    with pytest.raises(AncerError, match="no label"):
        attack_toy(inputs, tmp_path / "unlabeled.csv", job(0.1))
