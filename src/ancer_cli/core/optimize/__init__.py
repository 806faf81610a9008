"""Per-input optimization of the smoothing parameter theta: the mathematics on tensors.

* :mod:`~ancer_cli.core.optimize.config` -- every optimizer's settings (defaults in one place).
* :mod:`~ancer_cli.core.optimize.published` -- the faithful published algorithms: isotropic
  data-dependent smoothing (Alfarra et al. 2022) and ANCER (Eiras et al. 2022).
* :mod:`~ancer_cli.core.optimize.search` -- the default optimization: the certified isotropic
  search and the guarded ANCER stage, scored on hard votes.
"""

from ancer_cli.core.optimize.config import (
    STEP_COST,
    AncerConfig,
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
    Progress,
)
from ancer_cli.core.optimize.published import (
    THETA_FLOOR,
    ancer_objective,
    isotropic_objective,
    margin_gap,
    optimize_ancer,
    optimize_isotropic,
    smoothed_top_two,
)
from ancer_cli.core.optimize.search import (
    CertifiedSearch,
    GuardDecision,
    GuardedAncer,
    IsotropicSearch,
    certified_gap_lower,
    guard_ancer,
    optimize_ancer_guarded,
    optimize_certified,
    search_isotropic,
)

__all__ = [
    "STEP_COST",
    "THETA_FLOOR",
    "AncerConfig",
    "CertifiedSearch",
    "CertifiedSearchConfig",
    "GuardDecision",
    "GuardedAncer",
    "GuardedAncerConfig",
    "IsotropicConfig",
    "IsotropicSearch",
    "IsotropicSearchConfig",
    "Progress",
    "ancer_objective",
    "certified_gap_lower",
    "guard_ancer",
    "isotropic_objective",
    "margin_gap",
    "optimize_ancer",
    "optimize_ancer_guarded",
    "optimize_certified",
    "optimize_isotropic",
    "search_isotropic",
    "smoothed_top_two",
]
