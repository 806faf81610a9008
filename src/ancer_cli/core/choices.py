"""The names and numbers the kernel is chosen by: the norm (and the sigma convention), the
precision of the base classifier, CERTIFY's sample sizes and level, and the defaults of
sequential certification and of reuse.

Nothing here imports PyTorch: the command line reads these to build its options and ``--help``
without loading the kernel.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Norm(str, enum.Enum):
    """The threat model: which norm the certified region is measured in."""

    l2 = "l2"
    l1 = "l1"


class Precision(str, enum.Enum):
    """The floating-point type the base classifier computes in."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def theta_from_sigma(sigma: float, norm: Norm | str) -> float:
    """Natural noise parameter for a noise standard deviation ``sigma``: ``sigma`` (l2) or the
    uniform law's half-width ``sqrt(3) sigma`` (l1)."""
    return sigma * math.sqrt(3.0) if Norm(norm) is Norm.l1 else sigma


def sigma_from_theta(theta: float, norm: Norm | str) -> float:
    """Inverse of :func:`theta_from_sigma`."""
    return theta / math.sqrt(3.0) if Norm(norm) is Norm.l1 else theta


DEFAULT_ALPHA = 0.001
"""Cohen et al.'s failure probability of one certificate, the default of every command."""


@dataclass(frozen=True)
class Sampling:
    """CERTIFY's samples and level (Cohen et al.): ``n_selection`` noisy copies select the class,
    ``n_estimation`` fresh ones bound its probability at level ``alpha``; ``batch_size`` noisy
    copies per forward pass. The defaults are the command's defaults."""

    n_selection: int = 100
    n_estimation: int = 100_000
    alpha: float = DEFAULT_ALPHA
    batch_size: int = 1000


SEQUENTIAL_TOLERANCE = 0.05
"""Sequential adaptive mode: stop once the cap could raise the gap by at most this fraction."""
SEQUENTIAL_FIRST = 100
"""Estimation samples of the first look of sequential certification."""
SEQUENTIAL_GROWTH = 1.5
"""Each look of sequential certification draws about half as many samples again."""
SEQUENTIAL_CAP_SHARE = 0.9
"""Adaptive mode: the share of alpha given to Clopper-Pearson at the cap."""

ZETA_SHARE = 0.1
"""Reuse: the default ``alpha_zeta`` as a share of the earlier run's ``alpha`` (``alpha / 10``)."""
REUSE_TOLERANCE = 0.05
"""Reuse: the largest relative loss of certified radius a reused certificate may have."""
