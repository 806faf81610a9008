import math

import pytest
from scipy.stats import binom, norm

from ancer_cli.core.bounds import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    gap_from_p_lower,
    top_two_p_value,
)


def test_clopper_pearson_textbook_value():
    # 7 successes in 10 trials: the one-sided 95% Clopper-Pearson lower bound is 0.3934
    # (the lower end of the two-sided 90% interval [0.3934, 0.9127]).
    assert clopper_pearson_lower(7, 10, 0.05) == pytest.approx(0.393376, abs=1e-6)


def test_clopper_pearson_all_successes_is_alpha_root():
    # with nA = N the bound solves p^N = alpha exactly
    for n, alpha in [(100, 0.001), (100_000, 0.001), (20, 0.05)]:
        assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)


def test_clopper_pearson_zero_successes_is_zero():
    assert clopper_pearson_lower(0, 1000, 0.001) == 0.0


@pytest.mark.parametrize("n_a,n", [(1, 10), (55, 100), (990, 1000), (99_000, 100_000)])
def test_clopper_pearson_solves_the_binomial_tail(n_a, n):
    # defining property: P(Bin(n, p_low) >= n_a) = alpha
    alpha = 0.001
    p_low = clopper_pearson_lower(n_a, n, alpha)
    assert binom.sf(n_a - 1, n, p_low) == pytest.approx(alpha, rel=1e-6)


def test_gap_l2_and_l1():
    assert gap_from_p_lower(0.5, "l2") == 0.0
    assert gap_from_p_lower(norm.cdf(1.25), "l2") == pytest.approx(1.25, rel=1e-12)
    assert gap_from_p_lower(0.75, "l1") == pytest.approx(0.5)
    assert gap_from_p_lower(1.0, "l1") == 1.0


def test_top_two_p_value():
    assert top_two_p_value(50, 50) == 1.0
    assert top_two_p_value(100, 0) == pytest.approx(2 * 0.5**100)
    assert top_two_p_value(0, 0) == 1.0
    assert math.isclose(top_two_p_value(60, 40), 0.056887, rel_tol=1e-4)


@pytest.mark.parametrize("n", [10, 1000, 100_000])
@pytest.mark.parametrize("alpha", [1e-3, 1e-6, 1e-9, 1e-12])
def test_clopper_pearson_bounds_satisfy_their_binomial_inequalities(n, alpha):
    """At the edges (k = 0, 1, n - 1, n) and alpha down to 1e-12: ``P(Bin(n, p_lo) >= k) <=
    alpha`` and it exceeds alpha just above ``p_lo``; the upper bound ``1 - lower(n - k)`` (the
    mirror the confidence sequences use) likewise with ``P(Bin(n, p_hi) <= k)``, up to the
    rounding of ``1 - lower`` to a double."""
    slack = 1 + 1e-9
    for k in (0, 1, n - 1, n):
        p_lo = clopper_pearson_lower(k, n, alpha)
        if k == 0:
            assert p_lo == 0.0
        else:
            assert binom.sf(k - 1, n, p_lo) <= alpha * slack
            above = p_lo + max(1e-6 * p_lo, 1e-300)
            assert binom.sf(k - 1, n, above) > alpha
        p_hi = 1.0 - clopper_pearson_lower(n - k, n, alpha)
        if k == n:
            assert p_hi == 1.0
        else:
            # 1 - L is rounded to a double near 1: allow the cdf's change over one ulp of 1
            rounding = n * binom.pmf(k, n - 1, p_hi) * 2.0**-52
            assert binom.cdf(k, n, p_hi) <= alpha * slack + rounding
            below = p_hi - max(1e-6 * (1.0 - p_hi), 2.0**-50)
            assert binom.cdf(k, n, below) > alpha


@pytest.mark.parametrize("n_a,n", [(0, 10), (3, 10), (9, 10), (10, 10), (517, 1000)])
def test_clopper_pearson_upper_mirrors_the_lower_bound(n_a: int, n: int) -> None:
    """The upper bound on p is one minus the lower bound on 1 - p (the same beta quantiles)."""
    for alpha in (0.001, 0.025, 0.05):
        upper = clopper_pearson_upper(n_a, n, alpha)
        assert upper == pytest.approx(1.0 - clopper_pearson_lower(n - n_a, n, alpha), abs=1e-12)
        assert clopper_pearson_lower(n_a, n, alpha) <= n_a / n <= upper
