"""The certified search and the guarded ANCER stage on models with known behaviour."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from ancer_cli.core.choices import Norm
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import InputStreams, Stream, input_generator
from ancer_cli.core.optimize.config import (
    AncerConfig,
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
)
from ancer_cli.core.optimize.published import optimize_isotropic
from ancer_cli.core.optimize.search import (
    certified_gap_lower,
    common_noise_seeds,
    common_noise_votes,
    guard_ancer,
    law_gap_lower,
    optimize_ancer_guarded,
    optimize_certified,
    search_isotropic,
)
from ancer_cli.core.smoothing import sample_counts, sample_counts_many
from tests.core.optimize.problems import SHAPE, gens, linear_problem
from tests.toys import CoinFlip, ConstantOnGraph


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


def _conservative_radius(model, x, theta, n=4096, alpha=0.001, seed=99):
    """CERTIFY-style radius of one isotropic theta on fresh votes (not the search's)."""
    law = Noise(Norm.l2).law(theta, x.shape)
    counts = sample_counts(model, x, law, n, 1024, torch.Generator().manual_seed(seed))
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
        gens([0], Stream.isotropic),
    )
    # the soft objective keeps rewarding noise that the votes no longer agree with
    assert float(runaway) > 4 * 0.25
    assert _conservative_radius(model, x[0], float(runaway)) == 0.0
    config = IsotropicSearchConfig()
    found = search_isotropic(model, x, theta0, Noise("l2"), config, gens([0], Stream.isotropic))
    theta = float(found.theta)
    assert 0.25 / config.max_factor - 1e-6 <= theta <= 0.25 * config.max_factor + 1e-6
    assert float(found.score) >= float(found.start_score) > 0
    assert int(found.prediction) == 0
    # the votes for class 0 end near theta = 12.7 * 0.04: the search grows theta up to there
    assert 0.3 < theta < 0.55
    assert _conservative_radius(model, x[0], theta) > _conservative_radius(model, x[0], 0.25)


def test_search_never_scores_below_its_start():
    model, _, xs, _ = linear_problem(6, seed=2)
    found = search_isotropic(
        model,
        xs,
        torch.full((6,), 0.3),
        Noise("l2"),
        IsotropicSearchConfig(samples=256),
        gens(range(6), Stream.isotropic),
    )
    assert (found.score >= found.start_score).all()
    # a result other than the start scored strictly better on the same noise
    moved = found.theta != 0.3
    assert (found.score[moved] > found.start_score[moved]).all()


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
def test_guard_keeps_the_better_theta_on_hard_votes(norm_name):
    model, w, xs, _ = linear_problem(4, seed=1)
    theta_iso = torch.full((4,), 0.2)
    irrelevant = torch.zeros(SHAPE, dtype=torch.bool)
    irrelevant[0, :4] = True  # the pixels the linear classifier barely weighs
    better = torch.where(irrelevant, 3.0, 0.2).expand(4, *SHAPE).clone()
    worse = torch.where(irrelevant, 0.2, 3.0).expand(4, *SHAPE).clone()
    config = GuardedAncerConfig(guard_samples=1024)
    for guard_kappa in (0.0, 2.0):
        config = replace(config, guard_kappa=guard_kappa)
        kept = guard_ancer(
            model, xs, theta_iso, better, Noise(norm_name), config, gens(range(4), Stream.guard)
        )
        assert kept.accepted.all()
        assert torch.equal(kept.theta, better)
        refused = guard_ancer(
            model, xs, theta_iso, worse, Noise(norm_name), config, gens(range(4), Stream.guard)
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
        Noise(norm_name),
        config,
        gens(range(4), Stream.guard),
    )
    assert not tie.accepted.any()


def test_guarded_ancer_grows_unimportant_pixels_and_respects_the_floor():
    model, _, xs, _ = linear_problem(6, seed=4)
    theta_iso = torch.full((6,), 0.2)
    result = optimize_ancer_guarded(
        model,
        xs,
        theta_iso,
        Noise("l2"),
        GuardedAncerConfig(guard_samples=1024),
        InputStreams(0, range(6)),
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
    model, _, xs, _ = linear_problem(2, seed=6)
    config = CertifiedSearchConfig(
        IsotropicSearchConfig(samples=128, samples_per_pass=128),
        GuardedAncerConfig(iterations=3, samples=16, guard_samples=128, guard_samples_per_pass=128),
    )
    recording = Recording(model)
    start, streams = torch.full((2,), 0.25), InputStreams(0, [0, 1])
    result = optimize_certified(recording, xs, start, Noise("l2"), config, streams)
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
    import ancer_cli.core.noise as noise_module

    original = noise_module.input_generator

    def shifted(seed, index, device, stream=Stream.certify):
        assert stream is not Stream.certify, "the optimization asked for the certify stream"
        return original(seed, index, device, stream)

    monkeypatch.setattr(noise_module, "input_generator", shifted)
    again = optimize_certified(model, xs, start, Noise("l2"), config, streams)
    assert torch.equal(again.theta_isotropic, result.theta_isotropic)
    assert torch.equal(again.theta, result.theta)
    assert len({Stream.certify, Stream.isotropic, Stream.ancer, Stream.guard}) == 4


def test_forward_equivalents_are_what_the_config_implies():
    search = IsotropicSearchConfig(samples=64, samples_per_pass=32)
    levels = search.levels
    assert levels == 8 and search.max_candidates == 1 + search.patience + levels
    x = torch.full((1, *SHAPE), 0.5)
    # votes unanimous at every theta: the score grows with theta the whole way up
    start, l2 = torch.tensor([0.25]), Noise("l2")
    up = search_isotropic(ConstantOnGraph(), x, start, l2, search, gens([0], 1))
    assert int(up.forward_equivalents) == (1 + levels) * 64
    assert float(up.theta) == pytest.approx(0.25 * 4)
    # votes split at every theta: score 0 everywhere, patience up, patience down, start kept
    split = search_isotropic(CoinFlip(), x, start, l2, search, gens([0], 1))
    assert int(split.forward_equivalents) == (1 + 2 * search.patience) * 64
    assert float(split.theta) == pytest.approx(0.25) and float(split.score) == 0.0
    ancer = GuardedAncerConfig(
        iterations=7, samples=8, guard_samples=100, guard_samples_per_pass=64
    )
    # a constant classifier: the objective grows with geomean(theta) at every step
    guarded = optimize_ancer_guarded(ConstantOnGraph(), x, start, l2, ancer, InputStreams(0, [0]))
    assert int(guarded.steps) == 7
    assert int(guarded.forward_equivalents) == 3 * 7 * 8 + 2 * 100
    both = optimize_certified(
        ConstantOnGraph(), x, start, l2, CertifiedSearchConfig(search, ancer), InputStreams(0, [0])
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
    model, _, xs, _ = linear_problem(3, seed=8)
    config = CertifiedSearchConfig(
        IsotropicSearchConfig(samples=256), GuardedAncerConfig(iterations=8, guard_samples=512)
    )
    start = torch.tensor([0.25, 0.1, 0.4])
    together = optimize_certified(model, xs, start, Noise("l2"), config, InputStreams(0, [5, 6, 7]))
    alone = optimize_certified(
        model, xs[1:2], start[1:2], Noise("l2"), config, InputStreams(0, [6])
    )
    assert torch.equal(together.theta_isotropic[1:2], alone.theta_isotropic)
    assert torch.allclose(together.theta[1:2], alone.theta, rtol=1e-5)
    assert torch.equal(together.ancer.guard.accepted[1:2], alone.ancer.guard.accepted)
    assert torch.equal(together.forward_equivalents[1:2], alone.forward_equivalents)


# ---------------------------------------------------------------------------------------------
# every decision under the law certification draws


class RowLinear(nn.Module):
    """Logits ``(0, 10 (w.x + b))``, each row's score summed on its own (the same value whatever
    else shares the batch), so that two samplers of the same copies count the same votes."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = w.flatten()
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = ((x.flatten(1) * self.w).sum(dim=1) + self.b) * 10
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _grid_problem(count: int, seed: int = 0):
    """A :class:`RowLinear` and ``count`` inputs on the 1/16 grid."""
    _, w, _, _ = linear_problem(1, seed)
    g = torch.Generator().manual_seed(seed + 100)
    xs = torch.randint(0, 17, (count, *SHAPE), generator=g).float() / 16
    return RowLinear(w, -float((w * 0.5).sum())), xs


LAWS = [Noise(Norm.l2), Noise(Norm.l2, 16), Noise(Norm.l1), Noise(Norm.l1, 16)]


def _votes(model, x, law, samples, per_pass, seed):
    """What CERTIFY's sampler counts for ``law`` from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return sample_counts_many(model, x[None], [law], (samples,), per_pass, [generator])[0, 0]


@pytest.mark.parametrize("noise", LAWS, ids=str)
def test_votes_are_those_certify_counts_for_the_same_law_and_generator(noise):
    model, xs = _grid_problem(3)
    thetas = [0.3, 0.05 + torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)), 1.5]
    laws = [noise.law(theta, SHAPE) for theta in thetas]
    seeds = [11, 12, 13]
    votes = common_noise_votes(model, xs, laws, 300, 128, seeds)  # chunks 128, 128, 44
    for i, law in enumerate(laws):
        assert torch.equal(votes[i], _votes(model, xs[i], law, 300, 128, seeds[i]))
    assert votes.sum() == 900


@pytest.mark.parametrize("noise", LAWS, ids=str)
def test_the_search_scores_each_theta_on_certifys_law(noise):
    model, xs = _grid_problem(4, seed=3)
    config = IsotropicSearchConfig(samples=256, samples_per_pass=100)
    start = torch.full((4,), 0.25)
    found = search_isotropic(model, xs, start, noise, config, gens(range(4), Stream.isotropic))
    seeds = common_noise_seeds(gens(range(4), Stream.isotropic))  # the seeds it drew
    ratio = config.ratio
    for i in range(4):
        # the candidates are 0.25 ratio^k in float64 (the result is stored in float32)
        k = round(math.log(float(found.theta[i]) / 0.25) / math.log(ratio))
        for theta, score in ((0.25, found.start_score[i]), (0.25 * ratio**k, found.score[i])):
            law = noise.law(theta, SHAPE)
            votes = _votes(model, xs[i], law, 256, 100, seeds[i])
            n_a = int(votes[int(found.prediction[i])])
            expected = law.min_theta * law_gap_lower(law, n_a, 256, config.alpha)
            assert float(score) == expected
    assert (found.score > 0).any()


@pytest.mark.parametrize("noise", LAWS, ids=str)
def test_the_guard_scores_both_thetas_on_certifys_law(noise):
    model, xs = _grid_problem(3, seed=5)
    theta_iso = torch.full((3,), 0.2)
    theta_ancer = 0.2 + torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(2))
    config = GuardedAncerConfig(guard_samples=500, guard_samples_per_pass=128, guard_kappa=1.5)
    decision = guard_ancer(
        model, xs, theta_iso, theta_ancer, noise, config, gens(range(3), Stream.guard)
    )
    seeds = common_noise_seeds(gens(range(3), Stream.guard))
    for i in range(3):
        iso_law = noise.law(torch.full((1, 1, 1), 0.2), SHAPE)
        iso_votes = _votes(model, xs[i], iso_law, 500, 128, seeds[i])
        chosen = int(iso_votes.argmax())
        for law, score in (
            (iso_law, decision.isotropic_score[i]),
            (noise.law(theta_ancer[i], SHAPE), decision.ancer_score[i]),
        ):
            votes = _votes(model, xs[i], law, 500, 128, seeds[i])
            gap = law_gap_lower(law, int(votes[chosen]), 500, config.alpha)
            assert float(score) == gap * (law.geomean_theta + 1.5 * law.min_theta)
    assert (decision.isotropic_score > 0).any()


class FarOrNear(nn.Module):
    """Class 1 iff the first pixel is near its clean value 1/2 (``|x_0 - 1/2| < near``) or
    beyond 70 data units (only unclipped float noise gets there: the sound sampler clips to
    ``[-64, 65]``), else class 0. A huge theta on that pixel wins votes under float noise that
    the law certification draws never gives."""

    def __init__(self, near: float) -> None:
        super().__init__()
        self.near = near

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        first = z.flatten(1)[:, 0]
        hit = ((first - 0.5).abs() < self.near) | (first.abs() > 70)
        return torch.stack([torch.zeros_like(first), 10 * hit.float()], dim=1)


@pytest.mark.parametrize(("norm", "near"), [(Norm.l2, 0.3), (Norm.l1, 0.15)])
def test_the_guard_sees_the_clip_certification_applies(norm, near):
    model = FarOrNear(near)
    x = torch.zeros((1, *SHAPE))
    x[0, 0, 0, 0] = 0.5
    theta_iso = torch.tensor([0.2])
    theta_ancer = torch.full((1, *SHAPE), 0.2)
    theta_ancer[0, 0, 0, 0] = 1000.0
    config = GuardedAncerConfig(guard_samples=2048)
    # scored on float noise, the far pixel's votes make the huge theta look better ...
    floating = guard_ancer(model, x, theta_iso, theta_ancer, Noise(norm), config, gens([0], 6))
    assert bool(floating.accepted[0])
    # ... but certify clips that pixel to [-64, 65]: under its law the theta certifies nothing
    sound = Noise(norm, 16)
    assert sound.clip == (-64.0, 65.0)
    decided = guard_ancer(model, x, theta_iso, theta_ancer, sound, config, gens([0], 6))
    assert not bool(decided.accepted[0])
    assert float(decided.ancer_score[0]) == 0.0 < float(decided.isotropic_score[0])
    assert torch.equal(decided.theta, torch.full((1, *SHAPE), 0.2))


@pytest.mark.parametrize("norm", [Norm.l2, Norm.l1])
def test_ancer_steps_clip_their_float_noise_as_certify_clips(norm):
    x = torch.full((2, *SHAPE), 0.5)
    config = GuardedAncerConfig(iterations=2, samples=16, guard_samples=32)
    for noise, inside in ((Noise(norm, 16), True), (Noise(norm), False)):
        recording = Recording(ConstantOnGraph())
        optimize_ancer_guarded(recording, x, torch.full((2,), 200.0), noise, config,
                               InputStreams(0, [0, 1]))  # fmt: skip
        seen = torch.cat(recording.seen)
        assert bool(((seen >= -64) & (seen <= 65)).all()) == inside
