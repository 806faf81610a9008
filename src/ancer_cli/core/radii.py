"""The two numbers that summarise theta in every results row: ``min(theta)`` and ``geomean(theta)``.

For a certified region ``{x + d : ||d / theta||_p <= gap}``, ``min(theta) * gap`` is the radius of
the largest isotropic ball inside it and ``geomean(theta) * gap`` the radius of the isotropic ball
of the same volume.
"""

from __future__ import annotations

import torch

from ancer_cli.core.noise import Theta


def min_theta(theta: Theta) -> float:
    """Smallest entry of theta (a number for isotropic theta)."""
    if isinstance(theta, torch.Tensor):
        return float(theta.min())
    return float(theta)


def geometric_mean(theta: Theta) -> float:
    """``exp(mean(log theta))``, computed in log space in float64 (d can be 150,528)."""
    if isinstance(theta, torch.Tensor):
        values = theta.detach().double()
        mean = torch.exp(torch.log(values).mean())
        # exp(log(t)) can miss t by an ulp: keep the mean inside [min, max] as it must be
        return float(mean.clamp(values.min(), values.max()))
    return float(theta)
