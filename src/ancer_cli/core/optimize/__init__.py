"""Per-input optimization of the smoothing parameter theta: the mathematics on tensors.

* :mod:`~ancer_cli.core.optimize.config` -- every optimizer's settings (defaults in one place).
* :mod:`~ancer_cli.core.optimize.published` -- the faithful published algorithms: isotropic
  data-dependent smoothing (Alfarra et al. 2022) and ANCER (Eiras et al. 2022).
* :mod:`~ancer_cli.core.optimize.search` -- the default optimization: the certified isotropic
  search and the guarded ANCER stage, scored on hard votes drawn from the law certification
  draws (the run's :class:`~ancer_cli.core.law.Noise`), each stage on its own
  :class:`~ancer_cli.core.noise.InputStreams` stream.

The names below are loaded on first use (the settings in :mod:`.config` need no PyTorch).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ancer_cli.core.noise import InputStreams
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
        common_noise_votes,
        guard_ancer,
        guard_scores,
        law_gap_lower,
        optimize_ancer_guarded,
        optimize_certified,
        search_isotropic,
    )

_EXPORTS = {
    "STEP_COST": "ancer_cli.core.optimize.config",
    "AncerConfig": "ancer_cli.core.optimize.config",
    "CertifiedSearchConfig": "ancer_cli.core.optimize.config",
    "GuardedAncerConfig": "ancer_cli.core.optimize.config",
    "IsotropicConfig": "ancer_cli.core.optimize.config",
    "IsotropicSearchConfig": "ancer_cli.core.optimize.config",
    "Progress": "ancer_cli.core.optimize.config",
    "THETA_FLOOR": "ancer_cli.core.optimize.published",
    "ancer_objective": "ancer_cli.core.optimize.published",
    "isotropic_objective": "ancer_cli.core.optimize.published",
    "margin_gap": "ancer_cli.core.optimize.published",
    "optimize_ancer": "ancer_cli.core.optimize.published",
    "optimize_isotropic": "ancer_cli.core.optimize.published",
    "smoothed_top_two": "ancer_cli.core.optimize.published",
    "CertifiedSearch": "ancer_cli.core.optimize.search",
    "GuardDecision": "ancer_cli.core.optimize.search",
    "GuardedAncer": "ancer_cli.core.optimize.search",
    "IsotropicSearch": "ancer_cli.core.optimize.search",
    "certified_gap_lower": "ancer_cli.core.optimize.search",
    "common_noise_votes": "ancer_cli.core.optimize.search",
    "guard_ancer": "ancer_cli.core.optimize.search",
    "guard_scores": "ancer_cli.core.optimize.search",
    "law_gap_lower": "ancer_cli.core.optimize.search",
    "InputStreams": "ancer_cli.core.noise",
    "optimize_ancer_guarded": "ancer_cli.core.optimize.search",
    "optimize_certified": "ancer_cli.core.optimize.search",
    "search_isotropic": "ancer_cli.core.optimize.search",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ancer_cli.core.optimize' has no attribute {name!r}")

__all__ = [
    "STEP_COST",
    "THETA_FLOOR",
    "AncerConfig",
    "CertifiedSearch",
    "CertifiedSearchConfig",
    "GuardDecision",
    "GuardedAncer",
    "GuardedAncerConfig",
    "InputStreams",
    "IsotropicConfig",
    "IsotropicSearch",
    "IsotropicSearchConfig",
    "Progress",
    "ancer_objective",
    "certified_gap_lower",
    "common_noise_votes",
    "guard_ancer",
    "guard_scores",
    "isotropic_objective",
    "law_gap_lower",
    "margin_gap",
    "optimize_ancer",
    "optimize_ancer_guarded",
    "optimize_certified",
    "optimize_isotropic",
    "search_isotropic",
    "smoothed_top_two",
]
