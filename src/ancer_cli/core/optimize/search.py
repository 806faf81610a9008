"""The certified search, the default optimization of theta, and its guarded ANCER stage.

The published objectives (:mod:`ancer_cli.core.optimize.published`) score theta on the *soft*
smoothed classifier, which far from the data can keep preferring one class while the hard votes
(what CERTIFY counts) split: their theta then runs away and the input abstains. The stages here
score every candidate on hard votes with a Clopper-Pearson lower bound, compare candidates on
common random numbers, and never accept a theta that scores below its start.
:func:`search_isotropic` walks a geometric grid of scalar thetas scored on hard votes by the
radius CERTIFY would certify (forward passes only), and :func:`optimize_ancer_guarded` takes a few
ANCER steps from its theta and keeps them only if :func:`guard_ancer` finds them better on fresh
hard votes; :func:`optimize_certified` runs both for a batch of inputs.

Every vote that keeps or rejects a theta is drawn from the law certification will draw: the
run's :class:`~ancer_cli.core.law.Noise` gives each candidate its
:class:`~ancer_cli.core.law.NoiseLaw` (on the data's pixel grid when the run is sound -- the
rounded Gaussian or the discrete uniform, clipped to ``[-K, K + 1]`` as certify clips -- and
the grid half-width it certifies in l1), and the votes are counted on that law's own sampler.
Only the ANCER steps draw float noise, since the soft surrogate needs gradients in theta; they
clip it as certify's sampler clips, so that all that separates them from the law certify draws
is the rounding to the grid (at most half a step per pixel). Scored on float noise instead, the
guard kept l1 thetas of several hundred on a dozen pixels, whose float noise (far beyond
``[-K, K + 1]``) carried the votes: certify clips it, and those inputs abstained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower
from ancer_cli.core.choices import Norm
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.law import Noise, NoiseLaw
from ancer_cli.core.noise import InputStreams, Stream
from ancer_cli.core.optimize.config import (
    STEP_COST,
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicSearchConfig,
    Progress,
)
from ancer_cli.core.optimize.published import ancer_objective, smoothed_top_two
from ancer_cli.core.smoothing import chunk_sizes


@dataclass(frozen=True)
class IsotropicSearch:
    """What :func:`search_isotropic` found, per input (each tensor ``(B,)``).

    ``score`` and ``start_score`` are the conservative certified radii of ``theta`` and of
    ``theta0`` on the search's own votes; ``prediction`` is the class they are counted for
    (the vote at ``theta0``); ``forward_equivalents`` counts the noisy forward passes spent.
    """

    theta: torch.Tensor
    score: torch.Tensor
    start_score: torch.Tensor
    prediction: torch.Tensor
    forward_equivalents: torch.Tensor


@dataclass(frozen=True)
class GuardDecision:
    """The guard's choice per input: ``theta`` ``(B, C, H, W)`` is ANCER's theta where
    ``accepted`` (``(B,)`` bool), else the isotropic theta broadcast to the input's shape;
    ``ancer_score``/``isotropic_score`` are the scores compared (float64 ``(B,)``)."""

    theta: torch.Tensor
    accepted: torch.Tensor
    ancer_score: torch.Tensor
    isotropic_score: torch.Tensor


@dataclass(frozen=True)
class GuardedAncer:
    """What :func:`optimize_ancer_guarded` chose, per input.

    ``theta`` ``(B, C, H, W)``: the guard's choice (see :class:`GuardDecision`, also in
    ``guard``); ``theta_ancer`` the ANCER theta before the guard; ``steps`` ``(B,)`` the Adam
    steps taken; ``forward_equivalents`` ``(B,)`` = steps x samples x 3 + ``2 guard_samples``.
    """

    theta: torch.Tensor
    theta_ancer: torch.Tensor
    guard: GuardDecision
    steps: torch.Tensor
    forward_equivalents: torch.Tensor


@dataclass(frozen=True)
class CertifiedSearch:
    """Result of :func:`optimize_certified`: ``theta_isotropic`` ``(B,)``, ``theta``
    (``(B, C, H, W)`` guarded ANCER, or ``None`` without an ANCER stage), both stages' details,
    and ``forward_equivalents`` ``(B,)``, the total the input cost."""

    theta_isotropic: torch.Tensor
    theta: torch.Tensor | None
    search: IsotropicSearch
    ancer: GuardedAncer | None
    forward_equivalents: torch.Tensor


def certified_gap_lower(
    n_a: int, n: int, alpha: float, norm: Norm | str, tau: float = 0.0
) -> float:
    """The gap CERTIFY would certify from ``n_a`` of ``n`` votes: ``Phi^-1(p_lower)`` (l2) or
    ``2 p_lower - 1`` (l1) with ``p_lower`` the Clopper-Pearson bound less ``tau`` (a sound
    law's total-variation budget, as certificates pay it); 0 when ``p_lower < 1/2``."""
    p_lower = clopper_pearson_lower(n_a, n, alpha) - tau
    return gap_from_p_lower(p_lower, norm) if p_lower >= 0.5 else 0.0


def law_gap_lower(law: NoiseLaw, n_a: int, n: int, alpha: float) -> float:
    """:func:`certified_gap_lower` for votes drawn from ``law`` (its norm and budget ``tau``)."""
    return certified_gap_lower(n_a, n, alpha, law.norm, law.tau)


def common_noise_seeds(generators: Sequence[torch.Generator]) -> list[int]:
    """One seed per input, drawn from its generator: re-seeding a generator with it replays the
    same base noise for every theta an input compares (common random numbers)."""
    return [
        int(torch.randint(2**62, (1,), generator=g, device=g.device).item()) for g in generators
    ]


@torch.inference_mode()
def common_noise_votes(
    model: nn.Module,
    x: torch.Tensor,
    laws: Sequence[NoiseLaw],
    samples: int,
    samples_per_pass: int,
    seeds: Sequence[int],
) -> torch.Tensor:
    """Hard votes on ``samples`` noisy copies of each ``x[i]`` drawn from ``laws[i]``, replayed
    from ``seeds[i]``.

    Input ``i``'s copies are drawn by its law's own sampler (:meth:`NoiseLaw.draw_`: on the
    data's grid and clipped for a sound law, as certification draws them) from a generator
    seeded with ``seeds[i]``, in the chunks :func:`chunk_sizes` gives, so its votes are those
    :func:`~ancer_cli.core.smoothing.sample_counts_many` counts for the same law and generator.
    Two calls with the same seeds compare their laws on common random numbers: the same base
    noise scaled by each theta for float noise, the same uniform words inverted at each theta
    for the rounded Gaussian; the l1 discrete uniform shares its draws only on the coordinates
    whose half-width in grid steps is the same. One forward pass holds one chunk of every input,
    input-major (as a base classifier that hears each input's theta expects).

    Args:
        x: ``(B, C, H, W)`` (on the laws' grid when they are sound); laws: one per input.

    Returns:
        int64 ``(B, K)`` vote counts on ``x``'s device.
    """
    batch = x.shape[0]
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
        generators.append(generator)
    prepared = [law.prepare(x[i]) for i, law in enumerate(laws)]
    counts: torch.Tensor | None = None
    for size in chunk_sizes(samples, samples_per_pass):
        noisy = torch.empty((batch, size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        for i, law in enumerate(laws):
            law.draw_(noisy[i], prepared[i], generators[i])
        # a denoising base classifier hears each input's theta (the one certify tells it)
        tell_thetas(model, [law.theta for law in laws])
        logits = model(noisy.flatten(0, 1))
        predictions = logits.argmax(dim=1).view(batch, size)
        if counts is None:
            counts = torch.zeros((batch, logits.shape[1]), dtype=torch.int64, device=x.device)
        counts.scatter_add_(1, predictions, torch.ones_like(predictions))
    if counts is None:
        raise ValueError(f"common_noise_votes needs samples >= 1, got {samples}")
    return counts


@torch.inference_mode()
def search_isotropic(
    model: nn.Module,
    x: torch.Tensor,
    theta0: torch.Tensor,
    noise: Noise,
    config: IsotropicSearchConfig,
    generators: Sequence[torch.Generator],
) -> IsotropicSearch:
    """Per-input scalar theta maximizing a conservative estimate of the certified radius.

    Every candidate ``theta`` of an input is scored on ``config.samples`` copies drawn from its
    law ``noise.law(theta)`` -- the law certification will draw -- replayed from one seed per
    input (:func:`common_noise_votes`), by the radius CERTIFY would give their hard votes:
    ``theta' * Phi^-1(p_lower)`` (l2) or ``theta' * (2 p_lower - 1)`` (l1), ``theta'`` the
    parameter the law certifies (on the grid, l1: the grid half-width) and ``p_lower`` the
    Clopper-Pearson bound at ``config.alpha`` (less the law's budget ``tau``) on the votes for
    the class the votes choose at ``theta0``; 0 when ``p_lower < 1/2``. (Holding that class
    fixed keeps the search from certifying the classifier's prior on noise, a different
    prediction, at a large theta.) The walk goes up the geometric grid from ``theta0`` until
    ``config.patience`` candidates in a row fail to beat the best, then, if going up never
    helped, down likewise. ``theta0`` is scored first and only a strictly better score replaces
    it, so the result never scores below the start. Forward passes only.

    Args:
        x: ``(B, C, H, W)``; theta0: ``(B,)`` starting values; noise: the run's noise;
        generators: one per input.

    Returns:
        :class:`IsotropicSearch` with ``(B,)`` tensors.
    """
    batch = x.shape[0]
    seeds = common_noise_seeds(generators)
    start = [float(t) for t in theta0.detach().flatten().tolist()]
    levels = config.levels
    level = [0] * batch
    best_level = [0] * batch
    best = [0.0] * batch
    start_score = [0.0] * batch
    prediction = [0] * batch
    misses = [0] * batch
    going_up = [True] * batch
    done = [False] * batch
    spent = [0] * batch
    first = True

    def candidate(i: int, k: int) -> float:
        return start[i] * config.ratio**k

    while not all(done):
        active = [i for i in range(batch) if not done[i]]
        laws = [noise.law(candidate(i, level[i]), x.shape[1:]) for i in active]
        counts = common_noise_votes(
            model,
            x[active],
            laws,
            config.samples,
            config.samples_per_pass,
            [seeds[i] for i in active],
        ).cpu()
        for row, i in enumerate(active):
            spent[i] += config.samples
            if first:
                prediction[i] = int(counts[row].argmax())
            n_a = int(counts[row, prediction[i]])
            law = laws[row]
            score = law.min_theta * law_gap_lower(law, n_a, config.samples, config.alpha)
            if first:
                best[i] = start_score[i] = score
            elif score > best[i]:
                best[i], best_level[i], misses[i] = score, level[i], 0
            else:
                misses[i] += 1
            if going_up[i] and misses[i] < config.patience and level[i] < levels:
                level[i] += 1
            elif going_up[i] and best_level[i] == 0 and levels > 0:
                # going up never helped: try below the start (the score is close to unimodal
                # in log theta on common noise, so one direction improving rules out the other)
                going_up[i], misses[i], level[i] = False, 0, -1
            elif not going_up[i] and misses[i] < config.patience and level[i] > -levels:
                level[i] -= 1
            else:
                done[i] = True
        first = False
    device = x.device
    return IsotropicSearch(
        theta=torch.tensor(
            [candidate(i, best_level[i]) for i in range(batch)], dtype=x.dtype, device=device
        ),
        score=torch.tensor(best, dtype=torch.float64, device=device),
        start_score=torch.tensor(start_score, dtype=torch.float64, device=device),
        prediction=torch.tensor(prediction, dtype=torch.int64, device=device),
        forward_equivalents=torch.tensor(spent, dtype=torch.int64, device=device),
    )


def guard_scores(
    model: nn.Module,
    x: torch.Tensor,
    laws: Sequence[NoiseLaw],
    seeds: Sequence[int],
    config: GuardedAncerConfig,
    prediction: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guard's score of one law per input, on ``config.guard_samples`` copies replayed from
    ``seeds`` (:func:`common_noise_votes`): ``gap_lower * (geomean(theta) + guard_kappa *
    min(theta))``, ``theta`` the parameter the law certifies and ``gap_lower`` the gap CERTIFY
    would certify from the hard votes for ``prediction`` (:func:`law_gap_lower` at
    ``config.alpha``; 0 below 1/2) -- ANCER's objective with the soft margin replaced by what
    CERTIFY certifies; with ``guard_kappa = 0`` the proxy radius.

    ``prediction=None`` counts each input's votes for the class they choose.

    Returns:
        ``(scores, prediction)``: float64 ``(B,)`` and the int64 ``(B,)`` classes counted.
    """
    samples = config.guard_samples
    counts = common_noise_votes(model, x, laws, samples, config.guard_samples_per_pass, seeds).cpu()
    chosen = counts.argmax(dim=1) if prediction is None else prediction.cpu()
    scores = []
    for i, law in enumerate(laws):
        gap = law_gap_lower(law, int(counts[i, int(chosen[i])]), samples, config.alpha)
        scores.append(gap * (law.geomean_theta + config.guard_kappa * law.min_theta))
    return torch.tensor(scores, dtype=torch.float64, device=x.device), chosen.to(x.device)


def guard_ancer(
    model: nn.Module,
    x: torch.Tensor,
    theta_iso: torch.Tensor,
    theta_ancer: torch.Tensor,
    noise: Noise,
    config: GuardedAncerConfig,
    generators: Sequence[torch.Generator],
) -> GuardDecision:
    """Keep ANCER's theta only where it beats the isotropic theta on fresh hard votes.

    Both thetas of an input are scored (:func:`guard_scores`) under the laws ``noise`` gives
    them -- what certification will draw -- on ``config.guard_samples`` copies replayed from
    one seed drawn from the input's guard generator (never certification's stream), for the
    class the votes choose under ``theta_iso``. A tie keeps the isotropic theta.

    Args:
        x: ``(B, C, H, W)``; theta_iso: ``(B,)``; theta_ancer: ``(B, C, H, W)``;
        generators: one per input, of its guard stream.
    """
    shape = x.shape[1:]
    iso = theta_iso.detach().to(x.device, x.dtype).view(-1, 1, 1, 1)
    seeds = common_noise_seeds(generators)
    iso_laws = [noise.law(theta, shape) for theta in iso]
    iso_score, prediction = guard_scores(model, x, iso_laws, seeds, config)
    ancer_laws = [noise.law(theta, shape) for theta in theta_ancer]
    ancer_score, _ = guard_scores(model, x, ancer_laws, seeds, config, prediction)
    accepted = ancer_score > iso_score
    theta = torch.where(accepted.view(-1, 1, 1, 1), theta_ancer, iso.expand_as(x))
    return GuardDecision(theta, accepted, ancer_score, iso_score)


def optimize_ancer_guarded(
    model: nn.Module,
    x: torch.Tensor,
    theta_iso: torch.Tensor,
    noise: Noise,
    config: GuardedAncerConfig,
    streams: InputStreams,
    progress: Progress | None = None,
) -> GuardedAncer:
    """ANCER from ``theta_iso`` with few steps and early stopping, then :func:`guard_ancer`.

    The objective is ANCER's (:func:`ancer_objective`, soft top two on ``config.samples``
    fresh float noisy copies per step, drawn from the inputs' ``Stream.ancer`` and clipped to
    ``noise.clip`` as certify's sampler clips them) and theta stays ``>= theta_iso``, but Adam
    steps on ``rho = log(theta / theta_iso) >= 0``: a step scales a coordinate by at most about
    ``e^lr`` whatever the input's scale, so few steps can go far where the classifier does not
    look, and never below the floor (projection ``rho >= 0``).
    Each input stops once the exponential average of its objective (``config.smoothing``) has
    not improved for ``config.patience`` steps, and keeps the theta of its best average. The
    guard then decides under ``noise`` on the inputs' ``Stream.guard``.

    Args:
        x: ``(B, C, H, W)``; theta_iso: ``(B,)``; noise: the run's noise; streams: the inputs'.

    Returns:
        :class:`GuardedAncer`.
    """
    generators = streams.generators(Stream.ancer)
    norm = noise.norm
    batch = x.shape[0]
    floor = theta_iso.detach().to(x.device, x.dtype).view(-1, 1, 1, 1).expand_as(x).contiguous()
    rho = torch.zeros_like(floor)
    best_theta = floor.clone()
    moment = torch.zeros_like(rho)
    second = torch.zeros_like(rho)
    average = torch.zeros(batch, dtype=x.dtype, device=x.device)
    best = torch.full((batch,), -math.inf, dtype=x.dtype, device=x.device)
    misses = torch.zeros(batch, dtype=torch.int64, device=x.device)
    steps = torch.zeros(batch, dtype=torch.int64, device=x.device)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    for iteration in range(1, config.iterations + 1):
        active = (misses < config.patience).nonzero().flatten()
        if active.numel() == 0:
            break
        leaf = rho[active].requires_grad_(True)
        theta = floor[active] * leaf.exp()
        p1, p2 = smoothed_top_two(
            model,
            x[active],
            theta,
            norm,
            config.samples,
            [generators[int(i)] for i in active],
            clip=noise.clip,
        )
        objective = ancer_objective(theta, p1, p2, norm, config.kappa)
        (gradient,) = torch.autograd.grad(objective.sum(), leaf)
        with torch.no_grad():
            objective = objective.detach()
            previous = torch.where(steps[active] == 0, objective, average[active])
            smoothed = config.smoothing * previous + (1 - config.smoothing) * objective
            average[active] = smoothed
            improved = smoothed > best[active]
            best[active[improved]] = smoothed[improved]
            best_theta[active[improved]] = theta.detach()[improved]
            misses[active] = torch.where(improved, 0, misses[active] + 1)
            steps[active] += 1
            # Adam ascent with a per-input step count (inputs stop at different steps)
            t = steps[active].to(x.dtype).view(-1, 1, 1, 1)
            moment[active] = beta1 * moment[active] + (1 - beta1) * gradient
            second[active] = beta2 * second[active] + (1 - beta2) * gradient.square()
            update = (moment[active] / (1 - beta1**t)) / (
                (second[active] / (1 - beta2**t)).sqrt() + epsilon
            )
            rho[active] = (leaf.detach() + config.lr * update).clamp_min(0.0)
        if progress is not None:
            progress(iteration, config.iterations, float(objective.mean()))
    # exp(log) rounding must not take a coordinate below the floor
    best_theta = torch.maximum(best_theta, floor)
    guard = streams.generators(Stream.guard)
    decision = guard_ancer(model, x, theta_iso, best_theta, noise, config, guard)
    return GuardedAncer(
        theta=decision.theta,
        theta_ancer=best_theta,
        guard=decision,
        steps=steps,
        forward_equivalents=STEP_COST * config.samples * steps + 2 * config.guard_samples,
    )


def optimize_certified(
    model: nn.Module,
    x: torch.Tensor,
    theta0: torch.Tensor,
    noise: Noise,
    config: CertifiedSearchConfig,
    streams: InputStreams,
) -> CertifiedSearch:
    """The default optimization of a batch of inputs: :func:`search_isotropic`, then (unless
    ``config.ancer`` is None) :func:`optimize_ancer_guarded` from its theta, every decision
    under ``noise`` (the run's: the law certification will draw).

    Each input's noise comes from its own streams (``streams``, seeded from ``(seed, index)``):
    ``Stream.isotropic`` for the search, ``Stream.ancer`` for the ANCER steps and
    ``Stream.guard`` for the guard -- never ``Stream.certify`` -- so its thetas depend neither on
    the other inputs of the batch nor on the samples that will certify it.

    Args:
        x: ``(B, C, H, W)``; theta0: ``(B,)`` starts; streams: the inputs' (``B`` indices).
    """
    found = search_isotropic(
        model, x, theta0, noise, config.search, streams.generators(Stream.isotropic)
    )
    if config.ancer is None:
        return CertifiedSearch(found.theta, None, found, None, found.forward_equivalents)
    guarded = optimize_ancer_guarded(model, x, found.theta, noise, config.ancer, streams)
    return CertifiedSearch(
        theta_isotropic=found.theta,
        theta=guarded.theta,
        search=found,
        ancer=guarded,
        forward_equivalents=found.forward_equivalents + guarded.forward_equivalents,
    )
