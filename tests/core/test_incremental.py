"""Incremental smoothing: the pair classifier regenerates CERTIFY's draws exactly, an unchanged
model costs exactly the bound for zero disagreements, a known disagreement rate is covered, and
the false-certificate rate of reuse stays within ``alpha + alpha_zeta`` (as statistics)."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest
from scipy.stats import norm as normal

from ancer_cli.core.bounds import clopper_pearson_lower
from ancer_cli.core.incremental import (
    PairClassifier,
    ReuseRule,
    Route,
    certify_incremental_many,
    pair_counts,
    recovered_p_a_lower,
    zeta_cap,
    zeta_looks,
)
from ancer_cli.core.noise import Norm, Stream, input_generator
from ancer_cli.core.sequential import cs_upper
from ancer_cli.core.smoothing import ABSTAIN, certify_many, chunk_sizes, sample_counts_many
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


@pytest.mark.parametrize("sound", [None, 16])
def test_pair_votes_are_certifys_votes_looked_at_in_chunks(sound):
    """Both stages at once, or the estimation stage in whole-chunk looks: the same draws, and the
    pair's marginal is the original model's votes exactly."""
    xs = torch.round((_inputs() + 0.5) * 16) / 16  # on the 1/16 grid, as sound noise needs
    thetas = [THETA] * len(X0)
    votes = sample_counts_many(Shifted(0.5), xs, thetas, "l2", (30, 1000), 200, _generators(), 2,
                               sound)  # fmt: skip
    pair = PairClassifier(Shifted(0.5), Shifted(0.7), 2)
    whole = pair_counts(pair, xs, thetas, "l2", (30, 1000), 200, _generators(), sound)
    assert np.array_equal(whole.sum(axis=3), votes.numpy())
    assert whole[:, :, 1, 1].sum() > 0  # the shifted model does disagree
    generators = _generators()
    first = pair_counts(pair, xs, thetas, "l2", (30, 400), 200, generators, sound)
    rest = [pair_counts(pair, xs, thetas, "l2", (k,), 200, generators, sound) for k in (200, 400)]
    looked = first[:, 1] + rest[0][:, 0] + rest[1][:, 0]
    assert np.array_equal(first[:, 0], whole[:, 0])
    assert np.array_equal(looked, whole[:, 1])


def test_looks_fall_on_whole_chunks():
    assert zeta_cap(100_000, 1000) == 50_000
    looks = zeta_looks(100_000, 1000)
    assert looks[:5] == [1000, 2000, 3000, 5000, 8000] and looks[-1] == 50_000
    assert all(size % 1000 == 0 for size in looks) and looks == sorted(set(looks))
    assert zeta_looks(200, 1000) == [200]  # one chunk: one look
    assert zeta_looks(1050, 100) == [100, 200, 300, 500]
    for n, b in [(1050, 100), (100_000, 1000), (777, 50)]:
        cap = zeta_cap(n, b)
        sizes = [b2 - b1 for b1, b2 in itertools.pairwise([0, *zeta_looks(n, b)])]
        flat = [c for size in sizes for c in chunk_sizes(size, b)]
        assert flat == chunk_sizes(n, b)[: len(flat)] and sum(flat) == cap


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_recovered_p_a_lower_never_above_the_certified_one(norm):
    for p in (0.5001, 0.73, 0.999, 0.99999):
        gap = normal.ppf(p) if norm == "l2" else 2 * p - 1
        for theta in (0.12, 0.25, 0.5):
            written = float(format_down(theta * gap))
            recovered = recovered_p_a_lower(written, theta, norm)
            assert recovered <= p and p - recovered < 1e-5


def test_unchanged_model_costs_exactly_the_bound_for_no_disagreement():
    """The earlier certificates of Threshold, reused for Threshold: the regenerated selection
    picks the same class, nothing disagrees, and pA_lower drops by cs_upper(0, n) exactly."""
    xs, thetas = _inputs(), [THETA] * len(X0)
    n0, n, b, alpha, alpha_zeta = 50, 4000, 500, 0.001, 0.001
    earlier = certify_many(Threshold(), xs, thetas, "l2", n0, n, alpha, b, _generators())
    rule = ReuseRule(alpha_zeta, tolerance=0.2)
    pair = PairClassifier(Threshold(), Threshold(), 2)
    outcomes = certify_incremental_many(
        pair, xs, thetas, "l2", n0, n, b, _generators(),
        [c.prediction for c in earlier], [c.p_a_lower for c in earlier], rule,
    )  # fmt: skip
    for certificate, outcome in zip(earlier, outcomes, strict=True):
        assert outcome.route is Route.reuse and outcome.selection_agrees
        assert outcome.disagreements == 0 and outcome.n in zeta_looks(n, b)
        assert outcome.zeta == cs_upper(0, outcome.n, alpha_zeta)
        assert outcome.p_a_lower == certificate.p_a_lower - outcome.zeta
        assert outcome.samples == n0 + outcome.n
        assert rule.acceptable(certificate.p_a_lower, outcome.zeta)


def test_known_disagreement_rate_is_covered():
    """Threshold against Shifted(s): f = 1 and f' = 0 on 0 < x0 + e < s, a known probability
    (about 0.1 and 0.12 here: reuse is hopeless, decided at the first look); f = 0 never meets
    f' = 1 (x0 + e < 0 < s), so the third input's disagreements that count are none."""
    shift, n0, n, b = 0.15, 20, 40_000, 2000
    xs, thetas = _inputs(), [THETA] * len(X0)
    rule = ReuseRule(0.001, tolerance=0.05)
    outcomes = certify_incremental_many(
        PairClassifier(Threshold(), Shifted(shift), 2), xs, thetas, "l2", n0, n, b,
        _generators(), [1, 1, 0], [0.75, 0.65, 0.7], rule,
    )  # fmt: skip
    for x0, outcome in zip(X0, outcomes, strict=True):
        q = normal.cdf((shift - x0) / THETA) - normal.cdf(-x0 / THETA) if x0 > 0 else 0.0
        assert outcome.zeta >= q
        if q > 0:
            assert outcome.route is Route.scratch and outcome.n == b
            assert binomtest(outcome.disagreements, outcome.n, q).pvalue > 1e-3
            assert outcome.zeta - outcome.disagreements / outcome.n < 0.05
        else:
            assert outcome.route is Route.reuse and outcome.disagreements == 0


def test_abstentions_stay_and_hopeless_inputs_go_afresh_without_draws():
    xs, thetas = _inputs(), [THETA] * len(X0)
    rule = ReuseRule(0.001, tolerance=0.05)
    outcomes = certify_incremental_many(
        PairClassifier(Threshold(), Threshold(), 2), xs, thetas, "l2", 10, 20_000, 1000,
        _generators(), [ABSTAIN, 1, 0], [0.0, 0.9999, 0.6], rule,
    )  # fmt: skip
    assert outcomes[0].route is Route.abstain and outcomes[0].samples == 0
    assert outcomes[1].route is Route.scratch and outcomes[1].samples == 0  # 0.9999: zeta costs
    assert outcomes[2].samples > 0


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
    n0, n, b = 10, 200_000, 1000
    xs, thetas = _inputs()[:2], [THETA, THETA]
    p = [0.99, 0.99]
    radius = THETA * float(normal.ppf(0.99))  # 1.163
    pair = PairClassifier(Threshold(), Threshold(), 2)

    def run(rule, radii):
        return certify_incremental_many(
            pair, xs, thetas, "l2", n0, n, b, _generators()[:2], [1, 1], p, rule, None,
            rule.floor_gaps(radii, [THETA, THETA]),
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
    the reuse rule on their prefix (the regenerated draws) and, where it routes to scratch,
    certifies f' on fresh draws. Returns the rates of (wrong and reused), (wrong and afresh).
    ``always_reuse``: reuse with zeta at N, whatever the rule (``naive``: with zeta = 0)."""
    rng = np.random.default_rng(seed)
    probs = [p_a - q, q, 1 - p_a]  # f = c = f', f = c != f', f != c
    looks = zeta_looks(n, b) if not always_reuse else [n]
    edges = [0, *looks, n] if looks[-1] < n else [0, *looks]
    parts = [rng.multinomial(hi - lo, probs, size=trials) for lo, hi in itertools.pairwise(edges)]
    cumulative = np.cumsum(np.stack(parts), axis=0)  # (len(edges) - 1, trials, 3)
    total = cumulative[-1]
    p_lower = beta.ppf(alpha, np.maximum(total[:, 0] + total[:, 1], 1),
                       n - total[:, 0] - total[:, 1] + 1)  # fmt: skip
    truth = p_a - q
    if always_reuse:
        reused = p_lower - (0.0 if naive else cs_upper(total[:, 1], n, rule.alpha_zeta))
        return float(np.mean(reused > truth)), 0.0
    route = np.zeros(trials, dtype=np.int8)
    zeta, low = np.ones(trials), np.zeros(trials)
    cap = looks[-1]
    for k, size in enumerate(looks):
        active = route == 0
        dis = cumulative[k][active, 1]
        codes, zeta[active], low[active] = rule.step(
            p_lower[active], dis, np.full(dis.shape, size), cap, zeta[active], low[active],
            floor,
        )  # fmt: skip
        route[active] = codes
    final = p_lower - zeta
    wrong_reused = np.mean((route == 1) & (final > truth))
    afresh = route == 2
    fresh = rng.binomial(n, truth, size=trials)
    fresh_lower = np.array([clopper_pearson_lower(int(k), n, alpha) for k in fresh[afresh]])
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
