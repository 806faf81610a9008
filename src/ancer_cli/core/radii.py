"""Radii reported for a certified region ``{x + d : ||d / theta||_p <= gap}`` (SPEC section 1)."""

from __future__ import annotations

import math

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


def certified_radius(theta: Theta, gap: float) -> float:
    """Radius of the largest isotropic ball inside the region: ``min(theta) * gap``."""
    return min_theta(theta) * gap


def proxy_radius(theta: Theta, gap: float) -> float:
    """Radius of the isotropic ball with the region's volume: ``geomean(theta) * gap``."""
    return geometric_mean(theta) * gap


def is_valid_theta(theta: Theta) -> bool:
    """True when every entry is finite and strictly positive."""
    if isinstance(theta, torch.Tensor):
        return bool(torch.isfinite(theta).all() and (theta > 0).all())
    return math.isfinite(theta) and theta > 0
