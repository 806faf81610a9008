"""The numbers that summarise a certified region in a results row.

For a certified region ``{x + d : ||d / theta||_p <= gap}``, ``min(theta) * gap`` is the radius of
the largest isotropic ball inside it and ``geomean(theta) * gap`` the radius of the isotropic ball
of the same volume; :func:`linf_half_width` is the half-width of the largest l-infinity box
``{x + d : |d_i| <= r}`` inside it.
"""

from __future__ import annotations

import math

import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta
from ancer_cli.core.regions import rounding_slack


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


def _scalar_and_dim(theta: Theta, dim: int | None) -> tuple[float | None, int]:
    """``(theta as a number or None, d)``: a number or a one-entry tensor is isotropic and needs the
    input's dimension ``dim``; a tensor of several entries has ``d = numel``."""
    if isinstance(theta, torch.Tensor) and theta.numel() > 1:
        if dim is not None and dim != theta.numel():
            raise ValueError(f"theta has {theta.numel()} entries but the input has {dim}")
        return None, theta.numel()
    if dim is None or dim < 1:
        raise ValueError(f"an isotropic theta needs the input's dimension d >= 1, got {dim}")
    return float(theta), dim


_SMALLEST = 2.0**-960
"""Widths below this are reported as 0: the float64 arithmetic's relative error bound holds for
normal numbers only, and no certificate is that small."""


def linf_half_width(theta: Theta, gap: float, norm: Norm | str, dim: int | None = None) -> float:
    """Half-width ``r`` of the largest l-infinity box ``{x + d : max_i |d_i| <= r}`` inside the
    certified region ``{x + d : ||d / theta||_p <= gap}``, rounded down.

    Over the box, ``||d / theta||_p`` is largest at a corner ``d = r s`` (``s_i = +-1``): by
    Hoelder, ``||d / theta||_p <= ||d||_inf ||1 / theta||_p`` with equality at every corner. So the
    box lies in the region iff ``r ||1 / theta||_p <= gap``:

    * l2 (ellipsoid): ``r = gap / ||1 / theta||_2``; isotropic, ``gap theta / sqrt(d) = radius /
      sqrt(d)``;
    * l1 (generalized cross-polytope): ``r = gap / sum_i 1 / theta_i``; isotropic,
      ``gap theta / d = radius / d``.

    Computed in float64 and multiplied by ``1 - rounding_slack(d)``: the sum carries a relative
    error below ``(d + 3) u`` with the square root and division (``u = 2^-53``), far under the
    slack ``8 (d + 4) u``, so the box returned is never larger than the exact one.

    Args:
        theta: a positive number (isotropic) or a positive tensor of the input's shape.
        gap: the certificate's gap, ``>= 0``.
        dim: the input's dimension ``d``; required for an isotropic theta (a number or a
            one-entry tensor), checked against ``theta.numel()`` otherwise.
    """
    value, dim = _scalar_and_dim(theta, dim)
    gap = float(gap)
    if gap <= 0:
        return 0.0
    p = 2 if Norm(norm) is Norm.l2 else 1
    if value is not None:
        width = gap * value / (math.sqrt(dim) if p == 2 else dim)
    else:
        assert isinstance(theta, torch.Tensor)
        inverse = 1.0 / theta.detach().to(dtype=torch.float64).flatten()
        weight = float(torch.sqrt((inverse * inverse).sum()) if p == 2 else inverse.sum())
        width = gap / weight
    if not width >= _SMALLEST:  # near subnormal numbers the relative error bound fails
        return 0.0
    return width * (1.0 - rounding_slack(dim))


def linf_half_width_of_radius(
    theta: Theta, radius: float, norm: Norm | str, dim: int | None = None
) -> float:
    """:func:`linf_half_width` of a certificate known by its radius ``min(theta) * gap`` (what a
    results row stores, with ``min_sigma``), rounded down.

    ``gap = radius / min(theta)``; the one more rounding of that division is inside the slack. A
    radius written rounded toward zero only makes the box smaller.
    """
    return linf_half_width(theta, float(radius) / min_theta(theta), norm, dim)
