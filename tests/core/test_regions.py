"""Intersection tests of certified regions against brute force in 2-D and 3-D.

Soundness is the property that matters: a test may say "intersect" for disjoint regions that
touch within its margin, but never "disjoint" for regions with a common point. Ground truth
comes from independent computations: sampled common points (witnesses), a constrained
optimization (l2: minimize one ellipsoid's quadratic form over the other) and linear programs
(l1: two weighted l1 balls intersect iff a small LP is feasible, and another LP gives the scale
at which they touch), and, near touching, the l1 criterion evaluated pair by pair at every kink.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize

from ancer_cli.core.regions import (
    MARGIN,
    largest_disjoint_gap,
    prefilter_disjoint,
    proven_disjoint,
    regions_intersect,
    weighted_distance,
)

F64 = torch.float64


def as_region(
    center: np.ndarray, axes: np.ndarray, gap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and theta of the region with the given semi-axes (``theta = axes / gap``)."""
    theta = axes / gap if gap > 0 else axes
    return torch.tensor(center, dtype=F64), torch.tensor(theta, dtype=F64)


def intersects(
    a: np.ndarray,
    axes_a: np.ndarray,
    gap_a: float,
    b: np.ndarray,
    axes_b: np.ndarray,
    gap_b: float,
    norm: str,
) -> bool:
    center_a, theta_a = as_region(a, axes_a, gap_a)
    center_b, theta_b = as_region(b, axes_b, gap_b)
    verdict = regions_intersect(
        center_a, theta_a, gap_a, center_b[None], theta_b[None], [gap_b], norm
    )
    assert verdict.shape == (1,) and verdict.dtype == torch.bool
    return bool(verdict[0])


def sampled_witness(a, axes_a, b, axes_b, p: int, rng: np.random.Generator, n: int = 4000) -> bool:
    """A sampled common point: points of the boundary and interior of each region (and its
    vertices for l1) tested for membership in the other."""

    def points(center, axes):
        dim = center.size
        if p == 2:
            direction = rng.normal(size=(n, dim))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        else:
            direction = rng.laplace(size=(n, dim))
            direction /= np.abs(direction).sum(axis=1, keepdims=True)
            direction = np.vstack([direction, np.eye(dim), -np.eye(dim)])
        scale = np.concatenate([np.ones(len(direction) - n // 4), rng.uniform(size=n // 4)])
        return np.vstack([center, center + direction * scale[:, None] * axes])

    def inside(z, center, axes):
        return np.linalg.norm((z - center) / axes, ord=p, axis=1) <= 1.0

    return bool(
        inside(points(a, axes_a), b, axes_b).any() or inside(points(b, axes_b), a, axes_a).any()
    )


def l2_overlap_value(a, axes_a, b, axes_b) -> float:
    """``min ||(z - b) / B||^2`` over ``z`` in the ellipsoid ``(a, A)``: ``<= 1`` iff they meet.

    Solved in the coordinates ``z = a + A w``, ``||w|| <= 1``, by SLSQP from several starts."""

    def objective(w):
        return float(np.sum(((a + axes_a * w - b) / axes_b) ** 2))

    best = math.inf
    starts = [np.zeros_like(a), np.clip((b - a) / axes_a, -1, 1)]
    for start in starts:
        start = start / max(1.0, float(np.linalg.norm(start)))
        result = minimize(
            objective,
            start,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda w: 1.0 - float(w @ w)}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        w = result.x / max(1.0, float(np.linalg.norm(result.x)))  # keep the point feasible
        best = min(best, objective(w))
    return best


def l1_overlap(a, axes_a, b, axes_b) -> bool:
    """Feasibility LP: ``z``, ``s >= |z - a|``, ``t >= |z - b|``, ``sum s/A <= 1``,
    ``sum t/B <= 1``."""
    dim = a.size
    eye, zero = np.eye(dim), np.zeros((dim, dim))
    # variables [z, s, t]
    rows = [
        np.hstack([eye, -eye, zero]),  # z - a <= s
        np.hstack([-eye, -eye, zero]),  # a - z <= s
        np.hstack([eye, zero, -eye]),  # z - b <= t
        np.hstack([-eye, zero, -eye]),  # b - z <= t
        np.hstack([np.zeros((1, dim)), (1 / axes_a)[None], np.zeros((1, dim))]),
        np.hstack([np.zeros((1, 2 * dim)), (1 / axes_b)[None]]),
    ]
    rhs = np.concatenate([a, -a, b, -b, [1.0], [1.0]])
    result = linprog(
        np.zeros(3 * dim), A_ub=np.vstack(rows), b_ub=rhs, bounds=[(None, None)] * (3 * dim)
    )
    assert result.status in (0, 2)
    return result.status == 0


def l1_touching_scale(a, axes_a, b, axes_b) -> float:
    """The smallest ``t`` at which the regions, both scaled by ``t`` about their centres, share a
    point: an LP in ``[z, s, w, t]``, ``s >= |z - a|``, ``w >= |z - b|``, ``sum s / A <= t``,
    ``sum w / B <= t``, minimizing ``t``. The regions intersect iff ``t <= 1``; by the
    separating-hyperplane argument of the l1 test, ``t`` is ``max over lambda of h(lambda)``."""
    dim = a.size
    eye, zero, column = np.eye(dim), np.zeros((dim, dim)), np.zeros((dim, 1))
    # variables [z, s, w, t]
    rows = [
        np.hstack([eye, -eye, zero, column]),
        np.hstack([-eye, -eye, zero, column]),
        np.hstack([eye, zero, -eye, column]),
        np.hstack([-eye, zero, -eye, column]),
        np.hstack([np.zeros(dim), 1 / axes_a, np.zeros(dim), [-1.0]])[None],
        np.hstack([np.zeros(2 * dim), 1 / axes_b, [-1.0]])[None],
    ]
    rhs = np.concatenate([a, -a, b, -b, [0.0, 0.0]])
    cost = np.zeros(3 * dim + 1)
    cost[-1] = 1.0
    result = linprog(
        cost,
        A_ub=np.vstack(rows),
        b_ub=rhs,
        bounds=[(None, None)] * dim + [(0, None)] * (2 * dim + 1),
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    assert result.status == 0
    return float(result.fun)


def l1_kink_maximum(d, axes_a, axes_b) -> float:
    """``max over lambda of sum_i |d_i| min(lambda / A_i, (1 - lambda) / B_i)``, evaluated
    directly at every kink ``lambda_k = A_k / (A_k + B_k)`` (``O(D^2)``, no sorting, no prefix
    sums): there the sum is ``sum_i |d_i| min(A_k / A_i, B_k / B_i) / (A_k + B_k)``."""
    branches = np.minimum(axes_a[:, None] / axes_a[None, :], axes_b[:, None] / axes_b[None, :])
    return float(((np.abs(d)[None, :] * branches).sum(axis=1) / (axes_a + axes_b)).max())


def l1_disjoint(a, axes_a, b, axes_b) -> bool:
    """:func:`proven_disjoint` alone (no pre-filter) for regions of gap 1."""
    center_a, theta_a = as_region(a, axes_a, 1.0)
    center_b, theta_b = as_region(b, axes_b, 1.0)
    verdict = proven_disjoint(center_a, theta_a, 1.0, center_b[None], theta_b[None], [1.0], "l1")
    return bool(verdict[0])


def random_pair(rng: np.random.Generator, dim: int, kind: str):
    """Centres and semi-axes of two regions of a given flavour."""
    a = rng.uniform(-2, 2, dim)
    low = 1e-3 if kind == "elongated" else 0.05
    high = 10.0 if kind == "elongated" else 3.0
    axes_a = np.exp(rng.uniform(math.log(low), math.log(high), dim))
    axes_b = np.exp(rng.uniform(math.log(low), math.log(high), dim))
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    if kind == "inside":  # b's centre inside a, b much smaller
        return a, axes_a, a + 0.8 * axes_a * u, axes_b * 0.01
    return a, axes_a, rng.uniform(-2, 2, dim), axes_b


def touching_offset(a, axes_a, direction, axes_b) -> float:
    """The offset ``s`` at which ``(a + s direction, B)`` first touches ``(a, A)`` (bisection on
    the optimization ground truth)."""
    low, high = 0.0, float(np.sum(axes_a) + np.sum(axes_b)) * 2
    for _ in range(40):
        middle = 0.5 * (low + high)
        if l2_overlap_value(a, axes_a, a + middle * direction, axes_b) <= 1:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


@pytest.mark.parametrize("dim", [2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "kind", ["plain", *(pytest.param(k, marks=pytest.mark.slow) for k in ("elongated", "inside"))]
)
def test_l2_exact_test_against_brute_force(dim, kind):
    rng = np.random.default_rng(100 * dim + len(kind))
    verdicts = []
    for _ in range(120):
        a, axes_a, b, axes_b = random_pair(rng, dim, kind)
        gap_a, gap_b = rng.uniform(0.2, 3.0, 2)
        verdict = intersects(a, axes_a, gap_a, b, axes_b, gap_b, "l2")
        verdicts.append(verdict)
        value = l2_overlap_value(a, axes_a, b, axes_b)
        if sampled_witness(a, axes_a, b, axes_b, 2, rng):
            assert verdict, "a sampled common point, yet 'disjoint'"
        if not verdict:
            # no common point found by a fine optimization either
            assert value > 1 - 1e-7
        if value < 1 - 1e-6:
            assert verdict
        if value > 1 + 1e-3:
            assert not verdict, (
                "the l2 test is exact: clearly disjoint ellipsoids must be separated"
            )
    if kind == "inside":
        assert all(verdicts)
    else:
        assert any(verdicts) and not all(verdicts)


@pytest.mark.parametrize("dim", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_l2_near_touching_along_an_axis(dim):
    # axis-aligned ellipsoids displaced along an axis first touch on that axis: at |d_1| = A_1 + B_1
    rng = np.random.default_rng(dim)
    for _ in range(100):
        axes_a = np.exp(rng.uniform(math.log(1e-3), math.log(10), dim))
        axes_b = np.exp(rng.uniform(math.log(1e-3), math.log(10), dim))
        a = rng.uniform(-1, 1, dim)
        touching = axes_a[0] + axes_b[0]
        direction = np.eye(dim)[0] * rng.choice([-1, 1])
        gap_a, gap_b = rng.uniform(0.2, 3.0, 2)
        for factor, expected in [(1 - 1e-7, True), (1.0, True), (1 + 1e-6, False), (1.5, False)]:
            b = a + factor * touching * direction
            assert intersects(a, axes_a, gap_a, b, axes_b, gap_b, "l2") is expected, factor


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 3])
def test_l2_near_touching_in_random_directions(dim):
    # b slides toward a along a random direction; the touching offset comes from the optimization
    rng = np.random.default_rng(30 + dim)
    for _ in range(8):
        a, axes_a, _, axes_b = random_pair(
            rng, dim, "elongated" if rng.uniform() < 0.5 else "plain"
        )
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        touching = touching_offset(a, axes_a, direction, axes_b)
        gap_a, gap_b = rng.uniform(0.2, 3.0, 2)
        for factor in [1 - 1e-4, 1 - 1e-5, 1 - 1e-7, 1 + 1e-7, 1 + 1e-5, 1 + 1e-4]:
            b = a + factor * touching * direction
            verdict = intersects(a, axes_a, gap_a, b, axes_b, gap_b, "l2")
            if sampled_witness(a, axes_a, b, axes_b, 2, rng):
                assert verdict
            if not verdict:
                assert l2_overlap_value(a, axes_a, b, axes_b) > 1 - 1e-9
            if abs(factor - 1) >= 1e-5:  # far outside the margin: the exact test decides right
                assert verdict is (factor < 1), factor


@pytest.mark.parametrize("dim", [2, 1000])
@pytest.mark.parametrize("ratio", [1e-9, 1e-5, 1e5, 1e9])
def test_l2_extreme_size_ratios(dim, ratio):
    # a tiny ellipsoid next to a huge one (the minimizer of K sits near t = 0 or t = 1)
    rng = np.random.default_rng(dim)
    for _ in range(5):
        axes_a = np.exp(rng.uniform(-2, 2, dim))
        axes_b = np.exp(rng.uniform(-2, 2, dim)) * ratio
        a = rng.uniform(-1, 1, dim)
        touching = axes_a[0] + axes_b[0]
        for factor, expected in [(1 - 1e-7, True), (1 + 1e-5, False)]:
            b = a + factor * touching * np.eye(dim)[0]
            assert intersects(a, axes_a, 1.0, b, axes_b, 1.0, "l2") is expected, factor


def grid_min_k(d, axes_a, axes_b) -> float:
    """``min K(t)`` over a dense grid, linear in the middle and logarithmic near both ends."""
    ends = np.logspace(-14, math.log10(0.5), 3000)
    t = np.concatenate([ends, np.linspace(0.0, 1.0, 4001)[1:-1], 1.0 - ends])[:, None]
    terms = d**2 * t * (1 - t) / ((1 - t) * axes_a**2 + t * axes_b**2)
    return float((1.0 - terms.sum(axis=1)).min())


@pytest.mark.parametrize("dim", [20, pytest.param(500, marks=pytest.mark.slow)])
def test_l2_exact_test_against_a_dense_grid_in_high_dimension(dim):
    rng = np.random.default_rng(dim)
    decided = 0
    for _ in range(30):
        axes_a = np.exp(rng.uniform(-3, 1, dim))
        axes_b = np.exp(rng.uniform(-3, 1, dim)) * 10 ** rng.uniform(-3, 3)
        d = rng.normal(size=dim)
        # min K is 1 - s^2 max_t Q(t) for the offset s d: put it near 0, on either side
        scale = 1.0 / math.sqrt(1.0 - grid_min_k(d, axes_a, axes_b))
        d = scale * d * (1 + rng.uniform(-1e-3, 1e-3))
        value = grid_min_k(d, axes_a, axes_b)
        verdict = intersects(np.zeros(dim), axes_a, 1.0, d, axes_b, 1.0, "l2")
        if value < -1e-7:
            assert not verdict
            decided += 1
        if not verdict:
            assert value < 1e-7
    assert decided > 5


def test_l2_concentric_and_nested():
    a = np.array([0.3, -0.2, 1.0])
    axes = np.array([1.0, 1e-3, 5.0])
    assert intersects(a, axes, 1.0, a, axes * 10, 2.0, "l2")
    assert intersects(a, axes * 10, 1.0, a + 1e-4, axes, 1.0, "l2")


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_zero_gap_regions_are_points(norm):
    p = 2 if norm == "l2" else 1
    theta = torch.tensor([0.5, 2.0], dtype=F64)
    center = torch.zeros(2, dtype=F64)
    gap = 1.5
    rng = np.random.default_rng(7)
    for _ in range(200):
        point = torch.tensor(rng.uniform(-4, 4, 2), dtype=F64)
        distance = float(torch.linalg.vector_norm(point / theta, ord=p))
        for point_theta in [1.0, theta]:
            verdict = regions_intersect(
                point, point_theta, 0.0, center[None], theta[None], [gap], norm
            )
            assert bool(verdict[0]) == (distance <= gap), distance
        # the other way round: a point stored, a region queried
        verdict = regions_intersect(center, theta, gap, point[None], theta[None], [0.0], norm)
        assert bool(verdict[0]) == (distance <= gap)
    # two points meet iff equal; no NaN anywhere
    same = regions_intersect(center, theta, 0.0, center[None], theta[None], [0.0], norm)
    other = regions_intersect(center, theta, 0.0, center[None] + 1e-12, theta[None], [0.0], norm)
    assert bool(same[0]) and not bool(other[0])
    # exactly on the boundary: inside
    boundary = torch.tensor([0.0, 3.0], dtype=F64)
    assert bool(regions_intersect(boundary, 1.0, 0.0, center[None], theta[None], [gap], norm)[0])


@pytest.mark.parametrize("dim", [2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "kind", ["plain", *(pytest.param(k, marks=pytest.mark.slow) for k in ("elongated", "inside"))]
)
def test_l1_exact_test_against_brute_force(dim, kind):
    rng = np.random.default_rng(10 * dim + len(kind))
    verdicts = []
    for _ in range(150):
        a, axes_a, b, axes_b = random_pair(rng, dim, kind)
        gap_a, gap_b = rng.uniform(0.2, 3.0, 2)
        verdict = intersects(a, axes_a, gap_a, b, axes_b, gap_b, "l1")
        verdicts.append(verdict)
        scale = l1_touching_scale(a, axes_a, b, axes_b)
        # the LP touches where the separating-hyperplane criterion says: at scale max h
        assert scale == pytest.approx(l1_kink_maximum(b - a, axes_a, axes_b), rel=1e-7)
        if sampled_witness(a, axes_a, b, axes_b, 1, rng):
            assert verdict, "a sampled common point, yet 'disjoint'"
        if l1_overlap(a, axes_a, b, axes_b):
            assert verdict, "the LP finds a common point, yet 'disjoint'"
        if not verdict:
            assert scale > 1 - 1e-7
        if scale > 1 + 1e-6:
            assert not verdict, "the l1 test is exact: clearly disjoint regions must be separated"
    # "inside" puts b's centre at l2 (not l1) weighted distance 0.8 from a's: mostly inside
    assert any(verdicts) and (kind == "inside" or not all(verdicts))


@pytest.mark.parametrize("dim", [2, 3])
def test_l1_near_touching_along_an_axis(dim):
    # cross-polytopes displaced along an axis first touch at vertices: at |d_1| = A_1 + B_1
    rng = np.random.default_rng(20 + dim)
    for _ in range(100):
        axes_a = np.exp(rng.uniform(math.log(1e-3), math.log(10), dim))
        axes_b = np.exp(rng.uniform(math.log(1e-3), math.log(10), dim))
        a = rng.uniform(-1, 1, dim)
        touching = axes_a[0] + axes_b[0]
        direction = np.eye(dim)[0] * rng.choice([-1, 1])
        gap_a, gap_b = rng.uniform(0.2, 3.0, 2)
        for factor, expected in [(1 - 1e-7, True), (1.0, True), (1 + 1e-6, False), (1.5, False)]:
            b = a + factor * touching * direction
            assert intersects(a, axes_a, gap_a, b, axes_b, gap_b, "l1") is expected, factor


@pytest.mark.parametrize("dim", [2, 3])
def test_l1_near_touching_in_random_directions(dim):
    # b slides toward a along a random direction; max h is linear in the offset, so the regions
    # touch at the offset 1 / max h (from the kink-by-kink evaluation), which the LP confirms
    rng = np.random.default_rng(40 + dim)
    for _ in range(30):
        a, axes_a, _, axes_b = random_pair(
            rng, dim, "elongated" if rng.uniform() < 0.5 else "plain"
        )
        direction = rng.normal(size=dim)
        touching = 1.0 / l1_kink_maximum(direction, axes_a, axes_b)
        assert l1_touching_scale(a, axes_a, a + touching * direction, axes_b) == pytest.approx(
            1.0, rel=1e-7
        )
        gap_a, gap_b = rng.uniform(0.2, 3.0, 2)
        for factor in [1 - 1e-4, 1 - 1e-6, 1 - 1e-7, 1.0, 1 + 1e-7, 1 + 1e-6, 1 + 1e-4]:
            b = a + factor * touching * direction
            verdict = intersects(a, axes_a, gap_a, b, axes_b, gap_b, "l1")
            if factor <= 1:
                assert verdict, factor  # touching or overlapping: never "disjoint"
            else:  # past touching by far more than the margin: the exact test separates
                assert not verdict, factor
            if abs(factor - 1) >= 1e-4:
                assert l1_overlap(a, axes_a, b, axes_b) is (factor < 1)


@pytest.mark.parametrize("dim", [2, 1000])
@pytest.mark.parametrize("ratio", [1e-9, 1e-5, 1e5, 1e9])
def test_l1_extreme_size_ratios(dim, ratio):
    # a tiny cross-polytope next to a huge one (the maximizing kink sits near 0 or 1)
    rng = np.random.default_rng(dim)
    for _ in range(5):
        axes_a = np.exp(rng.uniform(-2, 2, dim))
        axes_b = np.exp(rng.uniform(-2, 2, dim)) * ratio
        a = rng.uniform(-1, 1, dim)
        touching = axes_a[0] + axes_b[0]
        for factor, expected in [(1 - 1e-7, True), (1 + 1e-6, False)]:
            b = a + factor * touching * np.eye(dim)[0]
            assert intersects(a, axes_a, 1.0, b, axes_b, 1.0, "l1") is expected, factor


@pytest.mark.parametrize("dim", [3, 40])
def test_l1_kinks_crowded_against_the_ends(dim):
    # per-coordinate size ratios B_i / A_i from 1e-20 to 1e20: many kinks lambda_i round to
    # exactly 0 or 1 in float64, yet the ratios that order them stay accurate, so the test
    # still decides within a relative 1e-7 of touching
    rng = np.random.default_rng(60 + dim)
    for _ in range(20):
        axes_a = np.exp(rng.uniform(-2, 2, dim))
        axes_b = axes_a * 10 ** rng.uniform(-20, 20, dim)
        direction = rng.normal(size=dim)
        touching = 1.0 / l1_kink_maximum(direction, axes_a, axes_b)
        for factor, expected in [(1 - 1e-7, False), (1 + 1e-7, True)]:
            d = factor * touching * direction
            assert l1_disjoint(np.zeros(dim), axes_a, d, axes_b) is expected, factor


@pytest.mark.parametrize("dim", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_l1_exact_test_separates_every_pair_the_sufficient_test_did(dim):
    # the earlier sufficient test sum |d| / max(A, B) > 2 is h(1/2) > 1: every pair it proved
    # disjoint stays proven; and far pairs, just past touching, are separated too
    rng = np.random.default_rng(dim)
    for _ in range(100):
        a, axes_a, _, axes_b = random_pair(rng, dim, "plain")
        direction = rng.normal(size=dim)
        spread = np.sum(np.abs(direction) / np.maximum(axes_a, axes_b))
        b = a + direction * 2.01 / spread
        assert l1_disjoint(a, axes_a, b, axes_b)
        assert not intersects(a, axes_a, 1.0, b, axes_b, 1.0, "l1")
        assert not l1_overlap(a, axes_a, b, axes_b)
        touching = 1.0 / l1_kink_maximum(direction, axes_a, axes_b)
        assert touching <= 2.0 / spread * (1 + 1e-12)  # never later than the old test
        assert l1_disjoint(a, axes_a, a + direction * 1.01 * touching, axes_b)
        assert not l1_overlap(a, axes_a, a + direction * 1.01 * touching, axes_b)
        assert not l1_disjoint(a, axes_a, a + direction * 0.99 * touching, axes_b)
        assert l1_overlap(a, axes_a, a + direction * 0.99 * touching, axes_b)


def test_l1_exact_test_for_isotropic_regions():
    # isotropic regions are l1 balls of radii r = theta g: they touch at ||d||_1 = r_a + r_b,
    # whatever the thetas and gaps (the sufficient test was exact only for r_a = r_b)
    rng = np.random.default_rng(3)
    for dim in [2, 3, 50]:
        for _ in range(20):
            theta_a, theta_b = rng.uniform(0.1, 2.0, 2)
            gap_a, gap_b = rng.uniform(0.1, 3.0, 2)
            for theta_b_, gap_b_ in [(theta_a, gap_a), (theta_b, gap_b)]:
                direction = rng.normal(size=dim)
                direction /= np.abs(direction).sum()
                touching = theta_a * gap_a + theta_b_ * gap_b_
                for factor, expected in [(1 - 1e-7, True), (1 + 1e-6, False)]:
                    stored = torch.tensor(direction * factor * touching, dtype=F64)[None]
                    arguments = (torch.zeros(dim, dtype=F64), float(theta_a), gap_a, stored)
                    thetas = torch.tensor([[theta_b_]], dtype=F64)
                    disjoint = proven_disjoint(*arguments, thetas, [gap_b_], "l1")
                    assert bool(disjoint[0]) is not expected
                    meets = regions_intersect(*arguments, thetas, [gap_b_], "l1")
                    assert bool(meets[0]) is expected


def test_l1_exact_test_agrees_with_the_lp_in_moderate_dimension():
    dim = 50
    rng = np.random.default_rng(50)
    for _ in range(6):
        a, axes_a, _, axes_b = random_pair(rng, dim, "elongated")
        direction = rng.normal(size=dim)
        touching = l1_touching_scale(np.zeros(dim), axes_a, direction, axes_b)
        assert touching == pytest.approx(l1_kink_maximum(direction, axes_a, axes_b), rel=1e-7)
        for factor in [1 - 1e-4, 1 + 1e-4]:
            # the regions scaled by t touch where the offset scaled by t does
            b = a + direction * factor / touching
            assert intersects(a, axes_a, 1.0, b, axes_b, 1.0, "l1") is (factor < 1)
            assert l1_overlap(a, axes_a, b, axes_b) is (factor < 1)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(1, 6),
    norm=st.sampled_from(["l2", "l1"]),
    spread=st.floats(0.01, 10.0),
)
def test_prefilter_never_contradicts_the_truth(seed, dim, norm, spread):
    rng = np.random.default_rng(seed)
    m = 8
    center = torch.tensor(rng.normal(size=dim), dtype=F64)
    theta = torch.tensor(np.exp(rng.normal(size=dim)), dtype=F64)
    gap = float(rng.uniform(0, 3))
    stored = center + torch.tensor(rng.normal(size=(m, dim)) * spread, dtype=F64)
    thetas = torch.tensor(np.exp(rng.normal(size=(m, dim))), dtype=F64)
    gaps = torch.tensor(rng.uniform(0, 3, m), dtype=F64)
    gaps[0] = 0.0
    early = prefilter_disjoint(center, theta, gap, stored, thetas, gaps, norm)
    verdict = regions_intersect(center, theta, gap, stored, thetas, gaps, norm)
    assert not (early & verdict).any()
    exact = proven_disjoint(center, theta, gap, stored, thetas, gaps, norm)
    for j in np.flatnonzero(early.numpy()):
        assert exact[j]  # the pair tests and the point tests are exact
        if norm == "l1" and gap > 0 and gaps[j] > 0:
            axes_a, axes_b = theta.numpy() * gap, thetas[j].numpy() * float(gaps[j])
            assert not l1_overlap(center.numpy(), axes_a, stored[j].numpy(), axes_b)


def test_weighted_distance_batches_and_broadcasts():
    x = torch.tensor([1.0, 2.0, 3.0])
    centers = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]])
    thetas = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    assert weighted_distance(x, centers, thetas, "l2").tolist() == pytest.approx(
        [math.sqrt(3), 2.0]
    )
    assert weighted_distance(x, centers, thetas, "l1").tolist() == pytest.approx([3.0, 2.0])
    iso = weighted_distance(x, centers, torch.tensor([[2.0], [0.5]]), "l2")
    assert iso.dtype == F64 and iso.tolist() == pytest.approx([math.sqrt(14) / 2, 2.0])
    assert weighted_distance(
        x.reshape(1, 3), centers, torch.tensor([2.0, 0.5]), "l1"
    ).tolist() == pytest.approx([3.0, 2.0])


@pytest.mark.parametrize("dim", [2, 5, 3072])
def test_largest_disjoint_gap_isotropic_l2_balls(dim):
    rng = np.random.default_rng(dim)
    for _ in range(10):
        theta_a, theta_b, gap_b = (
            rng.uniform(0.1, 1.0),
            rng.uniform(0.1, 1.0),
            rng.uniform(0.1, 2.0),
        )
        distance = theta_b * gap_b + rng.uniform(0.01, 3.0)
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        stored = torch.tensor(direction * distance, dtype=F64)[None]
        touching = distance / theta_a - gap_b * theta_b / theta_a
        gap = touching * 1.5
        found = largest_disjoint_gap(
            torch.zeros(dim),
            theta_a,
            gap,
            stored,
            torch.tensor([[theta_b]]),
            [gap_b],
            "l2",
            tol=1e-6,
        )
        assert found <= touching + 1e-12
        assert found >= touching - 1e-6 * gap - 1e-12
        assert not bool(
            regions_intersect(
                torch.zeros(dim), theta_a, found, stored, torch.tensor([[theta_b]]), [gap_b], "l2"
            )[0]
        )


def test_largest_disjoint_gap_anisotropic_axis_displacement():
    # displaced along axis 0, ellipsoids touch at |d_0| = theta_a0 g' + theta_b0 g_b
    rng = np.random.default_rng(11)
    for dim in [2, 3, 100, 3072]:
        for _ in range(10):
            theta_a = torch.tensor(np.exp(rng.uniform(-3, 1, dim)))
            theta_b = torch.tensor(np.exp(rng.uniform(-3, 1, dim)))
            gap_b = rng.uniform(0.1, 2.0)
            d0 = float(theta_b[0]) * gap_b + rng.uniform(0.01, 2.0)
            stored = torch.zeros(1, dim, dtype=F64)
            stored[0, 0] = d0
            touching = (d0 - float(theta_b[0]) * gap_b) / float(theta_a[0])
            found = largest_disjoint_gap(
                torch.zeros(dim), theta_a, 2 * touching, stored, theta_b[None], [gap_b], "l2"
            )
            assert touching - 2e-6 * touching - 1e-12 <= found <= touching + 1e-12


def test_largest_disjoint_gap_isotropic_l1_balls():
    # isotropic l1 regions are l1 balls: offset delta (in units of theta), they touch at
    # g' = delta - g_b, which the pre-filter and the exact test both find, whatever g_b.
    rng = np.random.default_rng(5)
    for dim in [2, 3, 40]:
        for _ in range(10):
            theta, delta = rng.uniform(0.1, 1.0), rng.uniform(0.5, 4.0)
            direction = rng.normal(size=dim)
            direction /= np.abs(direction).sum()
            stored = torch.tensor(direction * delta * theta, dtype=F64)[None]
            for gap_b in [delta / 2, rng.uniform(0.05, delta / 2), rng.uniform(delta / 2, delta)]:
                touching = delta - gap_b
                found = largest_disjoint_gap(
                    torch.zeros(dim, dtype=F64),
                    theta,
                    delta,
                    stored,
                    torch.tensor([[theta]]),
                    [gap_b],
                    "l1",
                )
                assert touching - 1e-6 * delta - 1e-12 <= found <= touching + 1e-12


def test_largest_disjoint_gap_l1_keeps_what_the_sufficient_test_shrank():
    # A = g' (1, 0.5), B = 2 (0.25, 0.5) = (0.5, 1), d = (3, 2). The ratios A_i / B_i are
    # (2 g', g' / 2); at the kink of axis 1, h = (|d_1| + |d_0| min(A_1 / A_0, B_1 / B_0)) /
    # (A_1 + B_1) = 3.5 / (g' / 2 + 1), at that of axis 0, h = 4 / (g' + 0.5): max h > 1 iff
    # g' < 5. The sufficient test, (3 / g' + 2 / (g' / 2)) / 2 = 3.5 / g' > 1, proved only
    # g' < 3.5, and the l1-ball pre-filter, 5 > g' + 1, only g' < 4.
    center, theta = torch.zeros(2, dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)
    stored = torch.tensor([[3.0, 2.0]], dtype=F64)
    thetas, gaps = torch.tensor([[0.25, 0.5]], dtype=F64), [2.0]
    for gap, disjoint in [(4.5, True), (5 * (1 - 1e-6), True), (5 * (1 + 1e-6), False)]:
        assert not prefilter_disjoint(center, theta, gap, stored, thetas, gaps, "l1")[0]
        assert bool(proven_disjoint(center, theta, gap, stored, thetas, gaps, "l1")[0]) is disjoint
    gap = 10.0
    found = largest_disjoint_gap(center, theta, gap, stored, thetas, gaps, "l1", tol=1e-6)
    assert 5.0 - 1e-6 * gap <= found <= 5.0


def test_largest_disjoint_gap_l1_anisotropic_axis_displacement():
    # displaced along axis 0, cross-polytopes touch at |d_0| = theta_a0 g' + theta_b0 g_b
    rng = np.random.default_rng(12)
    for dim in [2, 3, 100, 3072]:
        for _ in range(10):
            theta_a = torch.tensor(np.exp(rng.uniform(-3, 1, dim)))
            theta_b = torch.tensor(np.exp(rng.uniform(-3, 1, dim)))
            gap_b = rng.uniform(0.1, 2.0)
            d0 = float(theta_b[0]) * gap_b + rng.uniform(0.01, 2.0)
            stored = torch.zeros(1, dim, dtype=F64)
            stored[0, 0] = d0
            touching = (d0 - float(theta_b[0]) * gap_b) / float(theta_a[0])
            found = largest_disjoint_gap(
                torch.zeros(dim), theta_a, 2 * touching, stored, theta_b[None], [gap_b], "l1"
            )
            assert touching - 2e-6 * touching - 1e-12 <= found <= touching + 1e-12


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_largest_disjoint_gap_edge_cases(norm):
    theta = torch.tensor([0.5, 1.0, 2.0])
    stored = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.2]])
    thetas = torch.ones(2, 1)
    # already disjoint: gap returned unchanged (bit for bit)
    assert (
        largest_disjoint_gap(
            torch.zeros(3), theta, 0.123456789, stored[:1], thetas[:1], [1.0], norm
        )
        == 0.123456789
    )
    # centre inside a stored region: 0.0
    assert largest_disjoint_gap(torch.zeros(3), theta, 1.0, stored, thetas, [1.0, 1.0], norm) == 0.0
    # nothing stored
    assert largest_disjoint_gap(torch.zeros(3), theta, 1.0, stored[:0], thetas[:0], [], norm) == 1.0
    # zero gap stays zero, never NaN
    assert largest_disjoint_gap(torch.zeros(3), theta, 0.0, stored, thetas, [1.0, 0.1], norm) == 0.0


def test_margin_errs_toward_intersect():
    # two unit balls at distance 2 (1 + MARGIN / 10): disjoint in exact arithmetic, but within
    # the margin, so the test says "intersect" -- the safe direction
    stored = torch.tensor([[2.0 * (1 + MARGIN / 10), 0.0]], dtype=F64)
    assert bool(
        regions_intersect(
            torch.zeros(2, dtype=F64), 1.0, 1.0, stored, torch.ones(1, 1), [1.0], "l2"
        )[0]
    )
