"""ancer: certify image classifiers with randomized smoothing.

Isotropic (Cohen et al. 2019), data-dependent isotropic (Alfarra et al. 2022) and anisotropic
(ANCER, Eiras et al. 2022) certificates for l2 and l1 perturbations.

CERTIFY and PREDICT for one input live in :mod:`ancer_cli.core` (``from ancer_cli.core import
certify, predict``): the package's own modules ``ancer_cli.certify`` and ``ancer_cli.predict`` are
the dataset loops, and a submodule import would shadow a function of the same name here.

The names below are loaded on first use, so that importing the package (as the command line
does to print its help) does not load PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ancer_cli.errors import AncerError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ancer_cli.core import Certificate, clopper_pearson_lower, gap_from_p_lower, sample_counts

_FROM_CORE = ("Certificate", "clopper_pearson_lower", "gap_from_p_lower", "sample_counts")


def __getattr__(name: str) -> Any:
    if name in _FROM_CORE:
        from ancer_cli import core

        return getattr(core, name)
    raise AttributeError(f"module 'ancer_cli' has no attribute {name!r}")


__all__ = [
    "AncerError",
    "Certificate",
    "__version__",
    "clopper_pearson_lower",
    "gap_from_p_lower",
    "sample_counts",
]
