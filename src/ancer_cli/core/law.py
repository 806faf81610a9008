"""The smoothing noise of one input as one value, as Cohen et al.'s ``Smooth`` keeps its sigma.

A :class:`NoiseLaw` is the norm, the input's theta (a number, or a tensor of the input's shape),
where the noise is drawn -- exactly on the data's pixel grid (:mod:`ancer_cli.core.sound`) or in
float arithmetic (:func:`~ancer_cli.core.noise.perturb_`) -- and the total-variation budget
``tau`` a certificate pays for the sampler. The kernel (:mod:`ancer_cli.core.smoothing`,
:mod:`ancer_cli.core.incremental`) takes laws, never the four loose parameters.

A run's :class:`Noise` (norm and grid) gives each input its law from its theta:
``Noise(norm, grid).law(theta, shape)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ancer_cli.core.bounds import gap_from_p_lower
from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta, perturb_
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.sound import (
    CLIP_UNITS,
    draw_sound_,
    sound_theta,
    to_grid,
    total_variation_budget,
)


@dataclass(frozen=True)
class NoiseLaw:
    """One input's noise: ``eps = theta * z`` (l2, ``z ~ N(0, I)``) or ``theta * u`` (l1, ``u ~
    U[-1, 1]^d``), drawn on the ``1 / grid`` pixel grid (``grid`` levels, sound) or in float
    arithmetic (``grid=None``). ``theta`` is the parameter certificates state (on the grid, l1:
    the grid half-width); ``tau`` the total-variation budget taken off ``pA``'s lower bound."""

    norm: Norm
    theta: Theta
    grid: int | None = None
    tau: float = 0.0

    @property
    def sound(self) -> bool:
        """Whether the noise is drawn exactly on the data's grid."""
        return self.grid is not None

    @property
    def min_theta(self) -> float:
        return min_theta(self.theta)

    @property
    def geomean_theta(self) -> float:
        return geometric_mean(self.theta)

    def gap(self, p_a_lower: float) -> float:
        """The certified gap for a lower bound on ``pA`` (``>= 1/2``)."""
        return gap_from_p_lower(p_a_lower, self.norm)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the sampler adds noise to it: ``x`` itself (float noise) or its integer
        pixel values on the grid (sound noise; ``ValueError`` for an input off the grid)."""
        return x if self.grid is None else to_grid(x, self.grid)

    def draw_(
        self, out: torch.Tensor, prepared: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Fill ``out`` ``(b, *x.shape)`` with noisy copies of the input (``prepared`` by
        :meth:`prepare`) from ``generator`` and return it."""
        if self.grid is None:
            return perturb_(out, prepared, self.theta, self.norm, generator)
        return draw_sound_(out, prepared, self.theta, self.norm, self.grid, generator)


@dataclass(frozen=True)
class Noise:
    """A run's noise: its norm and its grid (``None``: float noise). :meth:`law` gives each
    input its :class:`NoiseLaw`."""

    norm: Norm = Norm.l2
    grid: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm(self.norm))

    @property
    def clip(self) -> tuple[float, float] | None:
        """The range the noisy copies are clipped to, in data units: ``(-K, K + 1)`` on the grid
        (:data:`~ancer_cli.core.sound.CLIP_UNITS`; part of the base classifier certify smooths),
        ``None`` for float noise (never clipped)."""
        return None if self.grid is None else (-float(CLIP_UNITS), float(CLIP_UNITS + 1))

    def law(self, theta: Theta, shape: tuple[int, ...] | torch.Size) -> NoiseLaw:
        """The law of an input of ``shape`` smoothed with ``theta``: on the grid, the theta the
        sampler certifies (:func:`~ancer_cli.core.sound.sound_theta`, idempotent) and its
        budget ``tau``."""
        if self.grid is None:
            return NoiseLaw(self.norm, theta)
        certified = sound_theta(theta, self.norm, self.grid)
        tau = total_variation_budget(certified, self.norm, self.grid, tuple(shape))
        return NoiseLaw(self.norm, certified, self.grid, tau)
