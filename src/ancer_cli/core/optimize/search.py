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
from ancer_cli.core.noise import Stream, Theta, input_generator, perturb_
from ancer_cli.core.optimize.config import (
    STEP_COST,
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicSearchConfig,
    Progress,
)
from ancer_cli.core.optimize.published import ancer_objective, smoothed_top_two
from ancer_cli.core.radii import geometric_mean, min_theta
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


def certified_gap_lower(n_a: int, n: int, alpha: float, norm: Norm | str) -> float:
    """The gap CERTIFY would certify from ``n_a`` of ``n`` votes: ``Phi^-1(p_lower)`` (l2) or
    ``2 p_lower - 1`` (l1) with ``p_lower`` the Clopper-Pearson bound; 0 when ``p_lower < 1/2``."""
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    return gap_from_p_lower(p_lower, norm) if p_lower >= 0.5 else 0.0


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
    thetas: Sequence[Theta],
    norm: Norm | str,
    samples: int,
    samples_per_pass: int,
    seeds: Sequence[int],
) -> torch.Tensor:
    """Hard votes on ``x[i] + thetas[i] * eps``, ``eps`` replayed from ``seeds[i]``.

    The base noise of input ``i`` depends only on ``seeds[i]``, ``samples`` and
    ``samples_per_pass``: two calls with the same seeds compare their thetas on the same noise.
    One forward pass holds one chunk of every input.

    Args:
        x: ``(B, C, H, W)``; thetas: per input a number or a tensor of the input's shape.

    Returns:
        int64 ``(B, K)`` vote counts on ``x``'s device.
    """
    batch = x.shape[0]
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
        generators.append(generator)
    counts: torch.Tensor | None = None
    for size in chunk_sizes(samples, samples_per_pass):
        noisy = torch.empty((batch, size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        for i in range(batch):
            perturb_(noisy[i], x[i], thetas[i], norm, generators[i])
        tell_thetas(model, thetas)  # a denoising base classifier hears each input's theta
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
    norm: Norm | str,
    config: IsotropicSearchConfig,
    generators: Sequence[torch.Generator],
) -> IsotropicSearch:
    """Per-input scalar theta maximizing a conservative estimate of the certified radius.

    Every candidate ``theta`` of an input is scored on the same ``config.samples`` base noise
    draws (``x + theta * eps``) by the radius CERTIFY would give its hard votes:
    ``theta * Phi^-1(p_lower)`` (l2) or ``theta * (2 p_lower - 1)`` (l1), ``p_lower`` the
    Clopper-Pearson bound at ``config.alpha`` on the votes for the class the votes choose at
    ``theta0``; 0 when ``p_lower < 1/2``. (Holding that class fixed keeps the search from
    certifying the classifier's prior on noise, a different prediction, at a large theta.)
    The walk goes up the geometric grid from ``theta0`` until ``config.patience`` candidates in
    a row fail to beat the best, then, if going up never helped, down likewise. ``theta0`` is
    scored first and only a strictly better score replaces it, so the result never scores
    below the start. Forward passes only.

    Args:
        x: ``(B, C, H, W)``; theta0: ``(B,)`` starting values; generators: one per input.

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
        thetas = [candidate(i, level[i]) for i in active]
        counts = common_noise_votes(
            model,
            x[active],
            thetas,
            norm,
            config.samples,
            config.samples_per_pass,
            [seeds[i] for i in active],
        ).cpu()
        for row, i in enumerate(active):
            spent[i] += config.samples
            if first:
                prediction[i] = int(counts[row].argmax())
            n_a = int(counts[row, prediction[i]])
            score = thetas[row] * certified_gap_lower(n_a, config.samples, config.alpha, norm)
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
    thetas: Sequence[torch.Tensor],
    prediction: torch.Tensor | None,
    norm: Norm | str,
    samples: int,
    samples_per_pass: int,
    seeds: Sequence[int],
    alpha: float,
    kappa: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guard's score of one theta per input, on the base noise replayed from ``seeds``:
    ``gap_lower * (geomean(theta) + kappa * min(theta))``, ``gap_lower`` the certified gap of
    the hard votes for ``prediction`` (0 below 1/2) -- ANCER's objective with the soft margin
    replaced by what CERTIFY certifies; with ``kappa = 0`` the proxy radius.

    ``prediction=None`` counts each input's votes for the class they choose.

    Returns:
        ``(scores, prediction)``: float64 ``(B,)`` and the int64 ``(B,)`` classes counted.
    """
    counts = common_noise_votes(model, x, thetas, norm, samples, samples_per_pass, seeds).cpu()
    chosen = counts.argmax(dim=1) if prediction is None else prediction.cpu()
    scores = []
    for i, theta in enumerate(thetas):
        gap = certified_gap_lower(int(counts[i, int(chosen[i])]), samples, alpha, norm)
        scores.append(gap * (geometric_mean(theta) + kappa * min_theta(theta)))
    return torch.tensor(scores, dtype=torch.float64, device=x.device), chosen.to(x.device)


def guard_ancer(
    model: nn.Module,
    x: torch.Tensor,
    theta_iso: torch.Tensor,
    theta_ancer: torch.Tensor,
    norm: Norm | str,
    config: GuardedAncerConfig,
    guard_generators: Sequence[torch.Generator],
) -> GuardDecision:
    """Keep ANCER's theta only where it beats the isotropic theta on fresh hard votes.

    Both thetas of an input are scored (:func:`guard_scores`, ``config.guard_kappa``) on the
    same ``config.guard_samples`` base noise draws, replayed from a seed drawn from the input's
    guard generator (never certification's stream), for the class the votes choose under
    ``theta_iso``. A tie keeps the isotropic theta.

    Args:
        x: ``(B, C, H, W)``; theta_iso: ``(B,)``; theta_ancer: ``(B, C, H, W)``.
    """
    iso = theta_iso.detach().to(x.device, x.dtype).view(-1, 1, 1, 1)
    seeds = common_noise_seeds(guard_generators)
    common = (config.guard_samples, config.guard_samples_per_pass, seeds, config.alpha)
    iso_score, prediction = guard_scores(
        model, x, list(iso), None, norm, *common, config.guard_kappa
    )
    ancer_score, _ = guard_scores(
        model, x, list(theta_ancer), prediction, norm, *common, config.guard_kappa
    )
    accepted = ancer_score > iso_score
    theta = torch.where(accepted.view(-1, 1, 1, 1), theta_ancer, iso.expand_as(x))
    return GuardDecision(theta, accepted, ancer_score, iso_score)


def optimize_ancer_guarded(
    model: nn.Module,
    x: torch.Tensor,
    theta_iso: torch.Tensor,
    norm: Norm | str,
    config: GuardedAncerConfig,
    generators: Sequence[torch.Generator],
    guard_generators: Sequence[torch.Generator],
    progress: Progress | None = None,
) -> GuardedAncer:
    """ANCER from ``theta_iso`` with few steps and early stopping, then :func:`guard_ancer`.

    The objective is ANCER's (:func:`ancer_objective`, soft top two on ``config.samples``
    fresh noisy copies per step, drawn from ``generators``) and theta stays ``>= theta_iso``,
    but Adam steps on ``rho = log(theta / theta_iso) >= 0``: a step scales a coordinate by at
    most about ``e^lr`` whatever the input's scale, so few steps can go far where the classifier
    does not look, and never below the floor (projection ``rho >= 0``). Each input stops once
    the exponential average of its objective (``config.smoothing``) has not improved for
    ``config.patience`` steps, and keeps the theta of its best average.

    Args:
        x: ``(B, C, H, W)``; theta_iso: ``(B,)``; generators, guard_generators: one per input.

    Returns:
        :class:`GuardedAncer`.
    """
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
            model, x[active], theta, norm, config.samples, [generators[int(i)] for i in active]
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
    decision = guard_ancer(model, x, theta_iso, best_theta, norm, config, guard_generators)
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
    indices: Sequence[int],
    theta0: torch.Tensor,
    norm: Norm | str,
    config: CertifiedSearchConfig,
    seed: int,
) -> CertifiedSearch:
    """The default optimization of a batch of inputs: :func:`search_isotropic`, then (unless
    ``config.ancer`` is None) :func:`optimize_ancer_guarded` from its theta.

    Each input's noise comes from its own streams, seeded from ``(seed, index)``:
    ``Stream.isotropic`` for the search, ``Stream.ancer`` for the ANCER steps and
    ``Stream.guard`` for the guard -- never ``Stream.certify`` -- so its thetas depend neither on
    the other inputs of the batch nor on the samples that will certify it.

    Args:
        x: ``(B, C, H, W)``; indices: the ``B`` dataset indices; theta0: ``(B,)`` starts.
    """
    device = x.device
    found = search_isotropic(
        model,
        x,
        theta0,
        norm,
        config.search,
        [input_generator(seed, i, device, Stream.isotropic) for i in indices],
    )
    if config.ancer is None:
        return CertifiedSearch(found.theta, None, found, None, found.forward_equivalents)
    guarded = optimize_ancer_guarded(
        model,
        x,
        found.theta,
        norm,
        config.ancer,
        [input_generator(seed, i, device, Stream.ancer) for i in indices],
        [input_generator(seed, i, device, Stream.guard) for i in indices],
    )
    return CertifiedSearch(
        theta_isotropic=found.theta,
        theta=guarded.theta,
        search=found,
        ancer=guarded,
        forward_equivalents=found.forward_equivalents + guarded.forward_equivalents,
    )
