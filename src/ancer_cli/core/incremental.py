"""Incremental randomized smoothing (Ugare et al., ICLR 2024): certify a changed base classifier
``f'`` from the certificate of the original ``f`` and a bound on how often the two disagree.

For any noise law and any class ``c``,

    P[f'(x + e) = c] >= P[f(x + e) = c and f'(x + e) = c] = P[f(x + e) = c] - P[f = c, f' != c]
                     >= P[f(x + e) = c] - P[f(x + e) != f'(x + e)].

So with ``pA_lower`` of the earlier certificate of ``f`` (wrong with probability ``<= alpha``) and
an upper confidence bound ``zeta`` on ``q = P[f = cA, f' != cA]`` (wrong with probability
``<= alpha_zeta``), ``pA_lower - zeta`` is a lower bound on ``f'``'s ``pA`` that is wrong with
probability at most ``alpha + alpha_zeta`` -- a union bound, valid whatever the dependence
between the two events. We bound ``q`` (the disagreements where ``f`` votes for ``cA``), which is
never larger than the disagreement rate ``P[f != f']`` that the paper bounds.

``zeta`` is estimated on **fresh** draws, from a stream no one knew before this run, with both
models on each draw: the bound on ``q`` holds for a changed model fixed before those draws are
known. Draws that can be regenerated -- the earlier run's, whose seed its sidecar publishes --
would not do: a model written after the seed was published can agree with ``f`` on exactly those
draws and disagree elsewhere. With sound noise the earlier ``pA_lower`` already paid the
sampler's budget ``tau`` (it bounds the ideal law) while ``zeta`` bounds ``q`` under the
implemented law; ``P_ideal[f' = c] >= P_impl[f' = c] - tau >= P_impl[f = c] - q - tau``, so
``tau`` is paid once.

``zeta`` is the running minimum of the anytime-valid upper confidence sequence of
:mod:`ancer_cli.core.sequential` at level ``alpha_zeta``, so sampling may stop at any look: as soon
as the reused radius is within a tolerance of the earlier one and keeps the radii a user reports
(route ``reuse``) or clearly cannot get there (route ``scratch``). The votes of both models come
from one :class:`PairClassifier` fed through :func:`~ancer_cli.core.smoothing.sample_counts_many`,
so chunking, sound sampling and precision are exactly those of CERTIFY.

Cost. A look's draws are seen by both models. At most :func:`zeta_cap` draws (a quarter of ``N``)
are looked at, and an input that goes to ``scratch`` after looking is certified for its earlier
class ``cA`` -- fixed before this run's draws, so no selection stage is needed -- on as many fresh
draws as the budget of CERTIFY afresh leaves: ``N0 + N - 2 n`` after ``n`` looked-at draws. So no
input costs more model evaluations than certifying it afresh (``N0 + N``); an input that cannot be
reused whatever the draws (``pA_lower`` near 1) is certified afresh without looking.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import norm as normal
from torch import nn

from ancer_cli.core.choices import REUSE_TOLERANCE, Norm, Sampling
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import Theta
from ancer_cli.core.radii import min_theta
from ancer_cli.core.sequential import FloatArray, cs_lower, cs_upper, gaps
from ancer_cli.core.smoothing import (
    ABSTAIN,
    Certificate,
    certificate_for,
    certify_many,
    sample_counts,
    sample_counts_many,
)

LOOK_GROWTH = 1.5
"""Each look draws about half as many samples again as all the looks before."""


class Route(str, enum.Enum):
    """How a row of a reuse run was certified (its ``path`` column)."""

    reuse = "reuse"
    """the earlier ``pA_lower`` less ``zeta``"""
    scratch = "scratch"
    """certified afresh: CERTIFY of the changed model, or (after looking) a bound on its
    ``pA`` for the earlier class on the fresh draws CERTIFY's budget leaves"""
    abstain = "abstain"
    """the earlier run abstained: so does this one, without sampling"""


class PairClassifier(nn.Module):
    """Both base classifiers as one: logits ``(b, 2 K)``, one-hot at ``2 f(x) + [f'(x) != f(x)]``.

    Its votes (``sample_counts_many(..., num_classes=2 K)``) reshaped to ``(K, 2)`` count, per
    class ``c`` of ``f``, the draws where ``f'`` agrees and where it does not: the marginal is
    ``f``'s own votes, column 1 the disagreements. (A full ``K x K`` table would do too, but
    costs ``K^2`` logits per sample: a million for ImageNet.)"""

    def __init__(self, original: nn.Module, changed: nn.Module, classes: int) -> None:
        super().__init__()
        self.original = original
        self.changed = changed
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.original(x).argmax(dim=1)
        after = self.changed(x).argmax(dim=1)
        outcome = 2 * before + (after != before).long()
        return nn.functional.one_hot(outcome, 2 * self.classes).float()


def pair_counts(
    pair: PairClassifier,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    nums: Sequence[int],
    batch_size: int,
    generators: Sequence[torch.Generator],
) -> np.ndarray:
    """Votes of ``pair`` on noisy copies drawn as CERTIFY draws them: int64 ``(n, len(nums), K,
    2)`` on the host -- ``[..., c, 0]`` draws where both say ``c``, ``[..., c, 1]`` where ``f``
    says ``c`` and ``f'`` does not."""
    counts = sample_counts_many(pair, xs, laws, nums, batch_size, generators, 2 * pair.classes)
    return counts.cpu().numpy().reshape(len(laws), len(nums), pair.classes, 2)


def recovered_p_a_lower(radius: float, theta: Theta, norm: Norm | str) -> float:
    """The earlier ``pA_lower`` from a written radius: the gap ``radius / min(theta)`` (as the
    memory pass recovers it; the radius was rounded toward zero), then ``Phi(gap)`` (l2) or
    ``(1 + gap) / 2`` (l1), one ulp down so that rounding can only lower it."""
    gap = float(radius) / min_theta(theta)
    p = float(normal.cdf(gap)) if Norm(norm) is Norm.l2 else (1.0 + gap) / 2.0
    return math.nextafter(min(p, 1.0), 0.0)


def zeta_cap(n_estimation: int) -> int:
    """The most draws reuse looks at: a quarter of ``N`` (at least one). Each draw is seen by
    both models, so an input that goes afresh at the cap still has ``N0 + N / 2`` fresh draws of
    CERTIFY's budget to be certified on."""
    return max(1, n_estimation // 4)


def zeta_looks(n_estimation: int, batch_size: int, growth: float = LOOK_GROWTH) -> list[int]:
    """Cumulative draws at which the disagreements are looked at: the first look one forward
    pass (``min(batch_size, cap)`` draws), then multiples of it growing by about ``growth``, up
    to :func:`zeta_cap`."""
    if n_estimation < 1 or batch_size < 1 or growth <= 1.0:
        raise ValueError(
            f"need N >= 1, batch size >= 1, growth > 1; got {n_estimation}, {batch_size}, {growth}"
        )
    cap = zeta_cap(n_estimation)
    first = min(batch_size, cap)
    looks, steps = [], 1
    while steps * first < cap:
        looks.append(steps * first)
        steps = max(steps + 1, math.ceil(steps * growth))
    return [*looks, cap]


@dataclass(frozen=True)
class ReuseRule:
    """When to stop drawing and which route to take.

    ``zeta`` is the running minimum of :func:`~ancer_cli.core.sequential.cs_upper` at level
    ``alpha_zeta`` (the only level charged to the certificate). After each look: *reuse* once
    ``pA_lower - zeta`` is at least 1/2, loses at most ``tolerance`` of the earlier gap
    (relative) and keeps every one of ``radii`` that the earlier certificate reached (its gap at
    least the input's *floor*, :meth:`floor_gaps`); *scratch* once that is out of reach -- the
    running maximum of the lower sequence at the same level (it only decides stopping, like
    :class:`SequentialPlan`'s upper sequence: if it is wrong, the input is certified afresh for
    nothing, never falsely), or the bound the cap would give were every later draw an agreement,
    already rules it out. At the cap: reuse if the rule holds, else scratch. Before any draw,
    inputs that could not be reused even with no disagreement at the cap go to scratch at once
    (``pA_lower`` near 1, where every ``zeta`` costs much radius)."""

    alpha_zeta: float
    tolerance: float = REUSE_TOLERANCE
    norm: Norm = Norm.l2
    radii: tuple[float, ...] = ()
    """Radii (input units) a reused certificate may not fall below where the earlier one reached
    them: the radii whose certified accuracy a user reports."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha_zeta < 1.0:
            raise ValueError(f"alpha_zeta must lie in (0, 1), got {self.alpha_zeta}")
        if not self.tolerance >= 0.0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not all(math.isfinite(r) and r > 0.0 for r in self.radii):
            raise ValueError(f"radii must be finite and > 0, got {list(self.radii)}")
        object.__setattr__(self, "norm", Norm(self.norm))
        object.__setattr__(self, "radii", tuple(sorted({float(r) for r in self.radii})))

    def floor_gaps(self, earlier_radii: npt.ArrayLike, scales: npt.ArrayLike) -> FloatArray:
        """Per input, the smallest gap a reused certificate may have so that its radius ``scale
        x gap`` (``scale``: ``min(theta)``, as written) keeps the largest of :attr:`radii` that
        the earlier written radius reached; 0 where it reached none. A relative margin of
        ``1e-12`` over ``r / scale`` keeps the product, rounded, from falling an ulp short."""
        earlier = np.asarray(earlier_radii, dtype=np.float64)
        scale = np.asarray(scales, dtype=np.float64)
        kept = np.zeros_like(earlier)
        for r in self.radii:  # ascending: the last one reached wins
            kept = np.where(earlier >= r, r, kept)
        return np.asarray(np.where(kept > 0.0, kept / scale * (1.0 + 1e-12), 0.0))

    def acceptable(
        self, p_a_lower: npt.ArrayLike, zeta: npt.ArrayLike, floor: npt.ArrayLike = 0.0
    ) -> npt.NDArray[np.bool_]:
        """Whether ``pA_lower - zeta`` certifies (``> 1/2``) within the tolerance, with a gap of
        at least ``floor`` (:meth:`floor_gaps`)."""
        p = np.asarray(p_a_lower, dtype=np.float64)
        reused = p - np.asarray(zeta, dtype=np.float64)
        gap = gaps(reused, self.norm)
        keep = gap >= (1.0 - self.tolerance) * gaps(p, self.norm)
        return np.asarray((reused > 0.5) & keep & (gap >= np.asarray(floor, dtype=np.float64)))

    def feasible(
        self, p_a_lower: npt.ArrayLike, cap: int, floor: npt.ArrayLike = 0.0
    ) -> npt.NDArray[np.bool_]:
        """Whether reuse could succeed at all: acceptable with no disagreement in ``cap``."""
        return self.acceptable(p_a_lower, cs_upper(0, cap, self.alpha_zeta), floor)

    def step(
        self,
        p_a_lower: npt.ArrayLike,
        disagreements: npt.ArrayLike,
        n: npt.ArrayLike,
        cap: int,
        zeta: npt.ArrayLike,
        low: npt.ArrayLike,
        floor: npt.ArrayLike = 0.0,
    ) -> tuple[npt.NDArray[np.int8], FloatArray, FloatArray]:
        """One look at ``disagreements`` of ``n`` (arrays, one entry per input or run): the codes
        (0 go on, 1 reuse, 2 scratch) and the updated running ``zeta`` and lower bound."""
        upper = np.minimum(zeta, cs_upper(disagreements, n, self.alpha_zeta))
        lower = np.maximum(low, cs_lower(disagreements, n, self.alpha_zeta))
        best = np.minimum(upper, cs_upper(disagreements, cap, self.alpha_zeta))
        reuse = self.acceptable(p_a_lower, upper, floor)
        hopeless = ~self.acceptable(p_a_lower, lower, floor) | ~self.acceptable(
            p_a_lower, best, floor
        )
        at_cap = np.asarray(n) >= cap
        codes = np.select([reuse, hopeless | at_cap], [1, 2], 0).astype(np.int8)
        return codes, np.asarray(upper, dtype=np.float64), np.asarray(lower, dtype=np.float64)


class Earlier(NamedTuple):
    """One input's earlier certificate: its class (``ABSTAIN`` for an abstention), its
    ``pA_lower`` and the smallest gap a reused certificate may have (:meth:`ReuseRule.floor_gaps`;
    0 for none)."""

    prediction: int
    p_a_lower: float
    floor: float = 0.0


@dataclass(frozen=True)
class Incremental:
    """The outcome for one input: its ``route``; for ``reuse`` the new ``p_a_lower`` (``pA_lower
    - zeta``), for ``scratch`` the ``certificate`` of the changed model. ``n`` fresh draws were
    looked at by both models (``disagreements`` of them with ``f = cA != f'``); ``samples``
    counts every noisy input a model evaluated for this input."""

    route: Route
    p_a_lower: float = 0.0
    zeta: float = 1.0
    n: int = 0
    disagreements: int = 0
    samples: int = 0
    certificate: Certificate | None = None


def _certify_class(
    model: nn.Module,
    x: torch.Tensor,
    law: NoiseLaw,
    prediction: int,
    num: int,
    sampling: Sampling,
    generator: torch.Generator,
) -> Certificate:
    """A certificate of ``model`` for the class ``prediction``, fixed before the draws: its votes
    on ``num`` fresh draws bounded at ``sampling.alpha`` (no selection stage: the class was not
    chosen on these draws)."""
    votes = sample_counts(model, x, law, num, sampling.batch_size, generator)
    n_a = int(votes[prediction]) if prediction < votes.numel() else 0
    return certificate_for(prediction, n_a, num, law, sampling.alpha)


def certify_incremental_many(
    pair: PairClassifier,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    sampling: Sampling,
    earlier: Sequence[Earlier],
    rule: ReuseRule,
    generators: Sequence[torch.Generator],
) -> list[Incremental]:
    """Certify ``pair.changed`` on a group of inputs from their ``earlier`` certificates.

    ``generators`` are fresh streams, one per input. Inputs that abstained before keep abstaining
    (route ``abstain``, no draw). Inputs that could not be reused even with no disagreement at
    the cap are certified afresh at once: CERTIFY of ``pair.changed`` with ``sampling`` (exactly
    the certificate :func:`~ancer_cli.core.smoothing.certify_many` gives with the same
    generator). The others draw look by look (:func:`zeta_looks`, at most :func:`zeta_cap`), both
    models on every draw, the undecided inputs sharing forward passes, until :class:`ReuseRule`
    decides; those sent afresh after ``n`` draws are certified for their earlier class on the
    ``N0 + N - 2 n`` next draws of their stream. Every input's stream is its own, so an outcome
    does not depend on the other inputs of the group.
    """
    count = len(laws)
    results: list[Incremental | None] = [None] * count
    p = np.asarray([e.p_a_lower for e in earlier], dtype=np.float64)
    certified = np.asarray([e.prediction for e in earlier]) != ABSTAIN
    floor = np.asarray([e.floor for e in earlier], dtype=np.float64)
    n_estimation, batch_size = sampling.n_estimation, sampling.batch_size
    budget = sampling.n_selection + n_estimation
    cap = zeta_cap(n_estimation)
    feasible = rule.feasible(np.where(certified, p, 0.0), cap, floor)
    afresh = [i for i in range(count) if certified[i] and not feasible[i]]
    if afresh:
        certificates = certify_many(
            pair.changed,
            [xs[i] for i in afresh],
            [laws[i] for i in afresh],
            sampling,
            [generators[i] for i in afresh],
        )
        for i, certificate in zip(afresh, certificates, strict=True):
            results[i] = Incremental(Route.scratch, samples=budget, certificate=certificate)
    for i in range(count):
        if not certified[i]:
            results[i] = Incremental(Route.abstain)
    active = np.flatnonzero(certified & feasible)
    zeta, low = np.ones(count), np.zeros(count)
    dis, n = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    drawn = 0
    for size in zeta_looks(n_estimation, batch_size):
        if active.size == 0:
            break
        step, drawn = size - drawn, size
        members = active.tolist()
        counts = pair_counts(
            pair,
            [xs[i] for i in members],
            [laws[i] for i in members],
            (step,),
            batch_size,
            [generators[i] for i in members],
        )
        chosen = np.asarray([earlier[i].prediction for i in members])
        dis[active] += counts[np.arange(len(members)), 0, chosen, 1]
        n[active] = size
        codes, zeta[active], low[active] = rule.step(
            p[active], dis[active], n[active], cap, zeta[active], low[active], floor[active]
        )
        for k in np.flatnonzero(codes):
            i = int(active[k])
            looked, disagreements = int(n[i]), int(dis[i])
            if codes[k] == 1:
                results[i] = Incremental(
                    Route.reuse, float(p[i] - zeta[i]), float(zeta[i]), looked, disagreements,
                    samples=2 * looked,
                )
                continue
            remaining = budget - 2 * looked
            certificate = _certify_class(
                pair.changed, xs[i], laws[i], earlier[i].prediction, remaining, sampling,
                generators[i],
            )  # fmt: skip
            results[i] = Incremental(
                Route.scratch, 0.0, float(zeta[i]), looked, disagreements, budget, certificate
            )
        active = active[codes == 0]
    assert all(result is not None for result in results)  # the last look is at the cap
    return [result for result in results if result is not None]
