"""The faithful published optimizers of theta; ``IsotropicConfig``/``AncerConfig`` hold the
published schedules.

* Isotropic data-dependent smoothing (Alfarra et al. 2022): scalar theta per input, plain
  gradient ascent on ``theta/2 (Phi^-1(p1) - Phi^-1(p2))`` (l2) or ``theta (p1 - p2)`` (l1).
* ANCER (Eiras et al. 2022): theta of the input's shape, Adam on
  ``G geomean(theta) + kappa G min(theta)`` with ``G = Phi^-1(p1) - Phi^-1(p2)`` (l2) or ``p1 - p2``
  (l1), projecting ``theta >= theta_iso`` after every step.

``p1 >= p2`` are the two largest entries of the Monte Carlo estimate of the smoothed soft
classifier, ``mean_j softmax(f(x + theta * eps_j))``, with fresh noise every iteration
(reparameterization). Many inputs are optimized together; each input draws its noise from its own
generator, so its theta does not depend on which inputs share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ancer_cli.core.choices import Norm
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.noise import draw_base_noise_
from ancer_cli.core.optimize.config import AncerConfig, IsotropicConfig, Progress

P_CLAMP = (1e-3, 1 - 1e-3)
THETA_FLOOR = 1e-4


def _phi_inv(p: torch.Tensor) -> torch.Tensor:
    """``Phi^-1(p)`` exactly as the original packages compute it
    (``torch.distributions.Normal(0, 1).icdf``: ``sqrt(2) erfinv(2p - 1)``). ``torch.special.ndtri``
    is the same function but differs in the last bits for about half of all float32 inputs,
    which would change the published algorithms' thetas on the same noise."""
    return math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)


def smoothed_top_two(
    model: nn.Module,
    x: torch.Tensor,
    theta: torch.Tensor,
    norm: Norm | str,
    samples: int,
    generators: Sequence[torch.Generator],
    clip: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two largest entries ``p1 >= p2`` of the smoothed soft classifier, differentiable in theta.

    Args:
        x: inputs ``(B, C, H, W)``; theta: ``(B, 1, 1, 1)`` (isotropic) or ``(B, C, H, W)``.
        generators: one per input, on ``x``'s device.
        clip: ``(low, high)``: clip the noisy copies to this range, as a sound sampler clips
            them (:attr:`~ancer_cli.core.law.Noise.clip`); ``None``, as the published
            algorithms run, leaves them as they are.

    Returns:
        ``p1, p2``, each of shape ``(B,)``.
    """
    batch = x.shape[0]
    eps = torch.empty((batch, samples, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for i, generator in enumerate(generators):
        draw_base_noise_(eps[i], norm, generator)
    noisy = (x.unsqueeze(1) + theta.unsqueeze(1) * eps).flatten(0, 1)
    if clip is not None:
        noisy = noisy.clamp(*clip)
    tell_thetas(model, theta)  # a denoising base classifier hears each input's theta
    probabilities = torch.softmax(model(noisy), dim=1).view(batch, samples, -1).mean(dim=1)
    top = probabilities.topk(2, dim=1).values
    return top[:, 0], top[:, 1]


def margin_gap(p1: torch.Tensor, p2: torch.Tensor, norm: Norm | str) -> torch.Tensor:
    """``G``: ``Phi^-1(p1) - Phi^-1(p2)`` with p clamped to [0.001, 0.999] (l2), or ``p1 - p2`` (l1)."""
    if Norm(norm) is Norm.l2:
        low, high = P_CLAMP
        return _phi_inv(p1.clamp(low, high)) - _phi_inv(p2.clamp(low, high))
    return p1 - p2


def isotropic_objective(
    theta: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, norm: Norm | str
) -> torch.Tensor:
    """Certified radius proxy of isotropic smoothing: ``theta/2 G`` (l2), ``theta G`` (l1); ``(B,)``."""
    gap = margin_gap(p1, p2, norm)
    return theta.flatten() * gap / 2 if Norm(norm) is Norm.l2 else theta.flatten() * gap


def ancer_objective(
    theta: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, norm: Norm | str, kappa: float
) -> torch.Tensor:
    """``G geomean(theta) + kappa G min(theta)`` per input, ``(B,)``; geomean in log space."""
    gap = margin_gap(p1, p2, norm)
    flat = theta.flatten(1)
    geomean = torch.exp(torch.log(flat).mean(dim=1))
    return gap * geomean + kappa * gap * flat.min(dim=1).values


def optimize_isotropic(
    model: nn.Module,
    x: torch.Tensor,
    theta0: torch.Tensor,
    norm: Norm | str,
    config: IsotropicConfig,
    generators: Sequence[torch.Generator],
    progress: Progress | None = None,
) -> torch.Tensor:
    """Per-input scalar theta by gradient ascent (Alfarra et al. 2022, Algorithm 1).

    Args:
        x: ``(B, C, H, W)``; theta0: ``(B,)`` starting values.

    Returns:
        ``(B,)`` optimized theta, every entry ``>= THETA_FLOOR``.
    """
    theta = theta0.detach().clone().to(x.device, x.dtype).view(-1, 1, 1, 1)
    for iteration in range(1, config.iterations + 1):
        theta.requires_grad_(True)
        p1, p2 = smoothed_top_two(model, x, theta, norm, config.samples, generators)
        objective = isotropic_objective(theta, p1, p2, norm)
        (gradient,) = torch.autograd.grad(objective.sum(), theta)
        with torch.no_grad():
            # the reference let theta go negative; a floor keeps the noise meaningful
            theta = (theta + config.lr * gradient).clamp_min(THETA_FLOOR)
        if progress is not None:
            progress(iteration, config.iterations, float(objective.detach().mean()))
    return theta.detach().flatten()


def optimize_ancer(
    model: nn.Module,
    x: torch.Tensor,
    theta_iso: torch.Tensor,
    norm: Norm | str,
    config: AncerConfig,
    generators: Sequence[torch.Generator],
    progress: Progress | None = None,
) -> torch.Tensor:
    """Per-input, per-pixel theta by projected Adam ascent (ANCER, Eiras et al. 2022, Eq. 4).

    Args:
        x: ``(B, C, H, W)``; theta_iso: ``(B,)`` isotropic thetas, the start and the lower bound.

    Returns:
        ``(B, C, H, W)`` anisotropic thetas, every entry ``>= theta_iso`` of its input.
    """
    floor = theta_iso.detach().to(x.device, x.dtype).view(-1, 1, 1, 1).expand_as(x).contiguous()
    theta = floor.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    for iteration in range(1, config.iterations + 1):
        p1, p2 = smoothed_top_two(model, x, theta, norm, config.samples, generators)
        objective = ancer_objective(theta, p1, p2, norm, config.kappa)
        # autograd.grad, not backward(): only the gradient w.r.t. theta is computed, so a model
        # whose weights still require gradients costs no weight gradients (and keeps its .grad)
        (theta.grad,) = torch.autograd.grad(-objective.sum(), theta)
        optimizer.step()
        with torch.no_grad():
            torch.maximum(theta, floor, out=theta)
        if progress is not None:
            progress(iteration, config.iterations, float(objective.detach().mean()))
    return theta.detach()
