"""Monte Carlo votes of the smoothed classifier, CERTIFY and PREDICT (Cohen et al. 2019).

Generalized to per-coordinate theta and to l1 (uniform) noise. All sampling stays on the
model's device: noise is drawn in place into one preallocated buffer, the input and theta are
broadcast, votes are counted on device as int64 (with ``index_add_``, which unlike
``torch.bincount`` never waits for the device) and come to the host once per input -- or once per
group of inputs with :func:`certify_many`, which packs several inputs' samples into each forward
pass when one input alone would leave a pass short.

Every input draws its noise from its own generator, in the chunks :func:`chunk_sizes` gives, in
the same order, whichever function samples it; so the noise of an input -- and with it its votes
-- does not depend on which other inputs share its forward passes.

Each input's noise is one value, its :class:`~ancer_cli.core.law.NoiseLaw`: norm, theta, and
where it is drawn. On the data's pixel grid (a sound law) each input is read once as integers on
the grid, the noise is drawn exactly on that grid and the noisy input is assembled in integers
(:mod:`ancer_cli.core.sound`); certificates then subtract the sampler's total-variation budget
``tau`` from the lower bound on ``pA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ancer_cli.core.bounds import clopper_pearson_lower, top_two_p_value
from ancer_cli.core.choices import Sampling
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.sequential import (
    SequentialPlan,
    reported_lower,
    stop_codes,
    stop_reason,
    update_bounds,
)

ABSTAIN = -1

MAX_INPUTS_PER_GROUP = 64
"""Upper bound of :func:`inputs_per_group`: rows are written once their whole group is done."""
MIN_SHORT_SHARE = 0.05
"""Below this share of short forward passes per input, :func:`inputs_per_group` returns 1."""


@dataclass(frozen=True)
class Certificate:
    """The certificate of one input.

    ``prediction`` is ``ABSTAIN`` (-1) when ``p_a_lower < 0.5``; then the gap and radii are 0.
    The certified region is ``{x + d : ||d / theta||_p <= gap}``.
    """

    prediction: int
    n_a: int
    n_estimation: int
    p_a_lower: float
    gap: float
    min_theta: float
    geomean_theta: float
    stop: str | None = None
    """Sequential certification: why sampling stopped (:class:`~ancer_cli.core.sequential.Stop`);
    ``n_estimation`` is then the number of estimation samples used. ``None`` for fixed ``N``."""
    tau: float = 0.0
    """Sound sampling: the total-variation budget of the noise, already subtracted from
    ``p_a_lower`` (:func:`~ancer_cli.core.sound.total_variation_budget`); 0 otherwise."""

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    @property
    def radius(self) -> float:
        """``min(theta) * gap``: the largest isotropic ball inside the region."""
        return self.min_theta * self.gap

    @property
    def radius_proxy(self) -> float:
        """``geomean(theta) * gap``: the isotropic ball with the region's volume."""
        return self.geomean_theta * self.gap


def chunk_sizes(num: int, batch_size: int) -> list[int]:
    """How the ``num`` samples of one input and stage are drawn: ``num // b`` chunks of
    ``b = min(batch_size, num)`` and one chunk with the rest. An input's generator is always
    consumed in exactly these chunks, so packing inputs together cannot change its noise."""
    if num <= 0:
        return []
    batch = max(1, min(batch_size, num))
    sizes = [batch] * (num // batch)
    if num % batch:
        sizes.append(num % batch)
    return sizes


def inputs_per_group(n_selection: int, n_estimation: int, batch_size: int) -> int:
    """How many inputs :func:`certify_many` should take at once.

    Enough for the short chunks (a selection stage smaller than a batch, the remainder of the
    estimation stage) to fill whole forward passes, at most ``MAX_INPUTS_PER_GROUP``; 1 when
    short chunks are under ``MIN_SHORT_SHARE`` of an input's forward passes (then packing saves
    little, and results are written only once their whole group is done).
    """
    chunks = chunk_sizes(n_selection, batch_size) + chunk_sizes(n_estimation, batch_size)
    short = [size for size in chunks if size < batch_size]
    if not short or len(short) < MIN_SHORT_SHARE * len(chunks):
        return 1
    return max(1, min(MAX_INPUTS_PER_GROUP, -(-batch_size // max(short))))


@dataclass(frozen=True)
class _Chunk:
    """``size`` samples of input ``item`` for stage ``stage``."""

    item: int
    stage: int
    size: int


def _forward_passes(count: int, nums: Sequence[int], batch_size: int) -> list[list[_Chunk]]:
    """The forward passes that sample ``nums[s]`` noisy copies of each of ``count`` inputs.

    Stage by stage: a chunk of a whole batch is a pass of its own; the shorter chunks (at most
    one per input and stage, always an input's last in that stage) are packed first-fit
    decreasing into passes of at most ``batch_size``. Each input thus meets its chunks in
    :func:`chunk_sizes` order, stage after stage.
    """
    passes: list[list[_Chunk]] = []
    for stage, num in enumerate(nums):
        short: list[_Chunk] = []
        for item in range(count):
            for size in chunk_sizes(num, batch_size):
                if size >= batch_size:
                    passes.append([_Chunk(item, stage, size)])
                else:
                    short.append(_Chunk(item, stage, size))
        bins: list[tuple[int, list[_Chunk]]] = []
        for chunk in sorted(short, key=lambda c: -c.size):  # stable: equal sizes keep item order
            for k, (used, members) in enumerate(bins):
                if used + chunk.size <= batch_size:
                    members.append(chunk)
                    bins[k] = (used + chunk.size, members)
                    break
            else:
                bins.append((chunk.size, [chunk]))
        for _, members in bins:
            # draw in item order within a pass (any order would do: the generators are separate)
            passes.append(sorted(members, key=lambda c: c.item))
    return passes


@torch.inference_mode()
def sample_counts_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    nums: Sequence[int],
    batch_size: int,
    generators: Sequence[torch.Generator],
    num_classes: int | None = None,
) -> torch.Tensor:
    """Votes of the base classifier on noisy copies of several inputs, several stages each.

    Input ``i`` gets ``nums[0]``, then ``nums[1]``, ... noisy copies drawn from ``laws[i]`` with
    ``generators[i]`` exactly as :func:`sample_counts` would draw them one stage after the other,
    so its votes equal one-at-a-time sampling; chunks of different inputs share forward passes of
    at most ``batch_size`` samples when they are shorter than a batch.

    Args:
        model: maps a batch ``(b, C, H, W)`` in [0, 1] to logits ``(b, K)``.
        xs: inputs ``(n, C, H, W)`` (or a sequence of ``(C, H, W)``) on the model's device; with
            a sound law they must lie on its grid.
        laws: one noise law per input (its theta on the inputs' device).
        nums: noisy samples per stage (CERTIFY: ``(n_selection, n_estimation)``).
        generators: one per input, on the inputs' device.

    Returns:
        int64 tensor ``(n, len(nums), K)`` of vote counts, on the inputs' device.
    """
    count = len(xs)
    if not (len(laws) == len(generators) == count):
        raise ValueError(
            f"need one law and one generator per input: got {count} inputs, "
            f"{len(laws)} laws and {len(generators)} generators"
        )
    if count == 0:
        device = xs.device if isinstance(xs, torch.Tensor) else None
        return torch.zeros((0, len(nums), num_classes or 0), dtype=torch.int64, device=device)
    first = xs[0]
    prepared = [law.prepare(xs[i]) for i, law in enumerate(laws)]
    passes = _forward_passes(count, nums, batch_size)
    largest = max((sum(c.size for c in chunks) for chunks in passes), default=0)
    buffer = torch.empty((largest, *first.shape), dtype=first.dtype, device=first.device)
    ones = torch.ones(largest, dtype=torch.int64, device=first.device)
    counts: torch.Tensor | None = None
    if num_classes is not None:
        counts = torch.zeros(
            (count, len(nums), num_classes), dtype=torch.int64, device=first.device
        )
    for chunks in passes:
        offset = 0
        for chunk in chunks:
            target = buffer[offset : offset + chunk.size]
            laws[chunk.item].draw_(target, prepared[chunk.item], generators[chunk.item])
            offset += chunk.size
        logits = model(buffer[:offset])
        if counts is None:
            counts = torch.zeros(
                (count, len(nums), logits.shape[1]), dtype=torch.int64, device=first.device
            )
        predictions = logits.argmax(dim=1)
        offset = 0
        for chunk in chunks:
            counts[chunk.item, chunk.stage].index_add_(
                0, predictions[offset : offset + chunk.size], ones[: chunk.size]
            )
            offset += chunk.size
    if counts is None:  # every stage asked for 0 samples and no class count was given
        counts = torch.zeros((count, len(nums), 0), dtype=torch.int64, device=first.device)
    return counts


@torch.inference_mode()
def sample_counts(
    model: nn.Module,
    x: torch.Tensor,
    law: NoiseLaw,
    num: int,
    batch_size: int,
    generator: torch.Generator,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Votes of the base classifier on ``num`` noisy copies of ``x`` ``(C, H, W)`` drawn from
    ``law`` with ``generator`` (on ``x``'s device), ``batch_size`` per forward pass: an int64
    tensor ``(K,)`` on ``x``'s device."""
    counts = sample_counts_many(
        model, x.unsqueeze(0), [law], (num,), batch_size, [generator], num_classes
    )
    return counts[0, 0]


def _certificate(
    selection: np.ndarray, estimation: np.ndarray, law: NoiseLaw, n_estimation: int, alpha: float
) -> Certificate:
    c_a_hat = int(np.argmax(selection))
    return certificate_for(c_a_hat, int(estimation[c_a_hat]), n_estimation, law, alpha)


def certificate_for(prediction: int, n_a: int, n: int, law: NoiseLaw, alpha: float) -> Certificate:
    """The certificate for class ``prediction``, chosen before the ``n`` draws of ``law`` on
    which it got ``n_a`` votes: ``pA_lower`` is the Clopper-Pearson bound at ``alpha`` less the
    law's sampler budget ``tau`` (at least 0); below 1/2 it abstains, else its gap is
    ``law.gap(pA_lower)``."""
    p_a_lower = max(0.0, clopper_pearson_lower(n_a, n, alpha) - law.tau)
    low, mean, tau = law.min_theta, law.geomean_theta, law.tau
    if p_a_lower < 0.5:
        return Certificate(ABSTAIN, n_a, n, p_a_lower, 0.0, low, mean, tau=tau)
    return Certificate(prediction, n_a, n, p_a_lower, law.gap(p_a_lower), low, mean, tau=tau)


def certify_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    sampling: Sampling,
    generators: Sequence[torch.Generator],
) -> list[Certificate]:
    """CERTIFY for a group of inputs, sharing forward passes between them.

    Equal to ``[certify(model, xs[i], laws[i], sampling, generators[i]) for i ...]``: every input
    consumes its own generator exactly as :func:`certify` does. Only the short chunks (a
    selection stage below the batch size, the remainder of the estimation stage) of different
    inputs are packed together, so groups pay off when those chunks are a large part of the work
    (small ``N``, small models, GPUs); :func:`inputs_per_group` sizes the group. The votes of the
    whole group come to the host in one transfer. A sound law's certificate states
    ``pA_lower - tau``.
    """
    nums = (sampling.n_selection, sampling.n_estimation)
    counts = sample_counts_many(model, xs, laws, nums, sampling.batch_size, generators)
    both = counts.cpu().numpy()  # the one host transfer
    return [
        _certificate(both[i, 0], both[i, 1], law, sampling.n_estimation, sampling.alpha)
        for i, law in enumerate(laws)
    ]


def certify_sequential_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    sampling: Sampling,
    plan: SequentialPlan,
    generators: Sequence[torch.Generator],
    p_needed: np.ndarray | None = None,
) -> list[Certificate]:
    """Sequential CERTIFY for a group of inputs: stop each input's sampling as soon as
    :mod:`ancer_cli.core.sequential`'s rule decides (``plan``), at most ``plan.cap`` samples.

    As in :func:`certify_many`, ``sampling.n_selection`` samples select the class; then
    estimation samples are drawn look by look (``plan.looks()``: the same increments for every
    input), the selected class's votes counted, the time-uniform bounds updated and the rule
    applied; inputs still undecided go on to the next look, sharing its forward passes. Every
    input consumes its own generator in the chunks :func:`chunk_sizes` gives for each increment,
    so its certificate does not depend on the other inputs of the group. ``p_needed`` (radius
    mode): per input, the sorted probabilities its radii need, shape ``(n, T)`` (``inf`` for a
    radius out of reach); without it the plan's own thresholds (or adaptive mode). Votes come to
    the host once per look. With sound laws the stopping rule and the report see the bounds
    widened by each input's budget ``tau`` (lower ``- tau``, upper ``+ tau``).

    Returns:
        One :class:`Certificate` per input; ``n_estimation`` is the number of estimation samples
        it used, ``p_a_lower`` the bound at its stopping time (``plan``'s reported bound) and
        ``stop`` the reason.
    """
    count = len(laws)
    batch_size = sampling.batch_size
    tau = np.array([law.tau for law in laws], dtype=np.float64)
    selection = sample_counts_many(
        model, xs, laws, (sampling.n_selection,), batch_size, generators
    )[:, 0]
    chosen = selection.argmax(dim=1)
    classes = selection.shape[1]
    n_a = np.zeros(count, dtype=np.int64)
    n = np.zeros(count, dtype=np.int64)
    lower, upper = np.zeros(count), np.ones(count)
    codes = np.zeros(count, dtype=np.int8)
    active = np.arange(count)
    drawn = 0
    for size in plan.looks():
        step, drawn = size - drawn, size
        members = active.tolist()
        counts = sample_counts_many(
            model,
            [xs[i] for i in members],
            [laws[i] for i in members],
            (step,),
            batch_size,
            [generators[i] for i in members],
            num_classes=classes,
        )[:, 0]
        rows = torch.as_tensor(active, device=chosen.device)
        hits = counts.gather(1, chosen[rows].unsqueeze(1)).squeeze(1)
        n_a[active] += hits.cpu().numpy()  # the one host transfer of this look
        n[active] = size
        lower[active], upper[active] = update_bounds(
            plan, n_a[active], n[active], lower[active], upper[active]
        )
        needed = None if p_needed is None else p_needed[active]
        codes[active] = stop_codes(
            plan,
            lower[active] - tau[active],
            upper[active] + tau[active],
            n[active],
            needed,
        )
        active = active[codes[active] == 0]
        if active.size == 0:
            break
    # max(L, CP) - tau == max(L - tau, CP - tau): the budget is paid once, after the report
    reported = np.maximum(reported_lower(plan, n_a, n, lower) - tau, 0.0)
    c_hat = chosen.cpu().numpy()
    certificates = []
    for i, law in enumerate(laws):
        p_a_lower = float(reported[i])
        low, mean = law.min_theta, law.geomean_theta
        stop = stop_reason(int(codes[i]))
        assert stop is not None  # the last look is at the cap
        abstained = p_a_lower < 0.5
        certificates.append(
            Certificate(
                ABSTAIN if abstained else int(c_hat[i]),
                int(n_a[i]),
                int(n[i]),
                p_a_lower,
                0.0 if abstained else law.gap(p_a_lower),
                low,
                mean,
                stop.value,
                law.tau,
            )
        )
    return certificates


def certify(
    model: nn.Module,
    x: torch.Tensor,
    law: NoiseLaw,
    sampling: Sampling,
    generator: torch.Generator,
) -> Certificate:
    """CERTIFY (Cohen et al. 2019): select the class on ``sampling.n_selection`` noisy copies of
    ``x`` ``(C, H, W)``, bound its probability on ``sampling.n_estimation`` fresh ones at level
    ``sampling.alpha``, and return the certificate (abstain if ``pA_lower < 1/2``)."""
    return certify_many(model, x.unsqueeze(0), [law], sampling, [generator])[0]


def _prediction(counts: np.ndarray, alpha: float) -> int:
    """PREDICT's answer from one input's votes: the top class, or ``ABSTAIN`` unless the
    two-sided binomial test of top class against runner-up rejects at level ``alpha``."""
    order = np.argsort(-counts, kind="stable")
    n1 = int(counts[order[0]])
    n2 = int(counts[order[1]]) if counts.size > 1 else 0
    if top_two_p_value(n1, n2) > alpha:
        return ABSTAIN
    return int(order[0])


def predict_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    num: int,
    alpha: float,
    batch_size: int,
    generators: Sequence[torch.Generator],
) -> list[int]:
    """PREDICT for a group of inputs, sharing forward passes between them.

    Equal to ``[predict(model, xs[i], laws[i], ..., generators[i]) for i ...]``: each input
    consumes its own generator as :func:`predict` does, and its votes come to the host with the
    group's in one transfer (see :func:`certify_many` for when grouping pays off). With a sound
    law the level ``alpha`` holds for the implemented noise law; against the ideal one, ``num``
    votes are within total variation ``num * tau`` of it, so the error probability is at most
    ``alpha + num * tau``.
    """
    return predict_votes_many(model, xs, laws, num, alpha, batch_size, generators)[0]


def predict_votes_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    laws: Sequence[NoiseLaw],
    num: int,
    alpha: float,
    batch_size: int,
    generators: Sequence[torch.Generator],
) -> tuple[list[int], np.ndarray]:
    """:func:`predict_many` with the votes it decided on: the answers, and the int64 counts
    ``(n, K)`` of the ``num`` noisy samples of each input."""
    counts = sample_counts_many(model, xs, laws, (num,), batch_size, generators)
    votes = counts[:, 0].cpu().numpy()  # the one host transfer
    return [_prediction(votes[i], alpha) for i in range(len(laws))], votes


def predict(
    model: nn.Module,
    x: torch.Tensor,
    law: NoiseLaw,
    num: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator,
) -> int:
    """PREDICT (Cohen et al. 2019): the top class of ``num`` noisy votes, or ``ABSTAIN`` unless
    the binomial test of top class against runner-up rejects at level ``alpha``. The answer
    differs from the smoothed classifier's with probability at most ``alpha`` (for a sound law:
    see :func:`predict_many`)."""
    (prediction,) = predict_many(
        model, x.unsqueeze(0), [law], num, alpha, batch_size, [generator]
    )
    return prediction
