"""Losses of the base-classifier training methods: pure functions on tensors, no loop, no files.

Every loss takes the model, a batch ``x`` of shape ``(B, C, H, W)`` with labels ``y`` of shape
``(B,)``, the noise (``norm`` and its natural parameter ``theta``, see
:mod:`ancer_cli.core.noise`) and the generator that draws the batch's noise; it returns the loss
to minimise (a 0-d tensor) and the logits ``(B, K)`` of the first noisy copy, which the training
loop counts for its accuracy. Noisy copies are laid out copy-major: row ``i * B + b`` of a
forward pass is copy ``i`` of input ``b``.

* :func:`noise_loss` -- cross-entropy on noisy copies (Gaussian augmentation, Cohen et al. 2019;
  uniform noise for l1, Yang et al. 2020).
* :func:`stability_loss` -- plus the KL divergence from the first copy's prediction to the
  others' (stability training, Li et al. 2019), RS4A's recipe for l1.
* :func:`consistency_loss` -- plus the KL divergence from the mean prediction to each copy's and
  the entropy of the mean prediction (Jeong & Shin, NeurIPS 2020).
* :func:`macer_loss` -- cross-entropy of the soft smoothed classifier plus a hinge on its soft
  certified l2 radius (MACER, Zhai et al., ICLR 2020).
* :func:`smoothadv_loss` -- cross-entropy on noisy copies of the point that PGD on the soft
  smoothed classifier found in an l2 ball (SmoothAdv, Salman et al., NeurIPS 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import draw_base_noise_

PROBABILITY_FLOOR = 1e-20
"""Probabilities are clamped to this before a logarithm (entropy, the attack's loss): a class
the soft classifier gives probability 0 contributes 0 instead of NaN."""
MACER_PROBABILITY_FLOOR = 1e-10
"""Added to the mean softmax before MACER's logarithm, as in Zhai et al.'s code."""


def draw_noise(
    x: torch.Tensor, copies: int, theta: float, norm: Norm, generator: torch.Generator
) -> torch.Tensor:
    """Noise for ``copies`` noisy copies of ``x``: ``theta`` times unit noise, shape
    ``(copies * B, C, H, W)``, drawn with one call on ``generator``."""
    eps = torch.empty((copies * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    draw_base_noise_(eps, norm, generator)
    return theta * eps


def noisy_copies(
    x: torch.Tensor, copies: int, theta: float, norm: Norm, generator: torch.Generator
) -> torch.Tensor:
    """``copies`` noisy copies of ``x`` (copy-major), shape ``(copies * B, C, H, W)``."""
    return x.repeat(copies, 1, 1, 1) + draw_noise(x, copies, theta, norm, generator)


def noise_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    theta: float,
    norm: Norm,
    generator: torch.Generator,
    copies: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over ``copies`` noisy copies of each input (Cohen et al. 2019)."""
    logits = model(noisy_copies(x, copies, theta, norm, generator))
    return F.cross_entropy(logits, y.repeat(copies)), logits[: x.shape[0]]


def stability_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    theta: float,
    norm: Norm,
    generator: torch.Generator,
    weight: float,
    copies: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`noise_loss` plus ``weight`` times the mean KL divergence ``KL(p_0 || p_i)`` from
    the first copy's prediction to each further copy's, ``i = 1 .. copies - 1`` (stability
    training, Li et al. 2019). Needs ``copies >= 2``."""
    batch = x.shape[0]
    logits = model(noisy_copies(x, copies, theta, norm, generator))
    loss = F.cross_entropy(logits, y.repeat(copies))
    log_p = F.log_softmax(logits, dim=1).view(copies, batch, -1)
    first = log_p[0].unsqueeze(0).expand(copies - 1, -1, -1)
    kl = F.kl_div(log_p[1:], first, log_target=True, reduction="sum") / (batch * (copies - 1))
    return loss + weight * kl, logits[:batch]


def consistency_terms(
    logits: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of consistency regularization (Jeong & Shin 2020, eq. 9) from the logits
    ``(m, B, K)`` of ``m`` noisy copies of ``B`` inputs:

    * the cross-entropy ``mean_i CE(logits_i, y)``,
    * the KL term ``mean_i KL(p_hat || p_i)``, with ``p_i = softmax(logits_i)`` and ``p_hat``
      their mean (gradients flow through ``p_hat`` too, as in the paper's code),
    * the entropy ``H(p_hat)``,

    each averaged over the batch.
    """
    copies, batch, classes = logits.shape
    cross_entropy = F.cross_entropy(logits.reshape(copies * batch, classes), y.repeat(copies))
    log_p = F.log_softmax(logits, dim=2)
    p_hat = log_p.exp().mean(0)
    log_p_hat = torch.log(p_hat.clamp(min=PROBABILITY_FLOOR))
    kl = (p_hat * (log_p_hat - log_p)).sum(2).mean()
    entropy = -(p_hat * log_p_hat).sum(1).mean()
    return cross_entropy, kl, entropy


def consistency_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    theta: float,
    norm: Norm,
    generator: torch.Generator,
    copies: int,
    weight: float,
    entropy_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consistency regularization (Jeong & Shin 2020): ``CE + weight * KL + entropy_weight * H``
    of :func:`consistency_terms` on ``copies`` noisy copies of each input."""
    batch = x.shape[0]
    logits = model(noisy_copies(x, copies, theta, norm, generator))
    cross_entropy, kl, entropy = consistency_terms(logits.view(copies, batch, -1), y)
    return cross_entropy + weight * kl + entropy_weight * entropy, logits[:batch]


def macer_terms(
    logits: torch.Tensor, y: torch.Tensor, sigma: float, beta: float, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MACER's two terms (Zhai et al. 2020, Algorithm 1) from the logits ``(k, B, K)`` of ``k``
    Gaussian copies of ``B`` inputs, each summed over the batch:

    * classification: ``-log z_y`` with ``z`` the mean softmax of the logits (plus
      :data:`MACER_PROBABILITY_FLOOR`);
    * robustness: ``sigma / 2 * max(margin - xi, 0)`` over the inputs the soft smoothed
      classifier gets right, ``xi = Phi^-1(z'_y) - Phi^-1(max_{c != y} z'_c)`` with ``z'`` the
      mean softmax of ``beta`` times the logits -- ``sigma / 2 * xi`` is the soft classifier's
      certified l2 radius (Cohen et al.'s bound on the soft scores).

    As in Zhai et al.'s code, the inverse temperature ``beta`` enters only the robustness term,
    and an input whose ``xi`` is not finite (a score of exactly 0 or 1: its radius is infinite)
    adds nothing; the other inputs are the only ones ``Phi^-1`` is evaluated on with gradients,
    so no infinite derivative reaches the model.
    """
    mean_softmax = F.softmax(logits, dim=2).mean(0)
    classification = F.nll_loss(
        torch.log(mean_softmax + MACER_PROBABILITY_FLOOR), y, reduction="sum"
    )
    soft = F.softmax(beta * logits, dim=2).mean(0)
    top2 = soft.topk(2, dim=1)
    first, second = top2.values[:, 0], top2.values[:, 1]
    correct = top2.indices[:, 0] == y
    with torch.no_grad():
        xi = torch.special.ndtri(first) - torch.special.ndtri(second)
        active = correct & torch.isfinite(xi) & (xi <= margin)
    xi_active = torch.special.ndtri(first[active]) - torch.special.ndtri(second[active])
    robustness = sigma / 2 * (margin - xi_active).sum()
    return classification, robustness


def macer_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    generator: torch.Generator,
    copies: int,
    weight: float,
    beta: float,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MACER (Zhai et al. 2020) on ``copies`` Gaussian copies of each input:
    ``(classification + weight * robustness) / B`` of :func:`macer_terms`. l2 only: the
    robustness term is the Gaussian-smoothing radius."""
    batch = x.shape[0]
    logits = model(noisy_copies(x, copies, sigma, Norm.l2, generator))
    classification, robustness = macer_terms(logits.view(copies, batch, -1), y, sigma, beta, margin)
    return (classification + weight * robustness) / batch, logits[:batch]


def soft_smoothed_nll(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``-log G(x)_y`` per input, shape ``(B,)``: ``G(x)`` the soft smoothed classifier,
    estimated as the mean softmax over the noisy copies ``x + noise_i`` (``noise`` of shape
    ``(m * B, C, H, W)``, copy-major), clamped at :data:`PROBABILITY_FLOOR`."""
    batch = x.shape[0]
    copies = noise.shape[0] // batch
    logits = model(x.repeat(copies, 1, 1, 1) + noise)
    mean_softmax = F.softmax(logits, dim=1).view(copies, batch, -1).mean(0)
    return -torch.log(mean_softmax.clamp(min=PROBABILITY_FLOOR)).gather(1, y[:, None])[:, 0]


def _l2_norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))


def smoothadv_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    eps: float,
    steps: int,
) -> torch.Tensor:
    """SmoothAdv's PGD (Salman et al. 2019): ``steps`` normalised-gradient ascent steps of size
    ``2 * eps / steps`` on :func:`soft_smoothed_nll` with the fixed draws ``noise``, each followed
    by a clip of ``x + delta`` to the pixel range [0, 1] and a projection of ``delta`` on the l2
    ball of radius ``eps`` (a rescaling, which keeps the clip). Starts at ``x``; an input whose
    gradient vanishes does not move. Runs the model in eval mode (as the paper's code does) and
    restores its mode; returns the adversarial points ``x + delta``, detached, shape of ``x``.
    """
    was_training = model.training
    model.eval()
    step_size = 2 * eps / steps
    delta = torch.zeros_like(x)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = soft_smoothed_nll(model, x + delta, y, noise).sum()
            (grad,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                direction = grad / _l2_norms(grad).clamp(min=torch.finfo(grad.dtype).tiny)
                delta = (x + delta + step_size * direction).clamp(0.0, 1.0) - x
                delta = delta * (eps / _l2_norms(delta).clamp(min=eps))
    finally:
        model.train(was_training)
    return (x + delta).detach()


def smoothadv_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    theta: float,
    norm: Norm,
    generator: torch.Generator,
    copies: int,
    eps: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothAdv training (Salman et al. 2019): ``copies`` noise draws per input, the attack
    :func:`smoothadv_attack` with those draws, then the mean cross-entropy on the adversarial
    points plus the same draws. The attack is an l2 PGD (``norm`` l2)."""
    batch = x.shape[0]
    noise = draw_noise(x, copies, theta, norm, generator)
    adversarial = smoothadv_attack(model, x, y, noise, eps, steps)
    logits = model(adversarial.repeat(copies, 1, 1, 1) + noise)
    return F.cross_entropy(logits, y.repeat(copies)), logits[:batch]
