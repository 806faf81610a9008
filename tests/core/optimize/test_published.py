"""The published isotropic and ANCER optimizers on models with known behaviour."""

import pytest
import torch
from scipy.stats import binom

from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.optimize.config import AncerConfig, IsotropicConfig
from ancer_cli.core.optimize.published import (
    THETA_FLOOR,
    ancer_objective,
    isotropic_objective,
    optimize_ancer,
    optimize_isotropic,
    smoothed_top_two,
)
from ancer_cli.core.smoothing import ABSTAIN, certify
from ancer_cli.thetas import load_theta, save_theta
from tests.core.optimize.problems import SHAPE, gens, linear_problem
from tests.toys import Ball


def test_objectives_match_their_formulas():
    theta = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    p1, p2 = torch.tensor([0.9, 0.6]), torch.tensor([0.05, 0.3])
    from scipy.stats import norm

    expected = [
        0.5 / 2 * (norm.ppf(0.9) - norm.ppf(0.05)),
        2.0 / 2 * (norm.ppf(0.6) - norm.ppf(0.3)),
    ]
    assert isotropic_objective(theta, p1, p2, "l2").tolist() == pytest.approx(expected, rel=1e-5)
    assert isotropic_objective(theta, p1, p2, "l1").tolist() == pytest.approx([0.5 * 0.85, 2 * 0.3])
    # clamping keeps Phi^-1 finite when the vote is unanimous
    assert torch.isfinite(isotropic_objective(theta, torch.ones(2), torch.zeros(2), "l2")).all()
    aniso = torch.tensor([[1.0, 4.0], [2.0, 2.0]])
    got = ancer_objective(aniso, torch.tensor([0.8, 0.8]), torch.tensor([0.2, 0.2]), "l1", kappa=2)
    assert got.tolist() == pytest.approx([0.6 * 2 + 2 * 0.6 * 1, 0.6 * 2 + 2 * 0.6 * 2])


def test_smoothed_top_two_is_differentiable_and_per_input_seeded():
    model, _, xs, _ = linear_problem(3)
    theta = torch.full((3, 1, 1, 1), 0.25, requires_grad=True)
    p1, p2 = smoothed_top_two(model, xs, theta, "l2", 64, gens(range(3), Stream.ancer))
    assert (p1 >= p2).all() and p1.shape == (3,)
    (p1.sum()).backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    # the first input's estimate does not depend on which inputs share its batch
    alone, _ = smoothed_top_two(
        model, xs[:1], theta[:1].detach(), "l2", 64, gens([0], Stream.ancer)
    )
    assert alone[0].item() == pytest.approx(p1[0].item(), abs=1e-6)


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
def test_ancer_objective_increases_and_theta_stays_above_isotropic(norm_name):
    model, _, xs, _ = linear_problem(8)
    theta_iso = torch.full((8,), 0.2)
    trace: list[float] = []
    theta = optimize_ancer(
        model,
        xs,
        theta_iso,
        norm_name,
        AncerConfig(iterations=60, lr=0.04, samples=64),
        gens(range(8), Stream.ancer),
        progress=lambda it, total, value: trace.append(value),
    )
    assert theta.shape == (8, *SHAPE)
    assert (theta >= 0.2).all()
    assert len(trace) == 60
    first, last = sum(trace[:5]) / 5, sum(trace[-5:]) / 5
    assert last > first * 1.2, (first, last)
    # ANCER grows theta where the classifier does not look
    assert theta[:, 0, :4].mean() > theta[:, 0, 4:].mean()


def test_isotropic_optimizer_keeps_theta_positive():
    # at theta = 0.06 the Ball classifier's vote collapses as theta grows, so the gradient is
    # strongly negative; a large step would take theta below zero, the floor keeps it positive
    theta = optimize_isotropic(
        Ball(),
        torch.zeros((1, *SHAPE)),
        torch.tensor([0.06]),
        "l2",
        IsotropicConfig(iterations=1, lr=50.0, samples=256),
        gens([0], Stream.isotropic),
    )
    assert theta.shape == (1,)
    assert float(theta) == pytest.approx(THETA_FLOOR)


def test_isotropic_optimizer_moves_towards_better_theta():
    # the Ball classifier is certain for tiny noise; from a very small start, growing theta
    # grows the objective (theta * Phi^-1(0.999) while the vote stays unanimous)
    trace: list[float] = []
    theta = optimize_isotropic(
        Ball(),
        torch.zeros((1, *SHAPE)),
        torch.tensor([0.01]),
        "l2",
        IsotropicConfig(iterations=50, lr=0.002, samples=64),
        gens([0], Stream.isotropic),
        progress=lambda it, total, value: trace.append(value),
    )
    assert float(theta) > 0.01
    assert trace[-1] > trace[0]


def test_theta_round_trip_is_bit_identical(tmp_path):
    theta = torch.rand(SHAPE) + 0.1
    save_theta(tmp_path / "theta_test_3.pt", theta)
    back = load_theta(tmp_path / "theta_test_3.pt", SHAPE)
    assert back.dtype == torch.float32 and torch.equal(back, theta)
    save_theta(tmp_path / "theta_test_4.pt", torch.tensor(0.3))
    assert load_theta(tmp_path / "theta_test_4.pt", SHAPE).ndim == 0


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
def test_linear_oracle_with_optimized_anisotropic_thetas_is_sound(norm_name):
    count, alpha = 40, 0.01
    model, w, xs, margins = linear_problem(count, seed=5)
    theta_iso = optimize_isotropic(
        model,
        xs,
        torch.full((count,), 0.2),
        norm_name,
        IsotropicConfig(iterations=20, samples=64),
        gens(range(count), Stream.isotropic),
    )
    thetas = optimize_ancer(
        model,
        xs,
        theta_iso,
        norm_name,
        AncerConfig(iterations=30, samples=64),
        gens(range(count), Stream.ancer),
    )
    unsound = certified = 0
    for i in range(count):
        law = Noise(Norm(norm_name)).law(thetas[i], xs[i].shape)
        sampling = Sampling(100, 2000, alpha, 1000)
        cert = certify(model, xs[i], law, sampling, input_generator(0, i, "cpu"))
        if cert.prediction == ABSTAIN:
            continue
        certified += 1
        scaled = thetas[i] * w
        reach = torch.linalg.vector_norm(scaled) if norm_name == "l2" else scaled.abs().max()
        truth = int(margins[i] > 0)
        if cert.prediction != truth or cert.gap * float(reach) > abs(float(margins[i])):
            unsound += 1
    assert certified >= count // 2
    assert unsound <= binom.ppf(1 - 1e-4, certified, alpha)


# ---------------------------------------------------------------------------------------------
# the certified search and the guarded ANCER stage
