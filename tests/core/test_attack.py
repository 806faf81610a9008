"""The SmoothAdv attack: projections, the final point's constraints, and a linear oracle.

A linear two-class model ``class 1 iff s(x) = w.x + b > 0`` under Gaussian noise ``theta * z``
has ``P[f(x + delta) = 1] = Phi(s(x) / (theta ||w||_2))``, and its soft smoothed classifier is a
decreasing function of ``s`` too. So the strongest perturbation in a ball lowers ``s`` the most:
``d = -eps w / ||w||_2`` (l2, ``s`` falls by ``eps ||w||_2``), ``-eps sign(w)`` (l-infinity, by
``eps ||w||_1``) and ``-eps sign(w_k) e_k`` at ``k = argmax |w_k|`` (l1, by ``eps ||w||_inf``) --
as long as the point stays in [0, 1], which the inputs below leave room for.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import norm as normal
from torch import nn

from ancer_cli.core.attack import (
    GRID_SNAP,
    AttackConfig,
    AttackResult,
    Ball,
    Threat,
    ball_norms,
    fit_into_ball,
    project,
    project_l1,
    smoothadv_attack,
    uniform_in_ball,
)
from ancer_cli.core.choices import Norm
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.smoothing import ABSTAIN, predict_many
from ancer_cli.core.sound import to_grid
from tests.toys import SteepLinear2, Stripe

SIGMA = 0.25
SHAPE = (1, 4, 4)
THREATS = ["l2", "l1", "linf"]


def generators(count: int, seed: int = 0, first: int = 0) -> list[torch.Generator]:
    return [input_generator(seed, first + i, "cpu", Stream.attack) for i in range(count)]


def attack(
    model, x, labels, thetas, norm, eps, threat, streams, config=AttackConfig(), levels=None
):
    """:func:`smoothadv_attack` with each input's noise law built from its theta (``levels``:
    the pixel grid the attacked points are rounded to)."""
    laws = [NoiseLaw(Norm(norm), theta, levels) for theta in thetas]
    return smoothadv_attack(model, x, labels, laws, Ball(threat, eps), streams, config)


def attack_and_predict(
    model,
    x,
    labels,
    thetas,
    eps,
    threat,
    attack_streams,
    predict_streams,
    num,
    alpha,
    batch_size,
    config,
) -> tuple[AttackResult, list[int]]:
    """The attack, then PREDICT of the attacked points on other streams (l2, float noise)."""
    result = attack(model, x, labels, thetas, "l2", eps, threat, attack_streams, config)
    laws = [NoiseLaw(Norm.l2, theta) for theta in thetas]
    predictions = predict_many(model, result.points, laws, num, alpha, batch_size, predict_streams)
    return result, predictions


def linear_problem(p_clean: float = 0.9):
    """A :class:`SteepLinear2` and a grey input where the smoothed classifier says 1 with
    probability ``p_clean`` at ``SIGMA``."""
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    x = torch.full(SHAPE, 0.5)
    score = float(normal.ppf(p_clean)) * SIGMA * float(w.norm())
    model = SteepLinear2(w, score - float((w * x).sum()))
    return model, w, x


def hard_probability(model: SteepLinear2, w: torch.Tensor, point: torch.Tensor) -> float:
    """``P[f(point + delta) = 1]`` in closed form."""
    score = float((point.double().flatten() * w.double().flatten()).sum()) + model.b
    return float(normal.cdf(score / (SIGMA * float(w.double().norm()))))


# --- projections ----------------------------------------------------------------------------


@pytest.mark.parametrize("threat", THREATS)
def test_projections_land_inside_are_idempotent_and_keep_inside_points(threat):
    rng = torch.Generator().manual_seed(1)
    delta = torch.randn((6, 2, 3, 4), generator=rng, dtype=torch.float64) * 3
    radius = torch.tensor([0.5, 1.0, 2.0, 100.0, 1e-3, 0.0], dtype=torch.float64)
    projected = project(delta, radius, threat)
    assert projected.shape == delta.shape
    assert (ball_norms(projected, threat) <= radius * (1 + 1e-12) + 1e-300).all()
    torch.testing.assert_close(project(projected, radius, threat), projected, rtol=1e-12, atol=0)
    inside = ball_norms(delta, threat) <= radius
    assert inside[3] and not inside[0]
    assert torch.equal(projected[inside], delta[inside])


@pytest.mark.parametrize("threat", ["l2", "linf"])
def test_l2_and_linf_projections_are_their_closed_forms(threat):
    v = torch.tensor([[3.0, -4.0, 0.5]], dtype=torch.float64)
    expected = v * 2 / v.norm() if threat == "l2" else torch.tensor([[2.0, -2.0, 0.5]])
    torch.testing.assert_close(project(v, 2.0, threat), expected.double())


def test_l1_projection_is_the_nearest_point_of_the_ball():
    """Against a QP solved by scipy: ``min ||p - n - v||^2`` with ``p, n >= 0``,
    ``sum(p + n) <= r``."""
    rng = np.random.default_rng(7)
    for dim in (2, 3, 5):
        for _ in range(20):
            v = rng.normal(size=dim) * rng.uniform(0.1, 3)
            r = rng.uniform(0.05, 2.0)
            mine = project_l1(torch.tensor(v)[None], r)[0].numpy()

            def objective(z, v=v, dim=dim):
                return float(np.sum((z[:dim] - z[dim:] - v) ** 2))

            solution = minimize(
                objective,
                np.concatenate([np.maximum(v, 0), np.maximum(-v, 0)]) * 0.5,
                method="SLSQP",
                bounds=[(0, None)] * (2 * dim),
                constraints=[{"type": "ineq", "fun": lambda z, r=r: r - z.sum()}],
                options={"ftol": 1e-14, "maxiter": 500},
            )
            best = solution.x[:dim] - solution.x[dim:]
            assert np.abs(mine).sum() <= r * (1 + 1e-12)
            np.testing.assert_allclose(mine, best, atol=1e-6)
            # no point of the ball is nearer (sampled corners and a grid of points)
            corners = np.array([s * r * np.eye(dim)[i] for i in range(dim) for s in (-1, 1)])
            assert np.linalg.norm(mine - v) <= np.linalg.norm(corners - v, axis=1).min() + 1e-12


@pytest.mark.parametrize("threat", THREATS)
def test_uniform_points_lie_in_the_ball_and_on_its_sphere(threat):
    radius = [0.5, 2.0, 3.0]
    inside = uniform_in_ball((2, 5), radius, threat, generators(3), torch.float64)
    assert inside.shape == (3, 2, 5)
    assert (ball_norms(inside, threat) <= torch.tensor(radius, dtype=torch.float64)).all()
    if threat != "linf":
        sphere = uniform_in_ball((2, 5), radius, threat, generators(3), torch.float64, True)
        torch.testing.assert_close(ball_norms(sphere, threat), torch.tensor(radius).double())


# --- the final point ------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [255, 16])
@pytest.mark.parametrize("threat", THREATS)
@pytest.mark.parametrize("anisotropic", [False, True])
def test_grid_rounding_stays_in_the_ball_on_the_grid_and_toward_x(levels, threat, anisotropic):
    rng = torch.Generator().manual_seed(11)
    batch = 8
    x = torch.randint(0, levels + 1, (batch, *SHAPE), generator=rng) / levels
    scale = (
        0.05 + torch.rand((batch, *SHAPE), generator=rng)
        if anisotropic
        else torch.ones((batch, 1, 1, 1))
    )
    radius = torch.rand(batch, generator=rng, dtype=torch.float64) * 0.6
    wild = x + scale * torch.randn((batch, *SHAPE), generator=rng) * 0.4  # in and out of the ball
    fitted = fit_into_ball(x, wild, scale, radius, threat, levels)
    for b in range(batch):
        to_grid(fitted[b], levels)  # raises off the grid
    steps = (fitted.double() * levels).round() - (x.double() * levels).round()
    u = steps / levels / scale.double()
    assert (ball_norms(u, threat) <= radius).all()
    clipped = wild.double().clamp(0, 1) - x.double()
    moved = fitted.double() - x.double()
    assert ((moved == 0) | (torch.sign(moved) == torch.sign(clipped))).all()
    assert (moved.abs() <= clipped.abs() + GRID_SNAP / levels + 1e-6).all()


def test_linf_ball_of_whole_grid_steps_keeps_its_last_level():
    """``eps = 8/255`` (a float a hair below the rational 8/255) allows 8 levels."""
    x = torch.full((1, *SHAPE), 100 / 255)
    wild = x + torch.tensor([1, -1] * 8, dtype=torch.float32).view(1, *SHAPE) * 8 / 255
    fitted = fit_into_ball(x, wild, torch.ones(1, 1, 1, 1), torch.tensor([8 / 255]), "linf", 255)
    steps = to_grid(fitted[0], 255) - to_grid(x[0], 255)
    assert steps.abs().min() == 8 and steps.abs().max() == 8


@pytest.mark.parametrize("threat", THREATS)
def test_float_points_are_shrunk_into_the_ball_toward_x(threat):
    x = torch.rand((4, *SHAPE), generator=torch.Generator().manual_seed(2))
    radius = torch.tensor([0.1, 0.3, 1e-3, 2.0], dtype=torch.float64)
    far = x + torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(3))
    fitted = fit_into_ball(x, far, torch.ones(4, 1, 1, 1), radius, threat)
    assert fitted.dtype == x.dtype
    assert (ball_norms(fitted.double() - x.double(), threat) <= radius).all()
    assert ((fitted >= 0) & (fitted <= 1)).all()


# --- the attack on the linear oracle --------------------------------------------------------


@pytest.mark.parametrize("threat, eps", [("l2", 0.5), ("linf", 0.1), ("l1", 0.4)])
def test_attack_finds_the_optimal_perturbation_of_a_linear_model(threat, eps):
    model, w, x = linear_problem()
    result = attack(model, x[None], [1], [SIGMA], "l2", eps, threat, generators(1))
    d = (result.points[0] - x).double().flatten()
    wf = w.double().flatten()
    if threat == "l2":
        fall = eps * float(wf.norm())
        assert float(torch.dot(d, -wf) / (d.norm() * wf.norm())) > 0.9999
    elif threat == "linf":
        fall = eps * float(wf.abs().sum())
        torch.testing.assert_close(d, -eps * torch.sign(wf), atol=1e-6, rtol=0)
    else:
        fall = eps * float(wf.abs().max())
        k = int(wf.abs().argmax())
        assert d[k] * -torch.sign(wf[k]) == pytest.approx(eps, rel=1e-5)
        assert float(d.abs().sum()) == pytest.approx(eps, rel=1e-5)
    best = normal.cdf(normal.ppf(0.9) - fall / (SIGMA * float(wf.norm())))
    assert hard_probability(model, w, result.points[0]) == pytest.approx(best, abs=1e-4)
    norms = {"l2": result.norm_l2, "l1": result.norm_l1, "linf": result.norm_linf}
    assert float(norms[threat][0]) <= eps
    assert float(norms[threat][0]) == pytest.approx(eps, rel=1e-5)
    assert float(result.p_true[0]) < float(result.p_true_clean[0])


@pytest.mark.parametrize("threat, eps", [("l2", 0.5), ("linf", 0.1), ("l1", 0.4)])
def test_attack_beats_random_perturbations_of_the_same_norm(threat, eps):
    model, w, x = linear_problem()
    result = attack(model, x[None], [1], [SIGMA], "l2", eps, threat, generators(1))
    attacked = hard_probability(model, w, result.points[0])
    if threat == "linf":  # the corners of the box
        directions = uniform_in_ball(SHAPE, [eps] * 50, threat, generators(50, seed=9))
        directions = eps * torch.sign(directions)
    else:
        directions = uniform_in_ball(
            SHAPE, [eps] * 50, threat, generators(50, seed=9), surface=True
        )
    for direction in directions:
        assert attacked < hard_probability(model, w, (x + direction).clamp(0, 1))


def test_attack_with_uniform_noise_and_anisotropic_theta_on_the_grid():
    model, w, x = linear_problem()
    x = (x * 255).round() / 255
    theta = torch.linspace(0.2, 0.6, 16).view(SHAPE)  # l1: half-widths
    config = AttackConfig(steps=10, samples=16, restarts=2, evaluation_samples=64)
    for threat, eps in [("l2", 0.5), ("linf", 8 / 255), ("l1", 0.4)]:
        result = attack(
            model, x[None], [1], [theta], "l1", eps, threat, generators(1), config, levels=255
        )
        to_grid(result.points[0], 255)
        norms = {"l2": result.norm_l2, "l1": result.norm_l1, "linf": result.norm_linf}
        assert float(norms[threat][0]) <= eps
        assert float(result.p_true[0]) < float(result.p_true_clean[0])
        if threat == "linf":  # every coordinate moves its whole 8 levels
            steps = to_grid(result.points[0], 255) - to_grid(x, 255)
            assert steps.abs().min() == 8


class Bumpy(nn.Module):
    """A small nonlinear three-class model with parameters that require gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.hidden = nn.Linear(16, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(4 * self.hidden(x.flatten(1) - 0.5)))


@pytest.mark.parametrize("levels", [None, 255])
@pytest.mark.parametrize("fresh_noise", [True, False])
def test_results_do_not_depend_on_the_batch(fresh_noise, levels):
    """Each input's randomness is its own; only the last bits of vectorized kernels may depend
    on the batch, so float points agree to rounding and grid points exactly."""
    model = Bumpy()
    x = torch.randint(0, 256, (3, *SHAPE), generator=torch.Generator().manual_seed(4)) / 255
    thetas = [0.3, torch.linspace(0.1, 0.5, 16).view(SHAPE), 0.2]
    labels = [0, 1, 2]
    config = AttackConfig(steps=6, samples=8, restarts=2, eot=2, fresh_noise=fresh_noise)
    together = attack(model, x, labels, thetas, "l2", 0.3, "l2", generators(3), config, levels)
    for i in range(3):
        alone = attack(
            model,
            x[i : i + 1],
            labels[i : i + 1],
            thetas[i : i + 1],
            "l2",
            0.3,
            "l2",
            generators(1, first=i),
            config,
            levels,
        )
        if levels is None:
            torch.testing.assert_close(alone.points[0], together.points[i], rtol=0, atol=1e-6)
        else:
            assert torch.equal(alone.points[0], together.points[i])
        torch.testing.assert_close(alone.p_true[0], together.p_true[i], rtol=1e-5, atol=0)


def test_the_model_is_frozen_during_the_attack_and_restored_after():
    model = Bumpy()
    x = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(4))
    config = AttackConfig(steps=3, samples=4, evaluation_samples=8)
    with torch.inference_mode():  # callers may hold inference mode
        result = attack(model, x, [0, 1], [0.25, 0.25], "l2", 0.2, "linf", generators(2), config)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert (result.norm_linf <= 0.2).all()
    assert result.forward_equivalents.tolist() == [3 * 3 * 4 + 2 * 8] * 2
    assert AttackConfig().forward_equivalents == 3 * 20 * 32 + 2 * 256


def test_attack_and_predict_judges_the_attacked_points_with_predict():
    model, w, x = linear_problem(p_clean=0.99)
    x = x.expand(2, *SHAPE)
    # flip distance: the score reaches 0 after eps ||w|| = Phi^-1(0.99) sigma ||w||, eps = 0.58
    outcomes = []
    for eps in (0.1, 1.2):
        _, predictions = attack_and_predict(
            model,
            x,
            [1, 1],
            [SIGMA, SIGMA],
            eps,
            "l2",
            generators(2),
            generators(2, seed=1),
            num=1000,
            alpha=0.001,
            batch_size=500,
            config=AttackConfig(steps=10, samples=8),
        )
        outcomes.append(predictions)
    assert outcomes[0] == [1, 1]
    assert all(p in (0, ABSTAIN) for p in outcomes[1])


def test_inputs_and_arguments_are_checked():
    model, _, x = linear_problem()
    with pytest.raises(ValueError, match="one label, law and generator"):
        attack(model, x[None], [1, 0], [SIGMA], "l2", 0.1, "l2", generators(1))
    with pytest.raises(ValueError, match="grid"):
        attack(model, x[None] + 1e-3, [1], [SIGMA], "l2", 0.1, "l2", generators(1), levels=255)
    with pytest.raises(ValueError):
        attack(model, x[None], [1], [SIGMA], "l2", 0.1, "l3", generators(1))
    assert {t.value for t in Threat} == {"l2", "l1", "linf"}


@pytest.mark.cuda
@pytest.mark.parametrize("threat, eps", [("l2", 0.5), ("linf", 8 / 255), ("l1", 0.4)])
def test_attack_on_cuda_finds_the_linear_optimum_on_the_grid(threat, eps):
    model, w, x = linear_problem()
    cuda = torch.device("cuda")
    model = SteepLinear2(w.to(cuda), model.b)
    x = ((x * 255).round() / 255).to(cuda)
    streams = [input_generator(0, i, cuda, Stream.attack) for i in range(2)]
    thetas = [SIGMA, torch.full(SHAPE, SIGMA, device=cuda)]
    config = AttackConfig(restarts=2)
    result = attack(
        model, x.expand(2, *SHAPE), [1, 1], thetas, "l2", eps, threat, streams, config, 255
    )
    assert result.points.device.type == "cuda"
    norms = {"l2": result.norm_l2, "l1": result.norm_l1, "linf": result.norm_linf}[threat]
    assert (norms <= eps).all()
    wf = w.double().flatten()
    fall = eps * float({"l2": wf.norm(), "l1": wf.abs().max(), "linf": wf.abs().sum()}[threat])
    best = normal.cdf(normal.ppf(0.9) - fall / (SIGMA * float(wf.norm())))
    for b in range(2):
        to_grid(result.points[b], 255)
        # on the grid, within a level of the optimum per coordinate
        assert hard_probability(model, w, result.points[b].cpu()) < best + 0.02


def test_a_model_without_a_gradient_path_leaves_the_points_where_they_start():
    """A step function (tests/toys.py Stripe: logits of ``|x_0| < 1``) gives autograd nothing
    to differentiate: the attack stays at the input instead of failing."""
    x = torch.full((2, *SHAPE), 0.5)
    config = AttackConfig(steps=3, samples=4, evaluation_samples=8)
    result = attack(Stripe(), x, [1, 1], [SIGMA, SIGMA], "l2", 0.3, "l2", generators(2), config)
    assert torch.equal(result.points, x) and (result.norm_l2 == 0).all()
