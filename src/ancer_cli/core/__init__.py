"""The mathematics of randomized smoothing on tensors: noise, votes, bounds, radii, regions.

Nothing here touches files or the terminal; device and dtype come from the inputs. The library
entry points for one input are re-exported here: ``from ancer_cli.core import certify, predict``
with the noise law (``Noise``) and CERTIFY's samples (``Sampling``)
(loaded on first use: :mod:`ancer_cli.core.choices` is read without PyTorch).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower
    from ancer_cli.core.choices import Norm, Sampling
    from ancer_cli.core.law import Noise, NoiseLaw
    from ancer_cli.core.smoothing import Certificate, certify, predict, sample_counts

_EXPORTS = {
    "Certificate": "ancer_cli.core.smoothing",
    "certify": "ancer_cli.core.smoothing",
    "predict": "ancer_cli.core.smoothing",
    "sample_counts": "ancer_cli.core.smoothing",
    "clopper_pearson_lower": "ancer_cli.core.bounds",
    "gap_from_p_lower": "ancer_cli.core.bounds",
    "Norm": "ancer_cli.core.choices",
    "Sampling": "ancer_cli.core.choices",
    "Noise": "ancer_cli.core.law",
    "NoiseLaw": "ancer_cli.core.law",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ancer_cli.core' has no attribute {name!r}")


__all__ = [
    "Certificate",
    "Noise",
    "NoiseLaw",
    "Norm",
    "Sampling",
    "certify",
    "clopper_pearson_lower",
    "gap_from_p_lower",
    "predict",
    "sample_counts",
]
