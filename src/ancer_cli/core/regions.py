"""Certified regions and sound tests of whether two of them intersect.

A certified region is ``R(c, theta, g) = {c + d : ||d / theta||_p <= g}``, the set certified by
smoothing with noise of per-coordinate scale ``theta`` at gap ``g`` (Eiras et al., ANCER, TMLR
2022): for ``p = 2`` an axis-aligned ellipsoid with semi-axes ``theta * g``, for ``p = 1`` a
generalized cross-polytope with half-diagonals ``theta * g``. Centres and thetas are flattened to
vectors of dimension ``D``; an isotropic theta is one number, broadcast over the ``D``
coordinates.

These are the tests of the memory-based certification pass (Alfarra et al., "Data dependent
randomized smoothing", UAI 2022; generalized to anisotropic regions by Eiras et al., ANCER,
TMLR 2022). Both pair tests are exact in real arithmetic (l2: :func:`_l2_witness`, l1:
:func:`_l1_separated`), and every test is *sound* in float64: "disjoint" is said only when
disjointness is proven with a relative margin of :data:`MARGIN` (or :func:`rounding_slack`, when
larger), above the rounding error of the sums involved, so numerical error always errs toward
"intersect" (a smaller certified region, never a wrong one).

Shapes: one region against ``M`` stored regions at once -- ``center (D,)`` (any shape, flattened),
``theta`` a number or a tensor of ``1`` or ``D`` entries, ``stored_centers (M, D)``,
``stored_thetas (M, D)`` or ``(M, 1)`` (or ``(M,)``, isotropic), ``stored_gaps (M,)``. All
computation is in float64 on the stored tensors' device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta

MARGIN = 1e-9
"""Relative margin by which a quantity must pass its threshold before two regions are declared
disjoint (or a point outside a region). The float64 rounding error of the sums behind each
decision is below ``4 (D + 4) eps`` relative (:func:`rounding_slack`; ``3e-10`` for ImageNet's
``D = 150,528``), so a decision taken with this margin holds for the exact real numbers."""

GAP_TOLERANCE = 1e-6
"""Default relative width of the final bisection bracket in :func:`largest_disjoint_gap`."""

_WITNESS_ITERATIONS = 100
"""Cap on the safeguarded Newton iterations of the l2 test (a handful are typical). A pair still
undecided at the cap is reported as intersecting."""

_L1_CHUNK_ELEMENTS = 1 << 21
"""float64 entries (16 MiB) per working array of the l1 test: pairs are tested in chunks of
``_L1_CHUNK_ELEMENTS // D`` rows, which bounds its memory whatever the number of pairs."""


def rounding_slack(dim: int) -> float:
    """A bound (with a safety factor of 2) on the relative float64 rounding error of a sum or
    dot product of ``dim`` terms: ``2 * gamma_dim`` with ``gamma_n = n eps / (1 - n eps)``."""
    return 4.0 * (dim + 4) * torch.finfo(torch.float64).eps


def _ord(norm: Norm | str) -> int:
    return 2 if Norm(norm) is Norm.l2 else 1


def _theta_row(theta: Theta, device: torch.device) -> torch.Tensor:
    """A region's theta as a float64 row ``(1, D)`` or ``(1, 1)`` on ``device``."""
    if isinstance(theta, torch.Tensor):
        return theta.detach().reshape(1, -1).to(device=device, dtype=torch.float64)
    return torch.full((1, 1), float(theta), dtype=torch.float64, device=device)


def _theta_rows(thetas: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Stored thetas as float64 ``(M, D)`` or ``(M, 1)``; a 1-d ``(M,)`` is one number per region."""
    rows = thetas.detach().to(device=device, dtype=torch.float64)
    return rows.reshape(-1, 1) if rows.ndim == 1 else rows


def _gap_vector(gaps: torch.Tensor | Sequence[float], device: torch.device) -> torch.Tensor:
    if isinstance(gaps, torch.Tensor):
        return gaps.detach().reshape(-1).to(device=device, dtype=torch.float64)
    return torch.tensor(list(gaps), dtype=torch.float64, device=device)


def _prepare(
    center: torch.Tensor,
    theta: Theta,
    stored_centers: torch.Tensor,
    stored_thetas: torch.Tensor,
    stored_gaps: torch.Tensor | Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(diff (M, D), theta_a (1, D|1), thetas_b (M, D|1), gaps_b (M,))`` in float64, with
    ``diff = stored_centers - center``."""
    device = stored_centers.device
    centers = stored_centers.detach().to(torch.float64)
    diff = centers.reshape(centers.shape[0], -1) - center.detach().reshape(1, -1).to(
        device=device, dtype=torch.float64
    )
    return (
        diff,
        _theta_row(theta, device),
        _theta_rows(stored_thetas, device),
        _gap_vector(stored_gaps, device),
    )


def _weighted_norm(diff: torch.Tensor, thetas: torch.Tensor, p: int) -> torch.Tensor:
    """``||diff_j / theta_j||_p`` per row: ``(M,)``. Membership and the point tests share this
    one expression so that they agree to the last bit."""
    return torch.linalg.vector_norm(diff / thetas, ord=p, dim=1)


def weighted_distance(
    x: torch.Tensor, centers: torch.Tensor, thetas: torch.Tensor, norm: Norm | str
) -> torch.Tensor:
    """``||(x - c_j) / theta_j||_p`` for ``M`` regions at once.

    Args:
        x: a point, ``(D,)`` or any shape with ``D`` entries.
        centers: ``(M, D)``; thetas: ``(M, D)``, ``(M, 1)`` or ``(M,)``.

    Returns:
        float64 ``(M,)`` on ``centers``' device. ``x`` lies in ``R(c_j, theta_j, g_j)`` iff the
        distance is ``<= g_j``.
    """
    device = centers.device
    diff = centers.detach().to(torch.float64) - x.detach().reshape(1, -1).to(
        device=device, dtype=torch.float64
    )
    return _weighted_norm(diff, _theta_rows(thetas, device), _ord(norm))


def _prefilter(
    diff: torch.Tensor,
    theta_a: torch.Tensor,
    gap_a: float,
    thetas_b: torch.Tensor,
    gaps_b: torch.Tensor,
    p: int,
) -> torch.Tensor:
    """Disjoint by bounding balls: ``R(c, theta, g)`` lies in the l_p ball of radius
    ``g * max(theta)`` around ``c`` (p = 2 or 1), and two such balls are disjoint when the
    centres are further apart than the sum of the radii."""
    radius_a = gap_a * theta_a.max()
    radii_b = gaps_b * thetas_b.amax(dim=1)
    separation = torch.linalg.vector_norm(diff, ord=p, dim=1)
    return separation > (radius_a + radii_b) * (1.0 + MARGIN)


def _l2_witness(squared_diff: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """True where some ``t in (0, 1)`` has ``K(t) < -MARGIN`` (two ellipsoids with positive gaps).

    ``K(t) = 1 - sum_i d_i^2 t (1 - t) / ((1 - t) A_i^2 + t B_i^2)`` (Gilitschenski and
    Hanebeck, "A robust computational test for overlap of two arbitrary-dimensional
    ellipsoids", FUSION 2012). For every ``t``, ``1 - K(t)`` is the minimum over ``z`` of
    ``t ||(z - a)/A||^2 + (1 - t) ||(z - b)/B||^2``, which is ``<= 1`` at any common point, so
    a single ``t`` with ``K(t) < 0`` proves the ellipsoids disjoint; the converse (``min K >= 0``
    for intersecting ellipsoids) makes the test exact.

    ``K`` is convex (``K'' = sum_i d_i^2 2 A_i^2 B_i^2 / den_i^3 > 0``). Each pair is oriented so
    that its minimizer lies in ``(0, 1/2]`` (``K`` with ``A, B`` swapped is ``K(1 - t)``), where
    ``t`` and ``1 - t`` are both accurate, and minimized by Newton's method safeguarded by a
    bracket ``[t_L, t_R]`` with ``K'(t_L) < 0 <= K'(t_R)`` (geometric bisection when a Newton
    step leaves it). The tangents at the bracket's ends bound ``min K`` from below, so a pair
    stops as soon as a witness ``K(t) < -MARGIN`` is found ("disjoint") or the bound reaches
    ``-MARGIN`` (no witness can exist: "intersect").

    Args:
        squared_diff: ``d^2``, ``(k, D)``; a2: ``A^2``, ``(1 or k, D or 1)``; b2: ``B^2``,
            ``(k, D or 1)``; all semi-axes positive, float64.

    Returns:
        bool ``(k,)``.
    """
    k = squared_diff.shape[0]
    a2, b2 = torch.broadcast_tensors(a2, b2)
    a2, b2 = a2.expand(k, -1), b2.expand(k, -1)

    def evaluate(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``K``, ``K'`` and ``K''`` at ``t (k,)``."""
        t = t[:, None]
        u = 1.0 - t
        denominator = u * a2 + t * b2
        ratio = squared_diff / denominator
        value = 1.0 - (t * u).squeeze(1) * ratio.sum(dim=1)
        slope = -(ratio * (a2 * u * u - b2 * t * t) / denominator).sum(dim=1)
        curvature = (ratio * (2.0 * a2 * b2) / (denominator * denominator)).sum(dim=1)
        return value, slope, curvature

    half = torch.full((k,), 0.5, dtype=torch.float64, device=squared_diff.device)
    value, slope, curvature = evaluate(half)
    swap = (slope < 0)[:, None]
    a2, b2 = torch.where(swap, b2, a2), torch.where(swap, a2, b2)
    slope = slope.abs()
    found = value < -MARGIN
    # bracket ends with their tangents: t_L = 0 (K = 1, K' = -sum d^2 / A^2), t_R = 1/2
    t_left, k_left = torch.zeros_like(half), torch.ones_like(half)
    g_left = -(squared_diff / a2).sum(dim=1)
    t_right, k_right, g_right = half, value, slope
    t, g, c = half, slope, curvature
    for _ in range(_WITNESS_ITERATIONS):
        # lower bound of min K: where the two tangents cross
        steepness = g_left - g_right
        flat = steepness == 0
        crossing = (k_right - k_left + g_left * t_left - g_right * t_right) / torch.where(
            flat, -1.0, steepness
        )
        bound = torch.where(
            flat, torch.minimum(k_left, k_right), k_left + g_left * (crossing - t_left)
        )
        active = ~found & (bound < -MARGIN)
        if not bool(active.any()):
            break
        newton = t - g / c
        inside = (newton > t_left) & (newton < t_right)
        fallback = torch.where(t_left > 0, torch.sqrt(t_left * t_right), 0.125 * t_right)
        t_next = torch.where(inside, newton, fallback)
        value, slope, curvature = evaluate(t_next)
        found |= active & (value < -MARGIN)
        left = active & (slope < 0)
        right = active & (slope >= 0)
        t_left, k_left = torch.where(left, t_next, t_left), torch.where(left, value, k_left)
        g_left = torch.where(left, slope, g_left)
        t_right, k_right = torch.where(right, t_next, t_right), torch.where(right, value, k_right)
        g_right = torch.where(right, slope, g_right)
        t, g, c = (
            torch.where(active, new, old) for new, old in ((t_next, t), (slope, g), (curvature, c))
        )
    return found


def _l1_separated(
    abs_diff: torch.Tensor, axes_a: torch.Tensor, axes_b: torch.Tensor
) -> torch.Tensor:
    """True where two cross-polytopes with positive half-diagonals are proven disjoint.

    The regions are ``{a + v : sum_i |v_i| / A_i <= 1}`` and ``{b + v : sum_i |v_i| / B_i <= 1}``
    with ``d = b - a``. They are disjoint iff ``max over lambda in [0, 1] of h(lambda) > 1``, with
    ``h(lambda) = sum_i |d_i| min(lambda / A_i, (1 - lambda) / B_i)``. Derivation: two compact
    convex sets are disjoint iff some ``w`` separates them strictly, ``w.d > s_A(w) + s_B(w)``,
    where ``s_A(w) = max_i A_i |w_i|`` is the support function of the cross-polytope (a linear
    function peaks at a vertex ``+-A_i e_i``); both sides are positively homogeneous in ``w``, so
    normalise to ``s_A(w) <= lambda``, ``s_B(w) <= 1 - lambda``, i.e. ``|w_i| <= min(lambda / A_i,
    (1 - lambda) / B_i)``, and the largest ``w.d`` is ``h(lambda)``. The earlier sufficient test
    ``sum_i |d_i| / max(A_i, B_i) > 2`` is ``h(1/2) > 1``: this test proves all it proved, and
    more.

    ``h`` is concave and piecewise linear with kinks at ``lambda_i = A_i / (A_i + B_i)`` and
    ``h(0) = h(1) = 0``, so its maximum is at a kink. The kinks are sorted by ``r_i = A_i / B_i``
    (the same order as ``lambda_i``, but accurate even where ``lambda_i`` or ``1 - lambda_i``
    would round away, e.g. a tiny region beside a huge one). At the ``k``-th kink the coordinates
    sorted before ``k`` are past their kink and those from ``k`` on are not, so with
    ``lambda_k = A_k / (A_k + B_k)``::

        h(lambda_k) = (B_k P_k + A_k S_k) / (A_k + B_k),
        P_k = sum_{j < k} |d_j| / B_j,  S_k = sum_{j >= k} |d_j| / A_j,

    a prefix and a suffix sum: ``O(D log D)`` per pair, all pairs at once.

    Rounding (``u = 2^-53``): ``d``, ``A`` and ``B`` each carry one rounding (``c_b - c_a`` and
    ``theta g`` in float64), so every term of ``P_k`` and ``S_k`` carries at most 3 roundings,
    each sum of nonnegative terms at most ``D - 1`` more, and the last line (5 operations, on
    ``A_k`` and ``B_k`` of one rounding each) at most 6 more: the computed value is the exact
    value of the chosen branches times ``1 + t`` with ``|t| <= gamma_{D+8}`` (``gamma_n =
    n u / (1 - n u)``; no subtraction anywhere, so no cancellation). A coordinate ``j`` sorted
    on the wrong side of ``k`` (computed ratios in order, exact ones not) has ``r_j / r_k``
    within a factor ``1 + gamma_6`` of 1 (each ratio carries 3 roundings), and its chosen branch
    exceeds its minimum by exactly that ratio; every other chosen branch is the minimum. So the
    computed value is at most ``h(lambda_k) (1 + gamma_{D+14})`` for the exact ``lambda_k``, and
    ``rounding_slack(D) = 8 (D + 4) u`` exceeds ``gamma_{D+14}``: a value above ``1 +
    max(MARGIN, rounding_slack(D))`` proves ``h(lambda_k) > 1`` for the exact real numbers.
    Conversely the chosen branches are never below the minimum, so a disjoint pair is left
    "intersecting" only when its exact ``max h`` is within about twice that margin of 1. Values
    that overflow or lose all meaning (``inf``, ``NaN``) say "intersect".

    Args:
        abs_diff: ``|d|``, ``(k, D)``; axes_a: ``A``, ``(1 or k, D or 1)``; axes_b: ``B``,
            ``(k, D or 1)``; all half-diagonals positive, float64.

    Returns:
        bool ``(k,)``.
    """
    k, dim = abs_diff.shape
    threshold = 1.0 + max(MARGIN, rounding_slack(dim))
    verdict = torch.zeros(k, dtype=torch.bool, device=abs_diff.device)
    rows = max(1, _L1_CHUNK_ELEMENTS // dim)
    for first in range(0, k, rows):
        d = abs_diff[first : first + rows]
        shape = d.shape
        a = (axes_a if axes_a.shape[0] == 1 else axes_a[first : first + rows]).expand(shape)
        b = axes_b[first : first + rows].expand(shape)
        order = torch.argsort(a / b, dim=1)
        d, a, b = d.gather(1, order), a.gather(1, order), b.gather(1, order)
        prefix = torch.cat([torch.zeros_like(d[:, :1]), (d[:, :-1] / b[:, :-1]).cumsum(dim=1)], 1)
        suffix = (d / a).flip(1).cumsum(dim=1).flip(1)
        best = ((b * prefix + a * suffix) / (a + b)).amax(dim=1)
        verdict[first : first + shape[0]] = torch.isfinite(best) & (best > threshold)
    return verdict


def _proven_disjoint(
    diff: torch.Tensor,
    theta_a: torch.Tensor,
    gap_a: float,
    thetas_b: torch.Tensor,
    gaps_b: torch.Tensor,
    p: int,
) -> torch.Tensor:
    """The exact l2 / l1 test on prepared float64 tensors (see :func:`proven_disjoint`)."""
    disjoint = torch.zeros(diff.shape[0], dtype=torch.bool, device=diff.device)
    point_b = gaps_b == 0
    threshold_b = gaps_b * (1.0 + MARGIN)
    if gap_a == 0:
        # a point: disjoint iff it lies outside the other region (two points: iff they differ)
        outside = _weighted_norm(diff, thetas_b, p) > threshold_b
        return torch.where(point_b, (diff != 0).any(dim=1), outside)
    points = point_b.nonzero().squeeze(1)
    if points.numel() > 0:
        outside_a = _weighted_norm(diff.index_select(0, points), theta_a, p) > gap_a * (
            1.0 + MARGIN
        )
        disjoint = disjoint.index_copy(0, points, outside_a)
    regular = (~point_b).nonzero().squeeze(1)
    if regular.numel() == 0:
        return disjoint
    diff_r = diff.index_select(0, regular)
    axes_a = theta_a * gap_a
    axes_b = thetas_b.index_select(0, regular) * gaps_b.index_select(0, regular)[:, None]
    if p == 2:
        verdict = _l2_witness(diff_r * diff_r, axes_a * axes_a, axes_b * axes_b)
    else:
        verdict = _l1_separated(diff_r.abs(), axes_a, axes_b)
    return disjoint.index_copy(0, regular, verdict)


def prefilter_disjoint(
    center: torch.Tensor,
    theta: Theta,
    gap: float,
    stored_centers: torch.Tensor,
    stored_thetas: torch.Tensor,
    stored_gaps: torch.Tensor | Sequence[float],
    norm: Norm | str,
) -> torch.Tensor:
    """The cheap exact pre-filter, vectorized over the ``M`` stored regions.

    l2: ``||c_a - c_b||_2 > g_a max(theta_a) + g_b max(theta_b)`` (circumscribed balls);
    l1: the same with ``||c_a - c_b||_1`` (each region lies in the l1 ball of radius
    ``g max(theta)``). True means proven disjoint; False means "not decided here".

    Returns:
        bool ``(M,)``.
    """
    diff, theta_a, thetas_b, gaps_b = _prepare(
        center, theta, stored_centers, stored_thetas, stored_gaps
    )
    return _prefilter(diff, theta_a, float(gap), thetas_b, gaps_b, _ord(norm))


def proven_disjoint(
    center: torch.Tensor,
    theta: Theta,
    gap: float,
    stored_centers: torch.Tensor,
    stored_thetas: torch.Tensor,
    stored_gaps: torch.Tensor | Sequence[float],
    norm: Norm | str,
) -> torch.Tensor:
    """The pair test alone (no pre-filter): True only where disjointness is proven.

    l2: the exact test for two axis-aligned ellipsoids (see :func:`_l2_witness`), saying
    "disjoint" only for a witness ``t`` with ``K(t) < -MARGIN``. l1: the exact test for two
    cross-polytopes with half-diagonals ``A = theta_a g_a``, ``B = theta_b g_b`` (see
    :func:`_l1_separated`), saying "disjoint" only when ``max over lambda of sum_i |d_i|
    min(lambda / A_i, (1 - lambda) / B_i)`` exceeds 1 by more than its rounding margin. A
    region of gap 0 is its centre, tested exactly: a point is in a region iff its weighted
    distance is ``<= gap``.

    Returns:
        bool ``(M,)``.
    """
    diff, theta_a, thetas_b, gaps_b = _prepare(
        center, theta, stored_centers, stored_thetas, stored_gaps
    )
    return _proven_disjoint(diff, theta_a, float(gap), thetas_b, gaps_b, _ord(norm))


def _disjoint(
    diff: torch.Tensor,
    theta_a: torch.Tensor,
    gap_a: float,
    thetas_b: torch.Tensor,
    gaps_b: torch.Tensor,
    p: int,
) -> torch.Tensor:
    """Pre-filter, then the pair test on the pairs the pre-filter leaves undecided."""
    disjoint = _prefilter(diff, theta_a, gap_a, thetas_b, gaps_b, p)
    undecided = (~disjoint).nonzero().squeeze(1)
    if undecided.numel() == 0:
        return disjoint
    rows = thetas_b.index_select(0, undecided)
    verdict = _proven_disjoint(
        diff.index_select(0, undecided),
        theta_a,
        gap_a,
        rows,
        gaps_b.index_select(0, undecided),
        p,
    )
    return disjoint.index_copy(0, undecided, verdict)


def regions_intersect(
    center: torch.Tensor,
    theta: Theta,
    gap: float,
    stored_centers: torch.Tensor,
    stored_thetas: torch.Tensor,
    stored_gaps: torch.Tensor | Sequence[float],
    norm: Norm | str,
) -> torch.Tensor:
    """Whether ``R(center, theta, gap)`` may intersect each of ``M`` stored regions.

    The pre-filter (:func:`prefilter_disjoint`) runs on all ``M`` pairs with one tensor
    operation; the pairs it leaves undecided go to :func:`proven_disjoint`. False is a proof of
    disjointness; True means "intersect, or too close to tell".

    Returns:
        bool ``(M,)``.
    """
    diff, theta_a, thetas_b, gaps_b = _prepare(
        center, theta, stored_centers, stored_thetas, stored_gaps
    )
    return ~_disjoint(diff, theta_a, float(gap), thetas_b, gaps_b, _ord(norm))


def largest_disjoint_gap(
    center: torch.Tensor,
    theta: Theta,
    gap: float,
    stored_centers: torch.Tensor,
    stored_thetas: torch.Tensor,
    stored_gaps: torch.Tensor | Sequence[float],
    norm: Norm | str,
    tol: float = GAP_TOLERANCE,
) -> float:
    """The largest ``g' <= gap`` (to within ``tol * gap``) such that ``R(center, theta, g')`` is
    proven disjoint from every stored region: step 3 of the memory pass (Alfarra et al., UAI
    2022), which shrinks an input's certificate until it meets no stored region of another
    class.

    Intersection is monotone in ``g'`` (the regions are nested), so ``g'`` is found by
    bisection, which stops when the bracket is narrower than ``tol * gap`` and returns its lower
    end: a value at which disjointness was *proven*, never one at which it was assumed. A stored
    region proven disjoint at some ``g'`` stays disjoint below it, so later steps only test the
    regions that still intersect.

    Returns:
        ``gap`` itself when already disjoint from all, ``0.0`` when even the centre alone is
        not proven outside some stored region, otherwise the lower end of the final bracket.
    """
    gap = float(gap)
    if stored_centers.shape[0] == 0:
        return gap
    diff, theta_a, thetas_b, gaps_b = _prepare(
        center, theta, stored_centers, stored_thetas, stored_gaps
    )
    p = _ord(norm)

    def still_intersecting(g: float, active: torch.Tensor) -> torch.Tensor:
        """The members of ``active`` (indices) not proven disjoint from ``R(center, theta, g)``."""
        hit = ~_disjoint(
            diff.index_select(0, active),
            theta_a,
            g,
            thetas_b.index_select(0, active),
            gaps_b.index_select(0, active),
            p,
        )
        return active[hit]

    active = still_intersecting(gap, torch.arange(diff.shape[0], device=diff.device))
    if active.numel() == 0:
        return gap
    if gap <= 0 or still_intersecting(0.0, active).numel() > 0:
        return 0.0
    low, high = 0.0, gap
    while high - low > tol * gap:
        middle = 0.5 * (low + high)
        if not low < middle < high:  # the bracket cannot shrink further in float64
            break
        hits = still_intersecting(middle, active)
        if hits.numel() > 0:
            high, active = middle, hits
        else:
            low = middle
    return low
