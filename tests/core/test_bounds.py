import math

import pytest
from scipy.stats import binom, norm

from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower, top_two_p_value


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
