"""ancer: certify image classifiers with randomized smoothing.

Isotropic (Cohen et al. 2019), data-dependent isotropic (Alfarra et al. 2022) and anisotropic
(ANCER, Eiras et al. 2022) certificates for l2 and l1 perturbations.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower
from ancer_cli.core.smoothing import Certificate, certify, predict, sample_counts
from ancer_cli.errors import AncerError

__all__ = [
    "AncerError",
    "Certificate",
    "__version__",
    "certify",
    "clopper_pearson_lower",
    "gap_from_p_lower",
    "predict",
    "sample_counts",
]
