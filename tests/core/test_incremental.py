"""Incremental smoothing: the pair classifier sees CERTIFY's draws, an unchanged model costs
exactly the bound for zero disagreements, a known disagreement rate is covered, no input costs
more than certifying afresh, a changed model fitted to the earlier run's published draws forges a
certificate on those draws but not on fresh ones, and the false-certificate rate of reuse stays
within ``alpha + alpha_zeta`` (as statistics)."""

import hashlib
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest
from scipy.stats import norm as normal

from ancer_cli.core.bounds import clopper_pearson_lower
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.incremental import (
    Earlier,
    PairClassifier,
    ReuseRule,
    Route,
    certify_incremental_many,
    pair_counts,
    recovered_p_a_lower,
    zeta_cap,
    zeta_looks,
)
from ancer_cli.core.law import Noise, NoiseLaw
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.sequential import cs_upper
from ancer_cli.core.smoothing import ABSTAIN, certify_many, sample_counts_many
from ancer_cli.results import format_down
from tests.toys import Threshold

THETA = 0.5
X0 = (0.4, 0.25, -0.3)  # pA = Phi(|x0| / theta): 0.79, 0.69, 0.73 (class 1, 1, 0)


class Shifted(torch.nn.Module):
    """Class 1 iff ``x_0 > shift``: against :class:`Threshold` (``shift = 0``) the two disagree
    with ``f = 1`` exactly when ``0 < x_0 + e < shift``."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1)[:, 0] - self.shift) * 10
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _inputs() -> torch.Tensor:
    xs = torch.zeros((len(X0), 1, 2, 2))
    xs[:, 0, 0, 0] = torch.tensor(X0)
    return xs


def _generators(seed: int = 7) -> list[torch.Generator]:
    return [input_generator(seed, i, "cpu", Stream.certify) for i in range(len(X0))]


def _laws(count: int = len(X0), grid: int | None = None) -> list[NoiseLaw]:
    return [Noise(Norm.l2, grid).law(THETA, (1, 2, 2)) for _ in range(count)]


def _earlier(predictions, p_a_lowers, floors=None) -> list[Earlier]:
    floors = floors if floors is not None else [0.0] * len(predictions)
    return [Earlier(c, p, f) for c, p, f in zip(predictions, p_a_lowers, floors, strict=True)]


@pytest.mark.parametrize("grid", [None, 16])
def test_pair_votes_are_certifys_votes_looked_at_in_steps(grid):
    """Both stages at once, or the same draws in looks: the same draws, and the pair's marginal
    is the original model's votes exactly."""
    xs = torch.round((_inputs() + 0.5) * 16) / 16  # on the 1/16 grid, as sound noise needs
    laws = _laws(grid=grid)
    votes = sample_counts_many(Shifted(0.5), xs, laws, (30, 1000), 200, _generators(), 2)
    pair = PairClassifier(Shifted(0.5), Shifted(0.7), 2)
    whole = pair_counts(pair, xs, laws, (30, 1000), 200, _generators())
    assert np.array_equal(whole.sum(axis=3), votes.numpy())
    assert whole[:, :, 1, 1].sum() > 0  # the shifted model does disagree
    generators = _generators()
    first = pair_counts(pair, xs, laws, (30, 400), 200, generators)
    rest = [pair_counts(pair, xs, laws, (k,), 200, generators) for k in (200, 400)]
    looked = first[:, 1] + rest[0][:, 0] + rest[1][:, 0]
    assert np.array_equal(first[:, 0], whole[:, 0])
    assert np.array_equal(looked, whole[:, 1])


def test_looks_grow_to_a_quarter_of_n():
    assert zeta_cap(100_000) == 25_000 and zeta_cap(3) == 1
    looks = zeta_looks(100_000, 1000)
    assert looks[:5] == [1000, 2000, 3000, 5000, 8000] and looks[-1] == 25_000
    assert looks == sorted(set(looks))
    assert zeta_looks(200, 1000) == [50]  # a look of the cap itself
    assert zeta_looks(1050, 100) == [100, 200, 262]
    with pytest.raises(ValueError, match="growth"):
        zeta_looks(100, 10, growth=1.0)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_recovered_p_a_lower_never_above_the_certified_one(norm):
    for p in (0.5001, 0.73, 0.999, 0.99999):
        gap = normal.ppf(p) if norm == "l2" else 2 * p - 1
        for theta in (0.12, 0.25, 0.5):
            written = float(format_down(theta * gap))
            recovered = recovered_p_a_lower(written, theta, norm)
            assert recovered <= p and p - recovered < 1e-5


def test_unchanged_model_costs_exactly_the_bound_for_no_disagreement():
    """The earlier certificates of Threshold, reused for Threshold: nothing disagrees, and
    pA_lower drops by cs_upper(0, n) exactly; both models see each draw."""
    xs, laws = _inputs(), _laws()
    sampling, alpha_zeta = Sampling(50, 4000, 0.001, 500), 0.001
    earlier = certify_many(Threshold(), xs, laws, sampling, _generators())
    rule = ReuseRule(alpha_zeta, tolerance=0.2)
    pair = PairClassifier(Threshold(), Threshold(), 2)
    outcomes = certify_incremental_many(
        pair, xs, laws, sampling,
        _earlier([c.prediction for c in earlier], [c.p_a_lower for c in earlier]), rule,
        _generators(seed=8),
    )  # fmt: skip
    for certificate, outcome in zip(earlier, outcomes, strict=True):
        assert outcome.route is Route.reuse and outcome.certificate is None
        assert outcome.disagreements == 0 and outcome.n in zeta_looks(4000, 500)
        assert outcome.zeta == cs_upper(0, outcome.n, alpha_zeta)
        assert outcome.p_a_lower == certificate.p_a_lower - outcome.zeta
        assert outcome.samples == 2 * outcome.n
        assert rule.acceptable(certificate.p_a_lower, outcome.zeta)


def test_known_disagreement_rate_is_covered():
    """Threshold against Shifted(s): f = 1 and f' = 0 on 0 < x0 + e < s, a known probability
    (about 0.1 and 0.12 here: reuse is hopeless, decided at the first look); f = 0 never meets
    f' = 1 (x0 + e < 0 < s), so the third input's disagreements that count are none."""
    shift, sampling = 0.15, Sampling(20, 40_000, 0.001, 2000)
    xs, laws = _inputs(), _laws()
    rule = ReuseRule(0.001, tolerance=0.05)
    outcomes = certify_incremental_many(
        PairClassifier(Threshold(), Shifted(shift), 2), xs, laws, sampling,
        _earlier([1, 1, 0], [0.75, 0.65, 0.7]), rule, _generators(),
    )  # fmt: skip
    for x0, outcome in zip(X0, outcomes, strict=True):
        q = normal.cdf((shift - x0) / THETA) - normal.cdf(-x0 / THETA) if x0 > 0 else 0.0
        assert outcome.zeta >= q
        if q > 0:
            assert outcome.route is Route.scratch and outcome.n == 2000
            assert binomtest(outcome.disagreements, outcome.n, q).pvalue > 1e-3
            assert outcome.zeta - outcome.disagreements / outcome.n < 0.05
        else:
            assert outcome.route is Route.reuse and outcome.disagreements == 0


def test_no_input_costs_more_than_certifying_afresh():
    """Abstentions stay (no draw); an input that reuse could not help whatever the draws goes
    afresh at once (CERTIFY: N0 + N); one sent afresh after looking at n draws is bounded on the
    N0 + N - 2 n draws left of the budget, for its earlier class."""
    xs, laws = _inputs(), _laws()
    sampling = Sampling(10, 20_000, 0.001, 1000)
    rule = ReuseRule(0.001, tolerance=0.05)
    budget = sampling.n_selection + sampling.n_estimation
    outcomes = certify_incremental_many(
        PairClassifier(Threshold(), Shifted(0.15), 2), xs, laws, sampling,
        _earlier([ABSTAIN, 1, 1], [0.0, 0.9999, 0.75]), rule, _generators(),
    )  # fmt: skip
    assert outcomes[0].route is Route.abstain and outcomes[0].samples == 0
    hopeless, looked = outcomes[1], outcomes[2]
    assert hopeless.route is Route.scratch and hopeless.n == 0 and hopeless.samples == budget
    afresh = certify_many(Shifted(0.15), xs[1:2], laws[1:2], sampling, _generators()[1:2])
    assert hopeless.certificate == afresh[0]  # CERTIFY afresh, on the input's own stream
    assert looked.route is Route.scratch and looked.n > 0 and looked.samples == budget
    assert looked.certificate is not None
    assert looked.certificate.n_estimation == budget - 2 * looked.n
    # x0 = 0.25 against Shifted(0.15): pA' = Phi((0.25 - 0.15) / 0.5) = 0.58 for class 1
    expected = clopper_pearson_lower(looked.certificate.n_a, budget - 2 * looked.n, 0.001)
    assert looked.certificate.p_a_lower == expected
    assert looked.certificate.p_a_lower < normal.cdf(0.2)


class FittedToDraws(torch.nn.Module):
    """A changed model written after an earlier run's seed was published: it answers as
    ``Threshold`` on every noisy input of the earlier run's stream (it has seen them all), and on
    any other input it answers the other class for half of them (by a hash of the input)."""

    def __init__(self, seen: set[bytes]) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        honest = Threshold()(x)
        rows = x.detach().reshape(len(x), -1).numpy()
        for k, row in enumerate(rows):
            key = row.tobytes()
            if key not in self.seen and hashlib.sha256(key).digest()[0] % 2:
                honest[k] = honest[k].flip(0)
        return honest


def test_a_model_fitted_to_published_draws_forges_only_on_those_draws():
    """The attack on reuse: the earlier run's seed is in its sidecar, so a changed model can be
    written to agree with the original on exactly the draws that seed regenerates, and disagree
    on half of all others. Bounding the disagreement on the regenerated draws (as reuse did)
    sees none and reuses the certificate of a model whose pA is about half the original's; on
    fresh draws of this run's own stream it sees them and certifies afresh, where the changed
    model cannot reach 1/2."""
    xs, laws = _inputs()[:1], _laws(1, grid=16)
    xs = torch.round((xs + 0.5) * 16) / 16  # x0 = 0.875: pA = Phi(0.875 / 0.5) = 0.96
    sampling = Sampling(20, 2000, 0.001, 500)
    earlier = certify_many(Threshold(), xs, laws, sampling, _generators(7)[:1])[0]
    assert earlier.prediction == 1 and earlier.p_a_lower > 0.9
    published = torch.empty((sampling.n_selection + sampling.n_estimation, 1, 2, 2))
    laws[0].draw_(published, laws[0].prepare(xs[0]), _generators(7)[0])
    fitted = FittedToDraws({row.numpy().tobytes() for row in published.reshape(len(published), -1)})
    pair = PairClassifier(Threshold(), fitted, 2)
    rule = ReuseRule(0.0001, tolerance=1.0)
    regenerated = certify_incremental_many(
        pair, xs, laws, sampling, _earlier([1], [earlier.p_a_lower]), rule, _generators(7)[:1]
    )[0]
    assert regenerated.route is Route.reuse and regenerated.disagreements == 0  # forged
    assert regenerated.p_a_lower > 0.85
    fresh = certify_incremental_many(
        pair, xs, laws, sampling, _earlier([1], [earlier.p_a_lower]), rule, _generators(99)[:1]
    )[0]
    assert fresh.disagreements > 0.3 * fresh.n
    assert fresh.route is Route.scratch and fresh.certificate is not None
    assert fresh.certificate.prediction == ABSTAIN  # pA' is about 0.48: no certificate


def test_rule_validation_and_tolerance():
    with pytest.raises(ValueError, match="alpha_zeta"):
        ReuseRule(0.0)
    with pytest.raises(ValueError, match="tolerance"):
        ReuseRule(0.1, tolerance=-1)
    rule = ReuseRule(0.01, tolerance=0.1, norm=Norm.l1)
    # l1: gap 2p - 1; p = 0.8, zeta = 0.03 loses exactly 0.06 / 0.6 = 10% of the gap
    assert rule.acceptable(0.8, 0.029) and not rule.acceptable(0.8, 0.031)
    assert not ReuseRule(0.01, tolerance=10).acceptable(0.55, 0.06)  # below 1/2


def test_floor_gaps_keep_the_largest_radius_reached():
    rule = ReuseRule(0.01, radii=(0.5, 0.25, 0.75))
    assert rule.radii == (0.25, 0.5, 0.75)
    floors = rule.floor_gaps([0.1, 0.25, 0.6, 0.9, 0.7499], [0.5, 0.5, 0.25, 0.25, 0.25])
    margin = 1.0 + 1e-12
    assert floors.tolist() == [0.0, 0.5 * margin, 2.0 * margin, 3.0 * margin, 2.0 * margin]
    assert ReuseRule(0.01).floor_gaps([0.9], [0.25]).tolist() == [0.0]
    with pytest.raises(ValueError, match="radii"):
        ReuseRule(0.01, radii=(0.5, 0.0))


def test_floor_keeps_the_written_radius_at_the_reported_one():
    """Earlier radius 0.51 at theta 0.25 (gap 2.04), the reported radius 0.5 (gap 2.0): with no
    relative tolerance, reuse may lose exactly down to gap 2, and the radius it would write then
    is 0.5 or more, rounded toward zero as written."""
    rule = ReuseRule(0.01, tolerance=1.0, radii=(0.25, 0.5))
    p = float(normal.cdf(2.04))
    floor = rule.floor_gaps([0.51], [0.25])
    edge = p - float(normal.cdf(floor[0]))  # the largest zeta that keeps gap >= floor
    assert rule.acceptable(p, edge * (1 - 1e-6), floor)
    assert not rule.acceptable(p, edge * (1 + 1e-6), floor)
    assert rule.acceptable(p, edge * (1 + 1e-6))  # without the floor: anything above 1/2
    kept = 0.25 * float(normal.ppf(p - edge * (1 - 1e-6)))
    assert float(format_down(kept)) >= 0.5


def test_radii_trade_samples_where_they_matter():
    """The unchanged model (no disagreement): an input whose earlier radius lies just above a
    reported radius draws more than the 5 % tolerance would (and keeps that radius); one far
    above the next reported radius stops sooner than the tolerance would let it."""
    sampling = Sampling(10, 400_000, 0.001, 1000)
    xs, laws = _inputs()[:2], _laws(2)
    radius = THETA * float(normal.ppf(0.99))  # 1.163
    pair = PairClassifier(Threshold(), Threshold(), 2)

    def run(rule, radii):
        floors = rule.floor_gaps(radii, [THETA, THETA])
        return certify_incremental_many(
            pair, xs, laws, sampling, _earlier([1, 1], [0.99, 0.99], list(floors)), rule,
            _generators()[:2],
        )  # fmt: skip

    tolerance = run(ReuseRule(0.001), [radius, radius])
    near = run(ReuseRule(0.001, tolerance=1.0, radii=(radius - 0.003,)), [radius, radius])
    far = run(ReuseRule(0.001, tolerance=1.0, radii=(0.5,)), [radius, radius])
    assert all(o.route is Route.reuse for o in [*tolerance, *near, *far])
    assert near[0].n > tolerance[0].n > far[0].n
    kept = THETA * float(normal.ppf(near[0].p_a_lower))
    assert kept >= radius - 0.003
    assert THETA * float(normal.ppf(far[0].p_a_lower)) >= 0.5


# ---------------------------------------------------------------------------------------------
# the guarantee, as statistics


def _simulate(p_a, q, n, b, alpha, rule, trials, seed, always_reuse=False, naive=False, floor=0.0):
    """Worst case for reuse: f' leaves class c exactly where f and f' disagree, so pA' = pA - q.
    Each trial draws the earlier run's N estimation draws (pA_lower by Clopper-Pearson), then runs
    the reuse rule on fresh draws in looks and, where it routes to scratch after n draws,
    certifies f' on the N - 2 n fresh draws left of the budget (N0 = 0 here). Returns the rates
    of (wrong and reused), (wrong and afresh). ``always_reuse``: reuse with zeta at N, whatever
    the rule (``naive``: with zeta = 0)."""
    rng = np.random.default_rng(seed)
    probs = [p_a - q, q, 1 - p_a]  # f = c = f', f = c != f', f != c
    earlier = rng.multinomial(n, probs, size=trials)
    p_lower = beta.ppf(alpha, np.maximum(earlier[:, 0] + earlier[:, 1], 1),
                       n - earlier[:, 0] - earlier[:, 1] + 1)  # fmt: skip
    truth = p_a - q
    looks = zeta_looks(n, b) if not always_reuse else [n]
    parts = [rng.multinomial(hi - lo, probs, size=trials)
             for lo, hi in itertools.pairwise([0, *looks])]  # fmt: skip
    cumulative = np.cumsum(np.stack(parts), axis=0)  # (len(looks), trials, 3): fresh draws
    if always_reuse:
        dis = cumulative[-1][:, 1]
        reused = p_lower - (0.0 if naive else cs_upper(dis, n, rule.alpha_zeta))
        return float(np.mean(reused > truth)), 0.0
    route = np.zeros(trials, dtype=np.int8)
    zeta, low = np.ones(trials), np.zeros(trials)
    looked = np.zeros(trials, dtype=np.int64)
    cap = looks[-1]
    for k, size in enumerate(looks):
        active = route == 0
        dis = cumulative[k][active, 1]
        codes, zeta[active], low[active] = rule.step(
            p_lower[active], dis, np.full(dis.shape, size), cap, zeta[active], low[active],
            floor,
        )  # fmt: skip
        looked[active] = size
        route[active] = codes
    final = p_lower - zeta
    wrong_reused = np.mean((route == 1) & (final > truth))
    afresh = np.flatnonzero(route == 2)
    left = n - 2 * looked[afresh]
    fresh = rng.binomial(left, truth)
    fresh_lower = np.array(
        [clopper_pearson_lower(int(k), int(m), alpha) for k, m in zip(fresh, left, strict=True)]
    )
    wrong_afresh = np.sum(fresh_lower > truth) / trials
    return float(wrong_reused), float(wrong_afresh)


def _at_most(rate, bound, trials):
    """The 99% Clopper-Pearson interval of ``rate`` reaches down to ``bound`` or below."""
    k = round(rate * trials)
    return k == 0 or beta.ppf(0.005, k, trials - k + 1) <= bound


def test_false_certificates_at_most_alpha_plus_alpha_zeta_naive_far_above():
    alpha, alpha_zeta, trials = 0.1, 0.1, 20_000
    rule = ReuseRule(alpha_zeta, tolerance=0.5)
    wrong, _ = _simulate(0.8, 0.05, 2000, 100, alpha, rule, trials, seed=1, always_reuse=True)
    assert _at_most(wrong, alpha + alpha_zeta, trials)
    # without zeta, pA_lower (about 0.78) lies above pA' = 0.75 nearly always
    naive, _ = _simulate(
        0.8, 0.05, 2000, 100, alpha, rule, trials, 1, always_reuse=True, naive=True
    )
    assert naive > 0.9


@pytest.mark.slow
def test_sequential_rule_false_certificates_within_the_union_bound():
    alpha, alpha_zeta, trials = 0.1, 0.05, 20_000
    rule = ReuseRule(alpha_zeta, tolerance=0.2)
    wrong_reused, wrong_afresh = _simulate(0.85, 0.04, 4000, 200, alpha, rule, trials, seed=3)
    assert wrong_reused > 0  # the simulation can see failures at all
    assert _at_most(wrong_reused, alpha + alpha_zeta, trials)
    assert _at_most(wrong_reused + wrong_afresh, 2 * alpha + alpha_zeta, trials)
    assert math.isfinite(wrong_afresh)


def test_reported_radii_rule_false_certificates_within_the_union_bound():
    """The floor only moves where sampling stops; zeta stays anytime-valid: with no relative
    tolerance and a floor just under the typical earlier gap, the rates stay within the bounds."""
    alpha, alpha_zeta, trials = 0.1, 0.05, 20_000
    rule = ReuseRule(alpha_zeta, tolerance=1.0)
    floor = float(normal.ppf(0.8))  # pA_lower is about 0.84 here: the floor decides
    wrong_reused, wrong_afresh = _simulate(
        0.85, 0.01, 4000, 200, alpha, rule, trials, seed=5, floor=floor
    )
    assert wrong_reused > 0
    assert _at_most(wrong_reused, alpha + alpha_zeta, trials)
    assert _at_most(wrong_reused + wrong_afresh, 2 * alpha + alpha_zeta, trials)
