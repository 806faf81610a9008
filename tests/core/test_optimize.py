"""Isotropic and ANCER optimization on models with known behaviour."""

import math
from dataclasses import replace

import pytest
import torch
from scipy.stats import binom
from torch import nn

from ancer_cli.artifacts import load_theta, save_theta
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.optimize import (
    THETA_FLOOR,
    AncerConfig,
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
    ancer_objective,
    certified_gap_lower,
    guard_ancer,
    isotropic_objective,
    optimize_ancer,
    optimize_ancer_guarded,
    optimize_certified,
    optimize_isotropic,
    search_isotropic,
    smoothed_top_two,
)
from ancer_cli.core.smoothing import ABSTAIN, certify, sample_counts

SHAPE = (1, 8, 8)


class Linear2(nn.Module):
    """Class 1 iff w.x + b > 0: its smoothed classifier has the same half-space for any theta."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = w.flatten()
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1) @ self.w + self.b) * 10
        return torch.stack([torch.zeros_like(score), score], dim=1)


class Ball(nn.Module):
    """Class 0 inside a small ball around 0, class 1 outside: more noise means less class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = x.flatten(1).norm(dim=1)
        return torch.stack([50 * (0.5 - distance), torch.zeros_like(distance)], dim=1)


def _linear_problem(count: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPE, generator=g) / 8
    w[0, :4] *= 0.05  # half the pixels barely matter: ANCER should grow their theta
    xs = torch.rand((count, *SHAPE), generator=g)
    b = -float((w * 0.5).sum())
    return Linear2(w, b), w, xs, xs.flatten(1) @ w.flatten() + b


def _gens(indices, stream):
    return [input_generator(0, i, "cpu", stream) for i in indices]


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
    model, _, xs, _ = _linear_problem(3)
    theta = torch.full((3, 1, 1, 1), 0.25, requires_grad=True)
    p1, p2 = smoothed_top_two(model, xs, theta, "l2", 64, _gens(range(3), Stream.ancer))
    assert (p1 >= p2).all() and p1.shape == (3,)
    (p1.sum()).backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    # the first input's estimate does not depend on which inputs share its batch
    alone, _ = smoothed_top_two(
        model, xs[:1], theta[:1].detach(), "l2", 64, _gens([0], Stream.ancer)
    )
    assert alone[0].item() == pytest.approx(p1[0].item(), abs=1e-6)


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
def test_ancer_objective_increases_and_theta_stays_above_isotropic(norm_name):
    model, _, xs, _ = _linear_problem(8)
    theta_iso = torch.full((8,), 0.2)
    trace: list[float] = []
    theta = optimize_ancer(
        model,
        xs,
        theta_iso,
        norm_name,
        AncerConfig(iterations=60, lr=0.04, samples=64),
        _gens(range(8), Stream.ancer),
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
        _gens([0], Stream.isotropic),
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
        _gens([0], Stream.isotropic),
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
    model, w, xs, margins = _linear_problem(count, seed=5)
    theta_iso = optimize_isotropic(
        model,
        xs,
        torch.full((count,), 0.2),
        norm_name,
        IsotropicConfig(iterations=20, samples=64),
        _gens(range(count), Stream.isotropic),
    )
    thetas = optimize_ancer(
        model,
        xs,
        theta_iso,
        norm_name,
        AncerConfig(iterations=30, samples=64),
        _gens(range(count), Stream.ancer),
    )
    unsound = certified = 0
    for i in range(count):
        cert = certify(
            model, xs[i], thetas[i], norm_name, 100, 2000, alpha, 1000, input_generator(0, i, "cpu")
        )
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


class NoisePrior(nn.Module):
    """Confident class 0 near ``centre``; far from it (the noise scale ``s = mean((z - c)^2)``
    large) the soft output still prefers class 0 (0.45 on every copy) while the hard vote goes to
    one of classes 1..9 (0.47), chosen by the noise's direction: the soft objective keeps
    growing with theta while the votes for class 0 vanish beyond ``theta ~ 12.7 * scale``."""

    def __init__(self, scale: float = 0.04) -> None:
        super().__init__()
        self.centre = 0.5
        self.scale = scale
        self.directions = torch.randn(9, 64, generator=torch.Generator().manual_seed(3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = z.flatten(1) - self.centre
        s = u.square().mean(dim=1, keepdim=True)
        far_weight = s / (s + self.scale**2)
        near = torch.zeros(z.shape[0], 10)
        near[:, 0] = 7.0
        far = torch.full((z.shape[0], 10), math.log(0.01))
        far[:, 0] = math.log(0.45)
        winner = 1 + (u @ self.directions.T).argmax(dim=1)
        far[torch.arange(z.shape[0]), winner] = math.log(0.47)
        return (1 - far_weight) * near + far_weight * far


class Constant(nn.Module):
    """The same logits (class 0 first) for every input."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tensor([2.0, 1.0, 0.0]).expand(z.shape[0], 3) + 0 * z.flatten(1)[:, :1]


class CoinFlip(nn.Module):
    """Class 0 or 1 by the sign of the first pixel's offset from 1/2: the votes always split."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        sign = (z.flatten(1)[:, :1] > 0.5).float()
        return torch.cat([sign, 1 - sign], dim=1) * 5


def _conservative_radius(model, x, theta, n=4096, alpha=0.001, seed=99):
    """CERTIFY-style radius of one isotropic theta on fresh votes (not the search's)."""
    counts = sample_counts(model, x, theta, "l2", n, 1024, torch.Generator().manual_seed(seed))
    return theta * certified_gap_lower(int(counts[0]), n, alpha, "l2")


def test_reference_objective_runs_away_where_the_certified_search_stays_bounded():
    model, x = NoisePrior(), torch.full((1, *SHAPE), 0.5)
    theta0 = torch.tensor([0.25])
    runaway = optimize_isotropic(
        model,
        x,
        theta0,
        "l2",
        IsotropicConfig(iterations=100, samples=32),
        _gens([0], Stream.isotropic),
    )
    # the soft objective keeps rewarding noise that the votes no longer agree with
    assert float(runaway) > 4 * 0.25
    assert _conservative_radius(model, x[0], float(runaway)) == 0.0
    config = IsotropicSearchConfig()
    found = search_isotropic(model, x, theta0, "l2", config, _gens([0], Stream.isotropic))
    theta = float(found.theta)
    assert 0.25 / config.max_factor - 1e-6 <= theta <= 0.25 * config.max_factor + 1e-6
    assert float(found.score) >= float(found.start_score) > 0
    assert int(found.prediction) == 0
    # the votes for class 0 end near theta = 12.7 * 0.04: the search grows theta up to there
    assert 0.3 < theta < 0.55
    assert _conservative_radius(model, x[0], theta) > _conservative_radius(model, x[0], 0.25)


def test_search_never_scores_below_its_start():
    model, _, xs, _ = _linear_problem(6, seed=2)
    found = search_isotropic(
        model,
        xs,
        torch.full((6,), 0.3),
        "l2",
        IsotropicSearchConfig(samples=256),
        _gens(range(6), Stream.isotropic),
    )
    assert (found.score >= found.start_score).all()
    # a result other than the start scored strictly better on the same noise
    moved = found.theta != 0.3
    assert (found.score[moved] > found.start_score[moved]).all()


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
def test_guard_keeps_the_better_theta_on_hard_votes(norm_name):
    model, w, xs, _ = _linear_problem(4, seed=1)
    theta_iso = torch.full((4,), 0.2)
    irrelevant = torch.zeros(SHAPE, dtype=torch.bool)
    irrelevant[0, :4] = True  # the pixels the linear classifier barely weighs
    better = torch.where(irrelevant, 3.0, 0.2).expand(4, *SHAPE).clone()
    worse = torch.where(irrelevant, 0.2, 3.0).expand(4, *SHAPE).clone()
    config = GuardedAncerConfig(guard_samples=1024)
    for guard_kappa in (0.0, 2.0):
        config = replace(config, guard_kappa=guard_kappa)
        kept = guard_ancer(
            model, xs, theta_iso, better, norm_name, config, _gens(range(4), Stream.guard)
        )
        assert kept.accepted.all()
        assert torch.equal(kept.theta, better)
        refused = guard_ancer(
            model, xs, theta_iso, worse, norm_name, config, _gens(range(4), Stream.guard)
        )
        assert not refused.accepted.any()
        assert (refused.ancer_score < refused.isotropic_score).all()
        assert torch.equal(refused.theta, torch.full((4, *SHAPE), 0.2))
    # a tie (ANCER's theta equal to the isotropic one) keeps the isotropic theta
    tie = guard_ancer(
        model,
        xs,
        theta_iso,
        torch.full((4, *SHAPE), 0.2),
        norm_name,
        config,
        _gens(range(4), Stream.guard),
    )
    assert not tie.accepted.any()


def test_guarded_ancer_grows_unimportant_pixels_and_respects_the_floor():
    model, _, xs, _ = _linear_problem(6, seed=4)
    theta_iso = torch.full((6,), 0.2)
    result = optimize_ancer_guarded(
        model,
        xs,
        theta_iso,
        "l2",
        GuardedAncerConfig(guard_samples=1024),
        _gens(range(6), Stream.ancer),
        _gens(range(6), Stream.guard),
    )
    assert (result.theta_ancer >= 0.2).all()
    assert result.theta_ancer[:, 0, :4].mean() > 2 * result.theta_ancer[:, 0, 4:].mean()
    # where the isotropic theta certifies, the larger region certifies with a larger proxy
    certifies = result.guard.isotropic_score > 0
    assert certifies.sum() >= 4
    assert torch.equal(result.guard.accepted, certifies)
    assert torch.equal(result.theta[certifies], result.theta_ancer[certifies])


class Recording(nn.Module):
    """Wraps a model and keeps every batch it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.append(z.detach().clone())
        return self.inner(z)


def test_optimization_noise_never_comes_from_the_certify_stream(monkeypatch):
    model, _, xs, _ = _linear_problem(2, seed=6)
    config = CertifiedSearchConfig(
        IsotropicSearchConfig(samples=128, samples_per_pass=128),
        GuardedAncerConfig(iterations=3, samples=16, guard_samples=128, guard_samples_per_pass=128),
    )
    recording = Recording(model)
    result = optimize_certified(recording, xs, [0, 1], torch.full((2,), 0.25), "l2", config, 0)
    # what CERTIFY would draw first for input 0 at theta = 0.25, and the copies the
    # optimization showed the model for input 0 (its first chunk of every pass)
    certify_noise = torch.empty((128, *SHAPE)).normal_(generator=input_generator(0, 0, "cpu"))
    seen = torch.cat(recording.seen)
    offsets = (seen - xs[0]).flatten(1)
    for scale in {0.25, *[float(t) for t in result.theta_isotropic]}:
        assert (
            not torch.isclose(
                (certify_noise * scale).flatten(1)[:, None, :], offsets[None], atol=1e-6
            )
            .all(dim=2)
            .any()
        )
    # consuming or re-seeding the certify stream leaves the thetas bit-identical
    import ancer_cli.core.optimize as optimize_module

    original = optimize_module.input_generator

    def shifted(seed, index, device, stream=Stream.certify):
        assert stream is not Stream.certify, "the optimization asked for the certify stream"
        return original(seed, index, device, stream)

    monkeypatch.setattr(optimize_module, "input_generator", shifted)
    again = optimize_certified(model, xs, [0, 1], torch.full((2,), 0.25), "l2", config, 0)
    assert torch.equal(again.theta_isotropic, result.theta_isotropic)
    assert torch.equal(again.theta, result.theta)
    assert len({Stream.certify, Stream.isotropic, Stream.ancer, Stream.guard}) == 4


def test_forward_equivalents_are_what_the_config_implies():
    search = IsotropicSearchConfig(samples=64, samples_per_pass=32)
    levels = search.levels
    assert levels == 8 and search.max_candidates == 1 + search.patience + levels
    x = torch.full((1, *SHAPE), 0.5)
    # votes unanimous at every theta: the score grows with theta the whole way up
    up = search_isotropic(Constant(), x, torch.tensor([0.25]), "l2", search, _gens([0], 1))
    assert int(up.forward_equivalents) == (1 + levels) * 64
    assert float(up.theta) == pytest.approx(0.25 * 4)
    # votes split at every theta: score 0 everywhere, patience up, patience down, start kept
    split = search_isotropic(CoinFlip(), x, torch.tensor([0.25]), "l2", search, _gens([0], 1))
    assert int(split.forward_equivalents) == (1 + 2 * search.patience) * 64
    assert float(split.theta) == pytest.approx(0.25) and float(split.score) == 0.0
    ancer = GuardedAncerConfig(
        iterations=7, samples=8, guard_samples=100, guard_samples_per_pass=64
    )
    # a constant classifier: the objective grows with geomean(theta) at every step
    guarded = optimize_ancer_guarded(
        Constant(), x, torch.tensor([0.25]), "l2", ancer, _gens([0], 2), _gens([0], 5)
    )
    assert int(guarded.steps) == 7
    assert int(guarded.forward_equivalents) == 3 * 7 * 8 + 2 * 100
    both = optimize_certified(
        Constant(), x, [0], torch.tensor([0.25]), "l2", CertifiedSearchConfig(search, ancer), 0
    )
    assert int(both.forward_equivalents) == (1 + levels) * 64 + 3 * 7 * 8 + 2 * 100
    # the defaults stay within a tenth of the reference schedule (300,000 per input)
    defaults = CertifiedSearchConfig()
    reference = 3 * (
        IsotropicConfig().iterations * IsotropicConfig().samples
        + AncerConfig().iterations * AncerConfig().samples
    )
    assert defaults.max_forward_equivalents <= 30_000 <= reference / 10


def test_an_inputs_thetas_do_not_depend_on_its_batch():
    model, _, xs, _ = _linear_problem(3, seed=8)
    config = CertifiedSearchConfig(
        IsotropicSearchConfig(samples=256), GuardedAncerConfig(iterations=8, guard_samples=512)
    )
    start = torch.tensor([0.25, 0.1, 0.4])
    together = optimize_certified(model, xs, [5, 6, 7], start, "l2", config, 0)
    alone = optimize_certified(model, xs[1:2], [6], start[1:2], "l2", config, 0)
    assert torch.equal(together.theta_isotropic[1:2], alone.theta_isotropic)
    assert torch.allclose(together.theta[1:2], alone.theta, rtol=1e-5)
    assert torch.equal(together.ancer.guard.accepted[1:2], alone.ancer.guard.accepted)
    assert torch.equal(together.forward_equivalents[1:2], alone.forward_equivalents)
