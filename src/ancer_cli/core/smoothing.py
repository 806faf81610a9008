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

``sound=s`` (the grid levels of the data, e.g. 255 for 8-bit images) switches every function
here to the floating-point-sound sampler of :mod:`ancer_cli.core.sound`: each input is read once
as integers on its grid, the noise is drawn exactly on that grid and the noisy input is assembled
in integers; certificates use :func:`~ancer_cli.core.sound.sound_theta` and subtract the
sampler's total-variation budget ``tau`` from the lower bound on ``pA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower, top_two_p_value
from ancer_cli.core.noise import Norm, Theta, perturb_
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.sequential import (
    SequentialPlan,
    reported_lower,
    stop_codes,
    stop_reason,
    update_bounds,
)
from ancer_cli.core.sound import draw_sound_, sound_theta, to_grid, total_variation_budget

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
    thetas: Sequence[Theta],
    norm: Norm | str,
    nums: Sequence[int],
    batch_size: int,
    generators: Sequence[torch.Generator],
    num_classes: int | None = None,
    sound: int | None = None,
) -> torch.Tensor:
    """Votes of the base classifier on noisy copies of several inputs, several stages each.

    Input ``i`` gets ``nums[0]``, then ``nums[1]``, ... noisy copies drawn from
    ``generators[i]`` exactly as :func:`sample_counts` would draw them one stage after the other,
    so its votes equal one-at-a-time sampling; chunks of different inputs share forward passes of
    at most ``batch_size`` samples when they are shorter than a batch.

    Args:
        model: maps a batch ``(b, C, H, W)`` in [0, 1] to logits ``(b, K)``.
        xs: inputs ``(n, C, H, W)`` (or a sequence of ``(C, H, W)``) on the model's device.
        thetas: per input, a positive number or a positive tensor of the input's shape.
        nums: noisy samples per stage (CERTIFY: ``(n_selection, n_estimation)``).
        generators: one per input, on the inputs' device.
        sound: the inputs' grid levels ``s``: draw the noise with
            :func:`~ancer_cli.core.sound.draw_sound_` (inputs must lie on the ``1/s`` grid);
            ``None`` for float noise (:func:`~ancer_cli.core.noise.perturb_`).

    Returns:
        int64 tensor ``(n, len(nums), K)`` of vote counts, on the inputs' device.
    """
    count = len(xs)
    if not (len(thetas) == len(generators) == count):
        raise ValueError(
            f"need one theta and one generator per input: got {count} inputs, "
            f"{len(thetas)} thetas and {len(generators)} generators"
        )
    if count == 0:
        device = xs.device if isinstance(xs, torch.Tensor) else None
        return torch.zeros((0, len(nums), num_classes or 0), dtype=torch.int64, device=device)
    first = xs[0]
    grid = None if sound is None else [to_grid(xs[i], sound) for i in range(count)]
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
            if grid is None:
                perturb_(target, xs[chunk.item], thetas[chunk.item], norm, generators[chunk.item])
            else:
                assert sound is not None
                draw_sound_(
                    target,
                    grid[chunk.item],
                    thetas[chunk.item],
                    norm,
                    sound,
                    generators[chunk.item],
                )
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
    theta: Theta,
    norm: Norm | str,
    num: int,
    batch_size: int,
    generator: torch.Generator,
    num_classes: int | None = None,
    sound: int | None = None,
) -> torch.Tensor:
    """Votes of the base classifier on ``num`` noisy copies of ``x``.

    Args:
        model: maps a batch ``(b, C, H, W)`` in [0, 1] to logits ``(b, K)``.
        x: one input ``(C, H, W)`` on the model's device.
        theta: a positive number, or a positive tensor of ``x``'s shape on the same device.
        num: number of noisy samples; ``batch_size``: samples per forward pass.
        generator: the input's random stream, on ``x``'s device.
        sound: grid levels for sound sampling (see :func:`sample_counts_many`).

    Returns:
        int64 tensor ``(K,)`` of vote counts, on ``x``'s device.
    """
    counts = sample_counts_many(
        model, x.unsqueeze(0), [theta], norm, (num,), batch_size, [generator], num_classes, sound
    )
    return counts[0, 0]


def _certified_theta(
    x: torch.Tensor, theta: Theta, norm: Norm | str, sound: int | None
) -> tuple[Theta, float]:
    """The theta a certificate states and the budget ``tau`` its lower bound pays."""
    if sound is None:
        return theta, 0.0
    certified = sound_theta(theta, norm, sound)
    return certified, total_variation_budget(certified, norm, sound, tuple(x.shape))


def _certificate(
    selection: np.ndarray,
    estimation: np.ndarray,
    theta: Theta,
    norm: Norm | str,
    n_estimation: int,
    alpha: float,
    tau: float = 0.0,
) -> Certificate:
    c_a_hat = int(np.argmax(selection))
    n_a = int(estimation[c_a_hat])
    p_a_lower = clopper_pearson_lower(n_a, n_estimation, alpha)
    if tau:
        p_a_lower = max(0.0, p_a_lower - tau)
    low, mean = min_theta(theta), geometric_mean(theta)
    if p_a_lower < 0.5:
        return Certificate(ABSTAIN, n_a, n_estimation, p_a_lower, 0.0, low, mean, tau=tau)
    gap = gap_from_p_lower(p_a_lower, norm)
    return Certificate(c_a_hat, n_a, n_estimation, p_a_lower, gap, low, mean, tau=tau)


def certify_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    thetas: Sequence[Theta],
    norm: Norm | str,
    n_selection: int,
    n_estimation: int,
    alpha: float,
    batch_size: int,
    generators: Sequence[torch.Generator],
    sound: int | None = None,
) -> list[Certificate]:
    """CERTIFY for a group of inputs, sharing forward passes between them.

    Equal to ``[certify(model, xs[i], thetas[i], ..., generators[i]) for i ...]``: every input
    consumes its own generator exactly as :func:`certify` does. Only the short chunks (a
    selection stage below ``batch_size``, the remainder of the estimation stage) of different
    inputs are packed together, so groups pay off when those chunks are a large part of the work
    (small ``N``, small models, GPUs); :func:`inputs_per_group` sizes the group. The votes of the
    whole group come to the host in one transfer. ``sound``: see :func:`sample_counts_many`; the
    certificates then state :func:`~ancer_cli.core.sound.sound_theta` and ``pA_lower - tau``.
    """
    counts = sample_counts_many(
        model, xs, thetas, norm, (n_selection, n_estimation), batch_size, generators, sound=sound
    )
    both = counts.cpu().numpy()  # the one host transfer
    certificates = []
    for i in range(len(thetas)):
        theta, tau = _certified_theta(xs[i], thetas[i], norm, sound)
        certificates.append(
            _certificate(both[i, 0], both[i, 1], theta, norm, n_estimation, alpha, tau)
        )
    return certificates


def certify_sequential_many(
    model: nn.Module,
    xs: torch.Tensor | Sequence[torch.Tensor],
    thetas: Sequence[Theta],
    norm: Norm | str,
    n_selection: int,
    plan: SequentialPlan,
    batch_size: int,
    generators: Sequence[torch.Generator],
    p_needed: np.ndarray | None = None,
    sound: int | None = None,
) -> list[Certificate]:
    """Sequential CERTIFY for a group of inputs: stop each input's sampling as soon as
    :mod:`ancer_cli.core.sequential`'s rule decides (``plan``), at most ``plan.cap`` samples.

    As in :func:`certify_many`, ``n_selection`` samples select the class; then estimation
    samples are drawn look by look (``plan.looks()``: the same increments for every input), the
    selected class's votes counted, the time-uniform bounds updated and the rule applied; inputs
    still undecided go on to the next look, sharing its forward passes. Every input consumes its
    own generator in the chunks :func:`chunk_sizes` gives for each increment, so its certificate
    does not depend on the other inputs of the group. ``p_needed`` (radius mode): per input, the
    sorted probabilities its radii need, shape ``(n, T)`` (``inf`` for a radius out of reach);
    without it the plan's own thresholds (or adaptive mode). Votes come to the host once per look.
    ``sound``: see :func:`sample_counts_many`; the stopping rule and the report then see the
    bounds widened by each input's budget ``tau`` (lower ``- tau``, upper ``+ tau``).

    Returns:
        One :class:`Certificate` per input; ``n_estimation`` is the number of estimation samples
        it used, ``p_a_lower`` the bound at its stopping time (``plan``'s reported bound) and
        ``stop`` the reason.
    """
    count = len(thetas)
    stated = [_certified_theta(xs[i], thetas[i], norm, sound) for i in range(count)]
    tau = np.array([budget for _, budget in stated], dtype=np.float64)
    selection = sample_counts_many(
        model, xs, thetas, norm, (n_selection,), batch_size, generators, sound=sound
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
            [thetas[i] for i in members],
            norm,
            (step,),
            batch_size,
            [generators[i] for i in members],
            num_classes=classes,
            sound=sound,
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
    for i in range(count):
        p_a_lower = float(reported[i])
        theta, budget = stated[i]
        low, mean = min_theta(theta), geometric_mean(theta)
        stop = stop_reason(int(codes[i]))
        assert stop is not None  # the last look is at the cap
        if p_a_lower < 0.5:
            certificate = Certificate(
                ABSTAIN, int(n_a[i]), int(n[i]), p_a_lower, 0.0, low, mean, stop.value, budget
            )
        else:
            gap = gap_from_p_lower(p_a_lower, norm)
            certificate = Certificate(
                int(c_hat[i]),
                int(n_a[i]),
                int(n[i]),
                p_a_lower,
                gap,
                low,
                mean,
                stop.value,
                budget,
            )
        certificates.append(certificate)
    return certificates


def certify(
    model: nn.Module,
    x: torch.Tensor,
    theta: Theta,
    norm: Norm | str,
    n_selection: int,
    n_estimation: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator,
    sound: int | None = None,
) -> Certificate:
    """CERTIFY: select the class on ``n_selection`` samples, bound its probability on
    ``n_estimation`` fresh samples, and return the certificate (abstain if ``pA_low < 0.5``).
    ``sound``: grid levels for sound sampling (see :func:`certify_many`)."""
    return certify_many(
        model,
        x.unsqueeze(0),
        [theta],
        norm,
        n_selection,
        n_estimation,
        alpha,
        batch_size,
        [generator],
        sound=sound,
    )[0]


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
    thetas: Sequence[Theta],
    norm: Norm | str,
    num: int,
    alpha: float,
    batch_size: int,
    generators: Sequence[torch.Generator],
    sound: int | None = None,
) -> list[int]:
    """PREDICT for a group of inputs, sharing forward passes between them.

    Equal to ``[predict(model, xs[i], thetas[i], ..., generators[i]) for i ...]``: each input
    consumes its own generator as :func:`predict` does, and its votes come to the host with
    the group's in one transfer (see :func:`certify_many` for when grouping pays off).
    ``sound``: grid levels for sound sampling (:func:`sample_counts_many`). The level ``alpha``
    then holds for the implemented noise law; against the ideal one, ``num`` votes are within
    total variation ``num * tau`` of it, so the error probability is at most ``alpha + num * tau``.
    """
    counts = sample_counts_many(
        model, xs, thetas, norm, (num,), batch_size, generators, sound=sound
    )
    votes = counts[:, 0].cpu().numpy()  # the one host transfer
    return [_prediction(votes[i], alpha) for i in range(len(thetas))]


def predict(
    model: nn.Module,
    x: torch.Tensor,
    theta: Theta,
    norm: Norm | str,
    num: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator,
    sound: int | None = None,
) -> int:
    """PREDICT (Cohen et al. 2019): the top class of ``num`` noisy votes, or ``ABSTAIN`` unless
    the binomial test of top class against runner-up rejects at level ``alpha``. The answer
    differs from the smoothed classifier's with probability at most ``alpha`` (``sound``: see
    :func:`predict_many`)."""
    (prediction,) = predict_many(
        model, x.unsqueeze(0), [theta], norm, num, alpha, batch_size, [generator], sound=sound
    )
    return prediction
