"""Monte Carlo votes of the smoothed classifier, CERTIFY and PREDICT (Cohen et al. 2019).

Generalized to per-coordinate theta and to l1 (uniform) noise. All sampling stays on the
model's device: noise is drawn in place into one preallocated buffer, the input and theta are
broadcast, votes are counted on device as int64 and come to the host once per input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower, top_two_p_value
from ancer_cli.core.noise import Norm, Theta, perturb_
from ancer_cli.core.radii import geometric_mean, min_theta

ABSTAIN = -1


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


def _model_dtype(model: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return default


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
) -> torch.Tensor:
    """Votes of the base classifier on ``num`` noisy copies of ``x``.

    Args:
        model: maps a batch ``(b, C, H, W)`` in [0, 1] to logits ``(b, K)``.
        x: one input ``(C, H, W)`` on the model's device.
        theta: a positive number, or a positive tensor of ``x``'s shape on the same device.
        num: number of noisy samples; ``batch_size``: samples per forward pass.
        generator: the input's random stream, on ``x``'s device.

    Returns:
        int64 tensor ``(K,)`` of vote counts, on ``x``'s device.
    """
    batch = min(batch_size, num)
    buffer = torch.empty((batch, *x.shape), dtype=x.dtype, device=x.device)
    counts: torch.Tensor | None = None
    if num_classes is not None:
        counts = torch.zeros(num_classes, dtype=torch.int64, device=x.device)
    remaining = num
    while remaining > 0:
        size = min(batch, remaining)
        chunk = perturb_(buffer[:size], x, theta, norm, generator)
        logits = model(chunk)
        if counts is None:
            counts = torch.zeros(logits.shape[1], dtype=torch.int64, device=x.device)
        counts += torch.bincount(logits.argmax(dim=1), minlength=counts.numel())
        remaining -= size
    assert counts is not None
    return counts


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
) -> Certificate:
    """CERTIFY: select the class on ``n_selection`` samples, bound its probability on
    ``n_estimation`` fresh samples, and return the certificate (abstain if ``pA_low < 0.5``)."""
    selection = sample_counts(model, x, theta, norm, n_selection, batch_size, generator)
    estimation = sample_counts(
        model, x, theta, norm, n_estimation, batch_size, generator, selection.numel()
    )
    both = torch.stack([selection, estimation]).cpu().numpy()  # the one host transfer
    c_a_hat = int(np.argmax(both[0]))
    n_a = int(both[1, c_a_hat])
    p_a_lower = clopper_pearson_lower(n_a, n_estimation, alpha)
    low, mean = min_theta(theta), geometric_mean(theta)
    if p_a_lower < 0.5:
        return Certificate(ABSTAIN, n_a, n_estimation, p_a_lower, 0.0, low, mean)
    gap = gap_from_p_lower(p_a_lower, norm)
    return Certificate(c_a_hat, n_a, n_estimation, p_a_lower, gap, low, mean)


def predict(
    model: nn.Module,
    x: torch.Tensor,
    theta: Theta,
    norm: Norm | str,
    num: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator,
) -> int:
    """PREDICT: the top class of ``num`` noisy votes, or ``ABSTAIN`` unless the binomial test
    of top class against runner-up rejects at level ``alpha``."""
    counts = sample_counts(model, x, theta, norm, num, batch_size, generator).cpu().numpy()
    order = np.argsort(-counts, kind="stable")
    n1 = int(counts[order[0]])
    n2 = int(counts[order[1]]) if counts.size > 1 else 0
    if top_two_p_value(n1, n2) > alpha:
        return ABSTAIN
    return int(order[0])
