"""The memory-based certification pass: sound certificates for per-input theta.

With a theta chosen per input, a point inside x's certified region gets its own theta, so the
plain smoothed classifier there may disagree with x's class. Alfarra et al. ("Data dependent
randomized smoothing", UAI 2022) fix this by certifying a *memory-augmented* classifier,
which ANCER (Eiras et al., TMLR 2022) generalizes to anisotropic regions.
Inputs are processed in index order with a memory of stored regions ``(center, theta, gap,
class)``:

1. if x lies inside a stored region ``j``, the memory classifier answers ``c_j``: the input is
   *reassigned* the sub-region of ``j`` centred at x, with ``theta_j`` and gap
   ``g_j - ||(x - x_j) / theta_j||_p``; nothing is stored;
2. otherwise, an abstention is kept as it is and nothing is stored;
3. otherwise x's gap is *shrunk* to the largest ``g' <= g`` whose region intersects no stored
   region of another class, and ``(x, theta, g', c)`` is stored.

Stored regions of different classes are therefore pairwise disjoint. Every test is the sound
one of :mod:`ancer_cli.core.regions`: rounding can make a certificate smaller, never wrong.

Speed: for each block of consecutive inputs, one float64 matrix product against the stored
centres (in chunks) screens out the pairs whose bounding balls are provably apart (a rigorous
rounding bound is subtracted, so the screen never discards a pair the exact pre-filter would
keep); only the few remaining pairs reach the exact tests. Stored regions live in preallocated,
growing tensors on the chosen device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta
from ancer_cli.core.regions import (
    MARGIN,
    largest_disjoint_gap,
    rounding_slack,
    weighted_distance,
)
from ancer_cli.core.smoothing import ABSTAIN

_SCREEN_ELEMENTS = 1 << 23
"""float64 entries (64 MiB) per screening operand: bounds the block of inputs fetched at once
and the chunk of stored centres multiplied against it."""

_MAX_BLOCK = 256


@dataclass(frozen=True)
class Claim:
    """One input's certificate before the pass.

    ``idx`` is the dataset index (claims come in increasing order), ``predict`` the class or
    -1 for abstain, ``gap`` the certified gap ``g`` (0 when abstained)."""

    idx: int
    predict: int
    gap: float


@dataclass(frozen=True)
class MemoryDecision:
    """One input's certificate after the pass.

    The region certified for ``predict`` is ``{x + d : ||d / theta||_p <= gap}`` with ``x`` the
    input and ``theta`` the theta of input ``theta_idx``: the input's own, or, when
    ``reassigned``, that of the stored region it fell into. ``shrunk`` says the gap was reduced
    to avoid a stored region of another class."""

    idx: int
    predict: int
    gap: float
    theta_idx: int
    reassigned: bool
    shrunk: bool


class _Memory:
    """Stored regions in preallocated, growing tensors on one device.

    Centres are kept in float64, the precision of every test and of the screening product.
    Thetas are kept in float32 when they arrive as float32 (or narrower) and in float64
    otherwise (a Python float or a float64 tensor), so that a stored region is exactly the
    region certified; they are ``(capacity, 1)`` while all are isotropic and become
    ``(capacity, D)`` with the first anisotropic one. ``squared_norms`` holds ``||x||_2^2`` for
    the screening product, ``radii`` the bounding-ball radii ``g max(theta)``.
    """

    def __init__(self, dim: int, limit: int, device: torch.device) -> None:
        self.dim, self.limit, self.device, self.size = dim, limit, device, 0
        self.centers = torch.empty((0, dim), dtype=torch.float64, device=device)
        self.thetas = torch.empty((0, 1), dtype=torch.float32, device=device)
        self.gaps = torch.empty(0, dtype=torch.float64, device=device)
        self.radii = torch.empty(0, dtype=torch.float64, device=device)
        self.squared_norms = torch.empty(0, dtype=torch.float64, device=device)
        self.classes: list[int] = []
        self.indices: list[int] = []

    @staticmethod
    def _grown(tensor: torch.Tensor, rows: int) -> torch.Tensor:
        grown = torch.empty((rows, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        grown[: tensor.shape[0]] = tensor
        return grown

    def _reserve(self, theta_width: int, wide_theta: bool) -> None:
        if wide_theta and self.thetas.dtype != torch.float64:
            self.thetas = self.thetas.to(torch.float64)
        if theta_width > self.thetas.shape[1]:
            self.thetas = self.thetas.expand(-1, theta_width).contiguous()
        capacity = self.centers.shape[0]
        if self.size < capacity:
            return
        capacity = min(max(2 * capacity, 64), max(self.limit, self.size + 1))
        self.centers = self._grown(self.centers, capacity)
        self.thetas = self._grown(self.thetas, capacity)
        self.gaps = self._grown(self.gaps, capacity)
        self.radii = self._grown(self.radii, capacity)
        self.squared_norms = self._grown(self.squared_norms, capacity)

    def add(
        self,
        center: torch.Tensor,
        theta: torch.Tensor,
        wide_theta: bool,
        gap: float,
        squared_norm: torch.Tensor,
        claim: Claim,
    ) -> int:
        """Store one region (``center (D,)`` and ``theta (1 or D,)`` float64); return its slot."""
        self._reserve(theta.numel(), wide_theta)
        slot = self.size
        self.centers[slot] = center
        self.thetas[slot] = theta
        self.gaps[slot] = gap
        self.radii[slot] = gap * theta.max()
        self.squared_norms[slot] = squared_norm
        self.classes.append(claim.predict)
        self.indices.append(claim.idx)
        self.size += 1
        return slot


def _theta_vector(
    value: Theta, dim: int, idx: int, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """Theta as float64 ``(1,)`` or ``(D,)`` on ``device``, and whether it needs float64 storage."""
    if isinstance(value, torch.Tensor):
        vector = value.detach().reshape(-1).to(device=device, dtype=torch.float64)
        wide = value.dtype == torch.float64
    else:
        vector = torch.tensor([float(value)], dtype=torch.float64, device=device)
        wide = True
    if vector.numel() not in (1, dim):
        raise ValueError(
            f"theta of input {idx} has {vector.numel()} entries; expected 1 (isotropic) or "
            f"{dim} (one per input coordinate)"
        )
    return vector, wide


def _check_claims(claims: Sequence[Claim]) -> None:
    previous: int | None = None
    for claim in claims:
        if previous is not None and claim.idx <= previous:
            raise ValueError(
                f"claims must come in increasing idx order; idx {claim.idx} follows {previous}"
            )
        if not (math.isfinite(claim.gap) and claim.gap >= 0):
            raise ValueError(f"claim {claim.idx} has gap {claim.gap}; expected a finite gap >= 0")
        previous = claim.idx


def _near_pairs(
    queries: torch.Tensor,
    query_squared_norms: torch.Tensor,
    query_radii: torch.Tensor,
    centers: torch.Tensor,
    squared_norms: torch.Tensor,
    radii: torch.Tensor,
    slack: float,
) -> torch.Tensor:
    """Pairs whose bounding balls are not provably apart: ``(P, 2)`` indices (query, center).

    ``||q - c||^2`` comes from ``||q||^2 + ||c||^2 - 2 q.c`` (one matrix product, float64);
    subtracting ``slack (||q||^2 + ||c||^2)`` bounds its rounding error, so a discarded pair has
    ``||q - c||_2 > r_q + r_c`` exactly. As ``||v||_1 >= ||v||_2``, the same screen is sound for
    the l1 pre-filter. A point in a region lies within its bounding ball, so the screen also
    covers the membership test (``r_q >= 0``).
    """
    total = query_squared_norms[:, None] + squared_norms[None, :]
    lower = total - 2.0 * (queries @ centers.T) - slack * total
    reach = (query_radii[:, None] + radii[None, :]) * (1.0 + MARGIN)
    return (lower <= reach * reach).nonzero()


def memory_pass(
    claims: Sequence[Claim],
    center: Callable[[int], torch.Tensor],
    theta: Callable[[int], Theta],
    norm: Norm | str,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> list[MemoryDecision]:
    """Run the memory-based certification pass over ``claims`` (steps 1-3 above).

    Args:
        claims: the certificates, in increasing ``idx`` order.
        center: maps a dataset index to its input (any shape with ``D`` entries).
        theta: maps a dataset index to its theta (a number, or a tensor of 1 or ``D`` entries).
        norm: ``l2`` (ellipsoids) or ``l1`` (generalized cross-polytopes).
        device: where the stored regions live and the tests run (float64).
        progress: called as ``progress(done, total)`` after each claim.

    Returns:
        One :class:`MemoryDecision` per claim, in order. Membership (step 1) is "weighted distance
        ``<= g_j (1 + MARGIN)``" and, among several regions containing x, the one leaving the
        largest gap wins; that gap is ``max(g_j - dist (1 + slack), 0)``, with the distance
        rounded up by its rounding bound so that the sub-region stays inside region ``j``.
    """
    _check_claims(claims)
    norm = Norm(norm)
    total = len(claims)
    decisions: list[MemoryDecision] = []
    if total == 0:
        return decisions
    dim = center(claims[0].idx).numel()
    block = max(1, min(_MAX_BLOCK, _SCREEN_ELEMENTS // dim))
    chunk = max(1, _SCREEN_ELEMENTS // dim)
    slack = rounding_slack(dim)
    memory = _Memory(dim, sum(claim.predict != ABSTAIN for claim in claims), device)

    for start in range(0, total, block):
        batch = claims[start : start + block]
        raw = [center(claim.idx) for claim in batch]
        for claim, x in zip(batch, raw, strict=True):
            if x.numel() != dim:
                raise ValueError(
                    f"input {claim.idx} has shape {tuple(x.shape)} ({x.numel()} entries); "
                    f"expected {dim} entries like input {claims[0].idx}"
                )
        points = torch.stack(
            [x.detach().reshape(-1).to(device=device, dtype=torch.float64) for x in raw]
        )
        thetas = [_theta_vector(theta(claim.idx), dim, claim.idx, device) for claim in batch]
        squared_norms = (points * points).sum(dim=1)
        reach = torch.tensor([claim.gap for claim in batch], dtype=torch.float64, device=device)
        reach = reach * torch.stack([vector.max() for vector, _ in thetas])

        candidates: list[list[int]] = [[] for _ in batch]
        for first in range(0, memory.size, chunk):
            last = min(memory.size, first + chunk)
            pairs = _near_pairs(
                points,
                squared_norms,
                reach,
                memory.centers[first:last],
                memory.squared_norms[first:last],
                memory.radii[first:last],
                slack,
            )
            for query, slot in pairs.tolist():
                candidates[query].append(first + slot)
        within: list[list[int]] = [[] for _ in batch]
        pairs = _near_pairs(points, squared_norms, reach, points, squared_norms, reach, slack)
        for query, earlier in pairs.tolist():
            if earlier < query:
                within[query].append(earlier)

        slots: list[int | None] = []
        for position, claim in enumerate(batch):
            x = points[position]
            theta_x, wide_theta = thetas[position]
            ids = candidates[position] + [
                slot for slot in (slots[q] for q in within[position]) if slot is not None
            ]
            decision, gap = _decide(claim, x, theta_x, ids, memory, norm, slack)
            slot = None
            if gap is not None:
                slot = memory.add(
                    x,
                    theta_x,
                    wide_theta,
                    gap,
                    squared_norms[position],
                    claim,
                )
            slots.append(slot)
            decisions.append(decision)
            if progress is not None:
                progress(len(decisions), total)
    return decisions


def _decide(
    claim: Claim,
    x: torch.Tensor,
    theta_x: torch.Tensor,
    ids: list[int],
    memory: _Memory,
    norm: Norm,
    slack: float,
) -> tuple[MemoryDecision, float | None]:
    """Steps 1-3 for one input against the stored regions ``ids`` (all others are provably
    far). Returns the decision and the gap to store (None: store nothing)."""
    unchanged = MemoryDecision(claim.idx, claim.predict, claim.gap, claim.idx, False, False)
    abstained = claim.predict == ABSTAIN
    if not ids:
        return unchanged, None if abstained else claim.gap
    index = torch.tensor(ids, dtype=torch.long, device=memory.device)
    centers = memory.centers.index_select(0, index)
    thetas = memory.thetas.index_select(0, index).to(torch.float64)
    gaps = memory.gaps.index_select(0, index)
    distances = weighted_distance(x, centers, thetas, norm)
    inside = (distances <= gaps * (1.0 + MARGIN)).tolist()
    if any(inside):
        remaining = (gaps - distances * (1.0 + slack)).tolist()
        best = max((k for k, hit in enumerate(inside) if hit), key=remaining.__getitem__)
        slot = ids[best]
        gap = max(remaining[best], 0.0)
        return MemoryDecision(
            claim.idx, memory.classes[slot], gap, memory.indices[slot], True, False
        ), None
    if abstained:
        return unchanged, None
    rivals = [k for k, slot in enumerate(ids) if memory.classes[slot] != claim.predict]
    if not rivals:
        return unchanged, claim.gap
    keep = torch.tensor(rivals, dtype=torch.long, device=memory.device)
    gap = largest_disjoint_gap(
        x,
        theta_x,
        claim.gap,
        centers.index_select(0, keep),
        thetas.index_select(0, keep),
        gaps.index_select(0, keep),
        norm,
    )
    decision = MemoryDecision(claim.idx, claim.predict, gap, claim.idx, False, gap < claim.gap)
    return decision, gap
