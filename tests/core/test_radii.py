"""The l-infinity box inside a certified region, against brute force over its corners.

Every check of membership here is exact: the float64 numbers (box half-width, theta, gap) are
turned into fractions and ``sum_i (r / theta_i)^2 <= g^2`` (l2) or ``sum_i r / theta_i <= g``
(l1) is decided in rational arithmetic, for every corner of the box in 2 and 3 dimensions.
"""

import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ancer_cli.core.radii import linf_half_width, linf_half_width_of_radius


def weighted_norm_exact(corner: tuple[Fraction, ...], theta: list[float], norm: str) -> Fraction:
    """``||corner / theta||_2^2`` (l2) or ``||corner / theta||_1`` (l1), exactly."""
    ratios = [c / Fraction(t) for c, t in zip(corner, theta, strict=True)]
    if norm == "l2":
        return sum((r * r for r in ratios), Fraction(0))
    return sum((abs(r) for r in ratios), Fraction(0))


def box_inside(width: float, theta: list[float], gap: float, norm: str) -> bool:
    """Every corner of ``{|d_i| <= width}`` lies in ``{||d / theta||_p <= gap}`` (exact)."""
    bound = Fraction(gap) ** 2 if norm == "l2" else Fraction(gap)
    half = Fraction(width)
    return all(
        weighted_norm_exact(tuple(s * half for s in signs), theta, norm) <= bound
        for signs in itertools.product((-1, 1), repeat=len(theta))
    )


CASES = [
    # (theta, gap, norm, exact half-width as a formula)
    ([0.5, 0.5], 1.3, "l2", 1.3 * 0.5 / math.sqrt(2)),
    ([0.25, 0.25, 0.25], 0.7, "l2", 0.7 * 0.25 / math.sqrt(3)),
    ([0.1, 0.4], 2.0, "l2", 2.0 / math.sqrt(100 + 6.25)),
    ([0.3, 0.05, 1.7], 0.9, "l2", 0.9 / math.sqrt(1 / 0.09 + 400 + 1 / 2.89)),
    ([0.5, 0.5], 0.6, "l1", 0.6 * 0.5 / 2),
    ([0.1, 0.4], 0.8, "l1", 0.8 / (10 + 2.5)),
    ([0.3, 0.05, 1.7], 0.35, "l1", 0.35 / (1 / 0.3 + 20 + 1 / 1.7)),
]


@pytest.mark.parametrize("theta, gap, norm, expected", CASES)
def test_box_corners_inside_and_a_larger_box_outside(theta, gap, norm, expected):
    width = linf_half_width(torch.tensor(theta, dtype=torch.float64), gap, norm)
    assert width == pytest.approx(expected, rel=1e-12)
    assert box_inside(width, theta, gap, norm)
    assert not box_inside(width * 1.01, theta, gap, norm)


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("dim", [2, 3])
def test_isotropic_theta_uses_the_inputs_dimension(norm, dim):
    theta, gap = 0.37, 1.9
    width = linf_half_width(theta, gap, norm, dim=dim)
    radius = theta * gap
    assert width == pytest.approx(radius / (math.sqrt(dim) if norm == "l2" else dim), rel=1e-12)
    assert box_inside(width, [theta] * dim, gap, norm)
    assert not box_inside(width * 1.01, [theta] * dim, gap, norm)
    # the same region given as a tensor of equal entries, or a one-entry tensor
    assert width == pytest.approx(
        linf_half_width(torch.full((dim,), theta, dtype=torch.float64), gap, norm), rel=1e-12
    )
    assert linf_half_width(torch.tensor(theta, dtype=torch.float64), gap, norm, dim=dim) == width


def test_isotropic_ball_in_many_dimensions_is_radius_over_root_d():
    """CIFAR-10: a ball of radius 0.5 in d = 3072 dimensions holds the box 0.5 / sqrt(3072)."""
    assert linf_half_width(0.25, 2.0, "l2", dim=3072) == pytest.approx(0.5 / math.sqrt(3072))
    assert linf_half_width(0.25, 2.0, "l2", dim=3072) < 0.5 / math.sqrt(3072)


def test_the_dimension_is_required_and_checked():
    with pytest.raises(ValueError, match="dimension"):
        linf_half_width(0.5, 1.0, "l2")
    with pytest.raises(ValueError, match="3 entries"):
        linf_half_width(torch.ones(3), 1.0, "l2", dim=4)
    assert linf_half_width(torch.ones(3), 0.0, "l1") == 0.0


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_from_radius_equals_from_gap(norm):
    theta = torch.tensor([[0.2, 0.3], [0.45, 0.25]])
    gap = 1.234
    radius = float(theta.min()) * gap
    assert linf_half_width_of_radius(theta, radius, norm) == pytest.approx(
        linf_half_width(theta, gap, norm), rel=1e-12
    )
    width = linf_half_width_of_radius(theta, radius, norm)
    assert box_inside(width, theta.flatten().double().tolist(), radius / 0.2, norm)
    assert linf_half_width_of_radius(0.5, 0.5, norm, dim=4) == pytest.approx(
        0.5 / (2 if norm == "l2" else 4)
    )


thetas = st.lists(
    st.floats(min_value=1e-3, max_value=10.0, allow_nan=False), min_size=1, max_size=40
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    theta=thetas, gap=st.floats(min_value=0.0, max_value=5.0), norm=st.sampled_from(["l2", "l1"])
)
def test_random_thetas_box_inside_and_tight(theta, gap, norm):
    """All corners of a box are equally far in the weighted norm: one corner decides, exactly."""
    width = linf_half_width(torch.tensor(theta, dtype=torch.float64), gap, norm, dim=len(theta))
    corner = tuple(Fraction(width) for _ in theta)
    bound = Fraction(gap) ** 2 if norm == "l2" else Fraction(gap)
    assert weighted_norm_exact(corner, theta, norm) <= bound
    if gap > 1e-100:  # (a subnormal gap's box underflows to 0)
        larger = tuple(Fraction(width) * Fraction(1 + 1e-9) for _ in theta)
        assert weighted_norm_exact(larger, theta, norm) > bound
