"""The mathematics of randomized smoothing on tensors: noise, votes, bounds, radii, regions.

Nothing here touches files or the terminal; device and dtype come from the inputs. The library
entry points for one input are re-exported here: ``from ancer_cli.core import certify, predict``.
"""

from __future__ import annotations

from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower
from ancer_cli.core.smoothing import Certificate, certify, predict, sample_counts

__all__ = [
    "Certificate",
    "certify",
    "clopper_pearson_lower",
    "gap_from_p_lower",
    "predict",
    "sample_counts",
]
