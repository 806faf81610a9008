"""Confidence bounds and gaps (Cohen et al. 2019, CERTIFY and PREDICT)."""

from __future__ import annotations

from scipy.stats import beta, binomtest
from scipy.stats import norm as normal

from ancer_cli.core.choices import Norm


def clopper_pearson_lower(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    ``Beta(alpha; n_a, n - n_a + 1)`` quantile; 0 when ``n_a == 0``.
    """
    if n_a <= 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def clopper_pearson_upper(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial proportion.

    ``Beta(1 - alpha; n_a + 1, n - n_a)`` quantile; 1 when ``n_a == n``.
    """
    if n_a >= n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, n_a + 1, n - n_a))


def gap_from_p_lower(p_a_lower: float, norm: Norm | str) -> float:
    """The certified gap: ``Phi^-1(pA_low)`` for l2 and ``2 pA_low - 1`` for l1.

    Meaningful only for ``p_a_lower >= 0.5`` (otherwise the smoothed classifier abstains).
    """
    if Norm(norm) is Norm.l2:
        return float(normal.ppf(p_a_lower))
    return 2.0 * p_a_lower - 1.0


def top_two_p_value(n1: int, n2: int) -> float:
    """Two-sided binomial test p-value that the top class beats the runner-up (PREDICT)."""
    if n1 + n2 == 0:
        return 1.0
    return float(binomtest(n1, n1 + n2, 0.5).pvalue)
