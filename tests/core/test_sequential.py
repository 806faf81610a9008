"""Sequential certification: the confidence sequence, the stopping rules and their guarantees.

The guarantees are statistics, so most tests here are simulations: a Bernoulli stream per run
(numpy, fixed seeds, vectorized across runs) replayed through the same functions the driver
calls, at a level ``alpha`` large enough for error rates to be measured. Each rate comes with its
99% Clopper-Pearson interval, and each test also shows that the naive procedure -- Clopper-Pearson
recomputed at every look -- breaks the level on the same runs, so the tests can fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binom, norm

from ancer_cli.core.bounds import clopper_pearson_lower
from ancer_cli.core.sequential import (
    BETS,
    ROUNDING_MARGIN,
    Decision,
    SequentialPlan,
    Stop,
    bet_grid,
    clopper_pearson_lowers,
    cs_lower,
    cs_upper,
    decisions,
    gaps,
    log_capital,
    look_sizes,
    optimistic_gap,
    reported_lower,
    run_sequential,
    stop_codes,
    stop_reason,
    undecided,
    update_bounds,
)

CAP = 100_000
PHI_2 = float(norm.cdf(2.0))  # R = 0.5 at sigma = 0.25, l2


# ---------------------------------------------------------------- helpers


def _streams(plan: SequentialPlan, p: float | np.ndarray, runs: int, seed: int):
    """Cumulative successes of ``runs`` Bernoulli(p) streams at every look: ``(runs, looks)``."""
    looks = np.array(plan.looks())
    p_ = np.broadcast_to(np.asarray(p, dtype=np.float64), (runs,))[:, None]
    rng = np.random.default_rng(seed)
    return looks, rng.binomial(np.diff(looks, prepend=0)[None, :], p_).cumsum(axis=1)


def _replay(plan: SequentialPlan, looks: np.ndarray, n_a: np.ndarray, naive_alpha=None):
    """What :func:`run_sequential` does, for every run at once.

    With ``naive_alpha`` the confidence sequence is replaced by Clopper-Pearson at that level,
    recomputed at each look (running max/min kept), everything else unchanged.
    """
    runs = n_a.shape[0]
    lower, upper = np.zeros(runs), np.ones(runs)
    code = np.zeros(runs, dtype=np.int8)
    at = np.full(runs, len(looks) - 1)
    for k, n in enumerate(looks):
        act = np.flatnonzero(code == 0)
        if act.size == 0:
            break
        if naive_alpha is None:
            lo, up = update_bounds(plan, n_a[act, k], n, lower[act], upper[act])
        else:
            lo = np.maximum(lower[act], clopper_pearson_lowers(n_a[act, k], n, naive_alpha))
            up = np.minimum(
                upper[act], 1.0 - clopper_pearson_lowers(n - n_a[act, k], n, naive_alpha)
            )
        lower[act], upper[act] = lo, up
        codes = stop_codes(plan, lo, up, n)
        code[act] = codes
        at[act[codes > 0]] = k
    n_used = looks[at]
    n_a_used = n_a[np.arange(runs), at]
    return {
        "n": n_used,
        "n_a": n_a_used,
        "running_lower": lower,
        "p_a_lower": reported_lower(plan, n_a_used, n_used, lower),
        "stop": code,
    }


def _rate(events: np.ndarray) -> tuple[float, float, float]:
    """Rate and its two-sided 99% Clopper-Pearson interval."""
    k, n = int(events.sum()), events.size
    low = float(beta.ppf(0.005, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(0.995, k + 1, n - k)) if k < n else 1.0
    return k / n, low, high


# ---------------------------------------------------------------- the confidence sequence


def test_bet_grid():
    assert len(BETS) == 41
    assert BETS[0] == 2.0**-10 and BETS[-1] == 1.0 - 2.0**-12
    assert np.all(np.diff(BETS) > 0) and np.count_nonzero(BETS == 0.5) == 1
    assert np.all((BETS > 0) & (BETS < 1))
    assert np.array_equal(bet_grid(), BETS)
    assert len(bet_grid(per_octave=1)) == 21


@pytest.mark.parametrize("n", [1, 10, 1000, 10**7])
def test_no_successes_gives_zero(n):
    assert cs_lower(0, n, 0.001) == 0.0
    assert cs_upper(n, n, 0.001) == 1.0
    assert cs_lower(0, 0, 0.05) == 0.0 and cs_upper(0, 0, 0.05) == 1.0


def test_monotone_in_successes_and_below_the_estimate():
    n = 300
    n_a = np.arange(n + 1)
    lower = cs_lower(n_a, n, 0.01)
    upper = cs_upper(n_a, n, 0.01)
    assert np.all(np.diff(lower) >= 0) and np.all(np.diff(upper) >= 0)
    assert np.all(lower <= n_a / n) and np.all(upper >= n_a / n)
    assert np.all(lower < upper)


def test_never_above_clopper_pearson():
    # K_n(m) <= max_j K_nj(m) <= exp(n KL(n_a/n || m)), so L_n <= Chernoff <= Clopper-Pearson
    for n in [10, 100, 1000, 10**4, 10**5, 10**6]:
        for frac in [0.3, 0.5, 0.6, 0.9, 0.99, 0.999, 1.0]:
            n_a = round(frac * n)
            for alpha in [0.1, 0.001]:
                assert cs_lower(n_a, n, alpha) <= clopper_pearson_lower(n_a, n, alpha)


@pytest.mark.parametrize("n", [30, 100, 10**4, 10**5, 10**7])
def test_all_successes_limit(n):
    # K_n(m) >= (1 + lam_max (1 - m))^n / J gives the lower limit; Clopper-Pearson the upper one
    alpha, bets = 0.001, len(BETS)
    lam_max = float(BETS[-1])
    floor = 1.0 - math.expm1(math.log(bets / alpha) / n) / lam_max
    lower = cs_lower(n, n, alpha)
    assert floor <= lower <= alpha ** (1 / n)
    if n >= 10**4:  # 1 - L ~ log(J'/alpha) / n with an effective J' well below J = 41
        assert n * (1.0 - lower) == pytest.approx(7.8, abs=0.1)


@pytest.mark.parametrize("failures", [0, 1, 100])
def test_robust_near_one_and_for_large_n(failures):
    n, alpha = 10**7, 0.001
    n_a = n - failures
    lower, upper = cs_lower(n_a, n, alpha), cs_upper(n_a, n, alpha)
    assert 0.99998 < lower < n_a / n <= upper <= 1.0
    assert lower <= clopper_pearson_lower(n_a, n, alpha)
    for m in [0.99999, 1 - 1e-7, 1 - 1e-10, 1.0]:
        assert np.isfinite(log_capital(m, n_a, n))


@pytest.mark.parametrize("n_a,n", [(9, 10), (990, 1000), (99_990, 100_000), (10**7, 10**7)])
def test_rounded_down_to_a_verified_rejection(n_a, n):
    alpha = 0.1
    lower = cs_lower(n_a, n, alpha)
    assert lower > 0
    assert log_capital(lower, n_a, n) >= math.log(1 / alpha) + ROUNDING_MARGIN * (n + 1)
    # and the bracket is tight: a hair above the bound is no longer rejected
    above = lower + 1e-6 * (1.0 - lower)
    assert log_capital(above, n_a, n) < math.log(1 / alpha)


def test_arrays_match_scalars():
    n_a = np.array([[0, 5, 99], [1000, 999, 500]])
    n = np.array([[10, 10, 100], [1000, 1000, 1000]])
    lower = cs_lower(n_a, n, 0.01)
    upper = cs_upper(n_a, n, 0.01)
    assert lower.shape == upper.shape == (2, 3)
    for i, j in np.ndindex(2, 3):
        assert lower[i, j] == cs_lower(int(n_a[i, j]), int(n[i, j]), 0.01)
        assert upper[i, j] == cs_upper(int(n_a[i, j]), int(n[i, j]), 0.01)


@pytest.mark.parametrize("n", [1, 5, 40])
def test_capital_is_a_supermartingale_exactly(n):
    # E[K_n(m)] by enumerating Binomial(n, p) equals sum_j w_j (1 + lam_j (p - m))^n <= 1 for p <= m
    k = np.arange(n + 1)
    for m in [0.3, 0.9, 0.999]:
        capital = np.exp(log_capital(m, k, n))
        for p in [0.0, m / 2, m - 1e-3, m]:
            expected = float(binom.pmf(k, n, p) @ capital)
            closed = float(np.mean((1 + BETS * (p - m)) ** n))
            assert expected == pytest.approx(closed, rel=1e-9)
            assert expected <= 1.0 + 1e-12
        assert float(binom.pmf(k, n, m) @ capital) == pytest.approx(1.0, rel=1e-9)


def test_time_uniform_exactly_with_a_look_after_every_sample():
    # P(exists n <= T: L_n > p) <= P(exists n <= T: K_n(p) >= 1/alpha), computed exactly by
    # propagating the mass of the paths that have not crossed; Clopper-Pearson crosses far more.
    p, alpha, horizon = 0.9, 0.05, 1000
    log_level = math.log(1 / alpha)
    alive_cs = np.array([1.0])
    alive_cp = np.array([1.0])
    for n in range(1, horizon + 1):
        k = np.arange(n + 1)
        step = lambda alive: np.append(alive * (1 - p), 0.0) + np.insert(alive * p, 0, 0.0)  # noqa: E731
        alive_cs, alive_cp = step(alive_cs), step(alive_cp)
        alive_cs[log_capital(p, k, n) >= log_level] = 0.0
        # Clopper-Pearson's lower bound exceeds p iff P(Bin(n, p) >= k) < alpha
        alive_cp[binom.sf(k - 1, n, p) < alpha] = 0.0
    crossed_cs, crossed_cp = 1.0 - alive_cs.sum(), 1.0 - alive_cp.sum()
    assert crossed_cs == pytest.approx(0.0285, abs=5e-4)  # <= alpha = 0.05, as Ville promises
    assert crossed_cp > 4 * alpha


# ---------------------------------------------------------------- schedule and rules


def test_look_sizes():
    assert look_sizes(100_000, 100, 2.0) == [
        100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 100_000
    ]  # fmt: skip
    sizes = look_sizes(100_000, 100, 1.5)
    # no look just short of the cap: the last one below it is at most cap / sqrt(growth)
    assert sizes[:5] == [100, 150, 225, 338, 506] and sizes[-3:] == [43789, 65684, 100_000]
    assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    assert look_sizes(50, 100, 1.5) == [50]
    assert look_sizes(10, 1, 1.01) == list(range(1, 11))
    with pytest.raises(ValueError):
        look_sizes(100, 10, 1.0)


def test_plan_validation_and_levels():
    radius = SequentialPlan(cap=CAP, alpha=0.001, p_needed=(0.5, PHI_2), alpha_upper=0.01)
    assert radius.radius_mode and radius.alpha_lower == 0.001 and radius.alpha_stop == 0.01
    assert radius.alpha_cap == 0.0
    adaptive = SequentialPlan(cap=CAP, alpha=0.001)
    assert not adaptive.radius_mode and adaptive.alpha_stop == 0.001
    assert adaptive.alpha_lower + adaptive.alpha_cap == pytest.approx(0.001)
    for bad in [
        dict(alpha=0.0),
        dict(p_needed=(0.9, 0.6)),
        dict(p_needed=(0.4,)),
        dict(p_needed=()),
        dict(cap_share=1.0),
        dict(tol=-0.1),
        dict(growth=1.0),
        dict(alpha_upper=1.5),
    ]:
        with pytest.raises(ValueError):
            SequentialPlan(**{"cap": CAP, "alpha": 0.001, **bad})


def test_radius_rule():
    plan = SequentialPlan(cap=CAP, alpha=0.001, p_needed=(0.5, 0.8, 0.95))

    def reason(lower, upper, n=1000):
        return stop_reason(int(stop_codes(plan, lower, upper, n)))

    assert reason(0.96, 0.99) is Stop.certified
    assert reason(0.85, 0.9) is Stop.cannot  # 0.8 certified, 0.95 out of reach
    assert reason(0.1, 0.45) is Stop.abstain
    assert reason(0.85, 0.96) is None  # 0.95 undecided
    assert reason(0.85, 0.95) is None  # U = p: p is still possible
    assert reason(0.85, 0.96, n=CAP) is Stop.cap
    assert reason(0.95, 0.97) is Stop.certified  # L = p certifies p
    assert decisions(0.85, 0.96, plan.p_needed) == (
        Decision.certified, Decision.certified, Decision.undecided
    )  # fmt: skip
    assert undecided(np.array([0.85, 0.96]), np.array([0.96, 0.99]), plan.p_needed).tolist() == [
        [False, False, True],
        [False, False, False],
    ]


def test_adaptive_rule():
    plan = SequentialPlan(cap=CAP, alpha=0.001, tol=0.05)

    def reason(lower, upper, n=10_000):
        return stop_reason(int(stop_codes(plan, lower, upper, n)))

    assert reason(0.2, 0.49) is Stop.abstain
    assert reason(0.2, 0.49, n=CAP) is Stop.abstain
    assert reason(0.99, 0.995, n=CAP) is Stop.cap
    assert reason(0.99, 1.0) is None  # the cap could give Phi^-1(0.99993) = 3.81 > 1.05 * 2.33
    # a narrow interval: the optimistic gap is within 5% of the current one
    assert reason(0.895, 0.9) is Stop.converged
    assert optimistic_gap(0.9, plan) <= 1.05 * gaps(0.895, "l2")
    assert reason(0.88, 0.9) is None
    # U just above 1/2: even the cap cannot certify, so stop (the input will abstain)
    assert reason(0.49, 0.5005) is Stop.converged
    assert reported_lower(plan, CAP, CAP, 0.9) == pytest.approx(
        clopper_pearson_lower(CAP, CAP, plan.alpha_cap)
    )
    assert reported_lower(plan, 5000, 5000, 0.9) == 0.9


def test_gaps():
    p = np.array([0.3, 0.5, norm.cdf(1.5), 0.9])
    assert gaps(p, "l2") == pytest.approx([0.0, 0.0, 1.5, norm.ppf(0.9)])
    assert gaps(p, "l1") == pytest.approx([0.0, 0.0, 2 * norm.cdf(1.5) - 1, 0.8])


# ---------------------------------------------------------------- the driver


def test_driver_rejects_impossible_counts():
    plan = SequentialPlan(cap=1000, alpha=0.001)
    with pytest.raises(ValueError, match="returned"):
        run_sequential(lambda k: k + 1, plan)


@pytest.mark.slow
@pytest.mark.parametrize(
    "plan",
    [
        SequentialPlan(cap=20_000, alpha=0.01, p_needed=(0.5, float(norm.cdf(1)), PHI_2)),
        SequentialPlan(cap=20_000, alpha=0.01, tol=0.05),
    ],
    ids=["radius", "adaptive"],
)
def test_driver_matches_the_vectorized_replay(plan):
    runs = 150
    p = np.random.default_rng(7).choice([0.3, 0.49, 0.6, 0.85, 0.97, 0.99, 1.0], size=runs)
    looks, n_a = _streams(plan, p, runs, seed=8)
    replay = _replay(plan, looks, n_a)
    for i in range(runs):
        increments = iter(np.diff(n_a[i], prepend=0).tolist())
        result = run_sequential(lambda k, it=increments: next(it), plan)
        assert (result.n, result.n_a) == (replay["n"][i], replay["n_a"][i])
        assert result.p_a_lower == pytest.approx(replay["p_a_lower"][i], rel=1e-12, abs=1e-15)
        assert result.stop is stop_reason(int(replay["stop"][i]))
        assert result.looks == plan.looks().index(result.n) + 1
        if plan.p_needed is not None:
            assert len(result.decisions) == 3
            if result.stop is Stop.certified:
                assert set(result.decisions) == {Decision.certified}
        else:
            assert result.decisions == ()


# ---------------------------------------------------------------- guarantees, by simulation


@pytest.mark.slow
def test_radius_mode_false_certificates_below_alpha_naive_above():
    # 5 x 25,000 runs with the cap at 100,000; true pA just below a threshold
    alpha, runs = 0.05, 25_000
    plan = SequentialPlan(cap=CAP, alpha=alpha, p_needed=(0.5, PHI_2))
    cases = [
        (PHI_2 - 1e-4, PHI_2, True),
        (PHI_2 - 1e-3, PHI_2, True),
        (PHI_2 - 1e-2, PHI_2, False),  # far enough for Clopper-Pearson too
        (0.5 - 1e-3, 0.5, True),
        (0.5 - 1e-2, 0.5, True),
    ]
    table = []
    for seed, (p, threshold, naive_fails) in enumerate(cases):
        looks, n_a = _streams(plan, p, runs, seed=100 + seed)
        ours = _rate(_replay(plan, looks, n_a)["p_a_lower"] >= threshold)
        naive = _rate(_replay(plan, looks, n_a, naive_alpha=alpha)["p_a_lower"] >= threshold)
        table.append((p, threshold, ours, naive))
        assert ours[2] <= alpha, table  # the whole 99% interval lies below alpha
        if naive_fails:
            assert naive[1] > alpha, table  # the whole 99% interval lies above alpha


@pytest.mark.slow
def test_adaptive_mode_bound_below_alpha_naive_above():
    # 4 x 20,000 runs; the reported bound is wrong when it exceeds pA
    alpha, runs = 0.05, 20_000
    plan = SequentialPlan(cap=CAP, alpha=alpha)
    table = []
    for seed, p in enumerate([0.5 - 1e-3, 0.7, 0.9, 0.999]):
        looks, n_a = _streams(plan, p, runs, seed=200 + seed)
        ours = _replay(plan, looks, n_a)
        naive = _replay(plan, looks, n_a, naive_alpha=alpha)
        wrong = _rate(ours["p_a_lower"] > p)
        # the confidence sequence's share of the union bound, checked on its own
        wrong_cs = _rate(ours["running_lower"] > p)
        wrong_naive = _rate(naive["p_a_lower"] > p)
        table.append((p, wrong, wrong_cs, wrong_naive, ours["n"].mean()))
        assert wrong[0] <= alpha and wrong[1] <= alpha, table
        assert wrong_cs[2] <= plan.alpha_lower, table
        assert wrong_naive[1] > alpha, table


# ---------------------------------------------------------------- efficiency


def test_confident_input_decided_with_few_samples():
    plan = SequentialPlan(cap=CAP, alpha=0.001, p_needed=(0.5, PHI_2))
    looks, n_a = _streams(plan, 0.999, 2000, seed=300)
    out = _replay(plan, looks, n_a)
    assert np.mean(out["p_a_lower"] >= PHI_2) > 0.99
    assert out["n"].mean() < 1000  # of 100,000


@pytest.mark.parametrize("radius,expected_n", [(0.25, 100), (0.5, 506), (0.75, 8650)])
def test_all_successes_stop_at_the_first_sufficient_look(radius, expected_n):
    # with pA = 1 everything is deterministic
    threshold = float(norm.cdf(radius / 0.25))
    plan = SequentialPlan(cap=CAP, alpha=0.001, p_needed=(0.5, threshold))
    result = run_sequential(lambda k: k, plan)
    assert result.stop is Stop.certified and result.n == expected_n
    looks = plan.looks()
    first = next(n for n in looks if cs_lower(n, n, 0.001) >= threshold)
    assert result.n == first
    # within a look and the sequence's price of Clopper-Pearson's fixed-n minimum
    n_min_cp = math.log(1 / 0.001) / -math.log(threshold)
    assert result.n <= max(plan.first, 1.3 * plan.growth * n_min_cp)


def test_abstaining_input_stops_early():
    plan = SequentialPlan(cap=CAP, alpha=0.001, p_needed=(0.5, PHI_2))
    looks, n_a = _streams(plan, 0.3, 2000, seed=301)
    out = _replay(plan, looks, n_a)
    assert np.all(out["stop"] == list(Stop).index(Stop.abstain) + 1)
    assert out["n"].mean() < 300


def test_adaptive_all_successes_run_to_the_cap():
    # the gap keeps growing like sqrt(2 log n): at the last look before the cap the cap still
    # promises 5.5% more gap, above the 5% tolerance
    plan = SequentialPlan(cap=CAP, alpha=0.001)
    result = run_sequential(lambda k: k, plan)
    assert result.stop is Stop.cap and result.n == CAP
    assert result.p_a_lower == pytest.approx(plan.alpha_cap ** (1 / CAP), rel=1e-12)
    abstain = run_sequential(lambda k: k // 5, plan)
    assert abstain.stop is Stop.abstain and abstain.n <= 506
