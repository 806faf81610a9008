"""The optimizers' settings, in one place: a frozen dataclass per optimizer (the defaults are the
command's defaults) with what one input costs in forward-equivalents, and the progress callback."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Progress = Callable[[int, int, float], None]
"""``progress(iteration, iterations, mean_objective)`` after every step."""

STEP_COST = 3
"""Forward-equivalents of one noisy sample in a gradient step: a forward and a backward pass,
the backward counting as two forwards."""


@dataclass(frozen=True)
class IsotropicConfig:
    """Isotropic data-dependent optimization; the defaults are the command's defaults."""

    iterations: int = 900
    lr: float = 0.04
    samples: int = 100

    @property
    def forward_equivalents(self) -> int:
        """What one input costs (every input takes every step)."""
        return STEP_COST * self.iterations * self.samples


@dataclass(frozen=True)
class AncerConfig:
    """ANCER anisotropic optimization; the defaults are the command's defaults."""

    iterations: int = 100
    lr: float = 0.04
    samples: int = 100
    kappa: float = 2.0

    @property
    def forward_equivalents(self) -> int:
        """What one input costs (every input takes every step)."""
        return STEP_COST * self.iterations * self.samples


@dataclass(frozen=True)
class IsotropicSearchConfig:
    """The certified isotropic search (:func:`~.search.search_isotropic`); the defaults are the
    command's defaults.

    Candidates are ``theta0 * ratio**k`` for ``|k| <= levels``, ``levels = round(log(max_factor)
    / log(ratio))``: the base classifier was trained at ``theta0``, and at ``4 theta0`` (sigma
    1.0 for a sigma-0.25 model, a noise std as large as the whole [0, 1] pixel range) the noise
    drowns the input, where only the classifier's prior on noise is left to vote.
    """

    samples: int = 1024
    """noisy copies per candidate, the same base noise for every candidate of an input"""
    samples_per_pass: int = 256
    """noisy copies of one input per forward pass (the chunks the noise is drawn in)"""
    ratio: float = 2.0**0.25
    max_factor: float = 4.0
    patience: int = 2
    """consecutive candidates without a better score before a direction is abandoned"""
    alpha: float = 0.001
    """level of the Clopper-Pearson lower bound the candidates are scored with"""

    @property
    def levels(self) -> int:
        return max(0, round(math.log(self.max_factor) / math.log(self.ratio)))

    @property
    def max_candidates(self) -> int:
        """The most candidates one input can score: the start, then either the whole way up,
        or ``patience`` failures up and the whole way down."""
        return 1 + max(self.levels, min(self.patience, self.levels) + self.levels)

    @property
    def max_forward_equivalents(self) -> int:
        """The most forward passes one input can cost (forward passes only)."""
        return self.max_candidates * self.samples


@dataclass(frozen=True)
class GuardedAncerConfig:
    """ANCER from the searched isotropic theta, then the guard
    (:func:`~.search.optimize_ancer_guarded`)."""

    iterations: int = 30
    """at most this many Adam steps (each a forward and a backward pass of ``samples``)"""
    lr: float = 0.3
    """Adam's step on ``log(theta / theta_iso)``: a coordinate grows by at most ~e^lr a step"""
    samples: int = 64
    kappa: float = 2.0
    """ANCER's objective ``G geomean(theta) + kappa G min(theta)`` during the steps"""
    patience: int = 5
    """steps without a better (smoothed) objective before an input stops"""
    smoothing: float = 0.8
    """weight of the past in the exponential average of the objective that early stopping
    watches (each step's estimate is noisy: fresh noise every step, as in the reference)"""
    guard_samples: int = 2048
    """fresh noisy copies per theta (common to both) on which the guard compares them"""
    guard_samples_per_pass: int = 256
    guard_kappa: float = 2.0
    """the guard compares ``gap_lower * (geomean(theta) + guard_kappa * min(theta))``: ANCER's
    objective on hard votes (0 compares the proxy radius alone)"""
    alpha: float = 0.001
    """level of the guard's Clopper-Pearson lower bounds"""

    @property
    def max_forward_equivalents(self) -> int:
        """The most forward-equivalents one input can cost (a backward pass counts as 2)."""
        return STEP_COST * self.iterations * self.samples + 2 * self.guard_samples


@dataclass(frozen=True)
class CertifiedSearchConfig:
    """Both new stages; ``ancer=None`` stops after the isotropic search."""

    search: IsotropicSearchConfig = IsotropicSearchConfig()
    ancer: GuardedAncerConfig | None = GuardedAncerConfig()

    @property
    def max_forward_equivalents(self) -> int:
        extra = 0 if self.ancer is None else self.ancer.max_forward_equivalents
        return self.search.max_forward_equivalents + extra
