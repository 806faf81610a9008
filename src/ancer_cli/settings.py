"""The settings of the commands' runs, with their defaults in one place: the choices they are
made of (enums) and a frozen dataclass per kind of run.

Nothing here imports PyTorch, numpy or pandas: the command line builds its options and
``--help`` from this module (and :mod:`ancer_cli.core.choices`) without loading the library.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from ancer_cli.core.choices import (
    DEFAULT_ALPHA,
    SEQUENTIAL_CAP_SHARE,
    SEQUENTIAL_FIRST,
    SEQUENTIAL_GROWTH,
    SEQUENTIAL_TOLERANCE,
    Norm,
    Sampling,
)
from ancer_cli.core.optimize.config import (
    AncerConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
)


class CertifyMethod(str, enum.Enum):
    """How theta was chosen: one sigma for all (Cohen et al.), per-input scalar, per-input tensor."""

    fixed = "fixed"
    isotropic = "isotropic"
    ancer = "ancer"


class Metric(str, enum.Enum):
    """Which radius column a result is read by: ``radius`` (``min(theta) * gap``, the largest
    ball inside the region) or ``proxy`` (``geomean(theta) * gap``, the ball of the region's
    volume)."""

    radius = "radius"
    proxy = "proxy"

    @property
    def column(self) -> str:
        """The results-file column this metric reads."""
        return "radius_proxy" if self is Metric.proxy else "radius"


@dataclass(frozen=True)
class Sequential:
    """Sequential (anytime-valid) certification instead of a fixed ``N``.

    With ``radii``, *radius mode*: decide for each input whether it is certified at each radius
    (in the unit of ``metric``: ``radius`` = ``min(theta) * gap``, ``proxy`` = ``geomean(theta)
    * gap``) and stop as soon as every radius is decided. Without, *adaptive mode*: stop early
    for inputs that will abstain and once the cap could raise the gap by at most ``tolerance``
    (relative). ``N`` is the cap. See :class:`ancer_cli.core.sequential.SequentialPlan`.
    """

    radii: tuple[float, ...] = ()
    metric: str = Metric.radius.value
    tolerance: float = SEQUENTIAL_TOLERANCE
    first: int = SEQUENTIAL_FIRST
    growth: float = SEQUENTIAL_GROWTH
    cap_share: float = SEQUENTIAL_CAP_SHARE

    @property
    def mode(self) -> str:
        return "radius" if self.radii else "adaptive"

    def record(self) -> dict[str, Any]:
        """What the sidecar records about the mode."""
        return {"mode": self.mode, **asdict(self), "radii": sorted(self.radii)}


@dataclass(frozen=True)
class CertifyConfig:
    """How certify samples: CERTIFY's ``sampling`` and, optionally, ``sequential`` certification
    with ``sampling.n_estimation`` as the cap."""

    sampling: Sampling = Sampling()
    sequential: Sequential | None = None


@dataclass(frozen=True)
class PredictConfig:
    """PREDICT's samples, level and batch size; the defaults are those of Cohen et al.'s
    ``predict.py`` and the command's."""

    num: int = 100_000
    alpha: float = DEFAULT_ALPHA
    batch_size: int = 1000


class ThetaMethod(str, enum.Enum):
    """What ``ancer optimize`` finds per input: one theta (isotropic) or one per pixel (ANCER)."""

    isotropic = "isotropic"
    ancer = "ancer"


class ThetaObjective(str, enum.Enum):
    """What the optimization of theta maximizes, and on which schedule.

    ``certified`` (the default): a 1-d search of the isotropic theta scored on hard votes by the
    radius CERTIFY would give (forward passes only, never below the start), then a few guarded
    ANCER steps whose result is kept only if it beats the isotropic theta on fresh hard votes.
    ``reference``: the published algorithms and schedules (Alfarra et al.'s gradient ascent on the
    soft surrogate, 900 x 100; ANCER's Adam, 100 x 100), reproduced exactly.
    """

    certified = "certified"
    reference = "reference"


@dataclass(frozen=True)
class OptimizeJob:
    """Everything that decides the thetas an optimize run writes; ``norm`` and ``sigma`` (the
    start) come from the model unless given."""

    method: ThetaMethod = ThetaMethod.ancer
    norm: Norm = Norm.l2
    sigma: float = 0.25
    isotropic: IsotropicConfig = IsotropicConfig()
    ancer: AncerConfig = AncerConfig()
    batch_size: int = 50
    seed: int = 0
    objective: ThetaObjective = ThetaObjective.certified
    search: IsotropicSearchConfig = IsotropicSearchConfig()
    guarded: GuardedAncerConfig = GuardedAncerConfig()

    def hyperparameters(self, method: ThetaMethod) -> dict[str, Any]:
        """What the manifest of a ``method`` folder records about the optimization."""
        hyper: dict[str, Any] = {"objective": self.objective.value, "batch_size": self.batch_size}
        if self.objective is ThetaObjective.reference:
            hyper["isotropic"] = asdict(self.isotropic)
            if method is ThetaMethod.ancer:
                hyper["ancer"] = asdict(self.ancer)
        else:
            hyper["isotropic_search"] = asdict(self.search)
            if method is ThetaMethod.ancer:
                hyper["ancer_guarded"] = asdict(self.guarded)
        return hyper

    @property
    def ancer_steps(self) -> int:
        return (
            self.guarded.iterations
            if self.objective is ThetaObjective.certified
            else self.ancer.iterations
        )


class Training(str, enum.Enum):
    noise = "noise"
    stability = "stability"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of ``ancer train``; the defaults here are the command's defaults."""

    arch: str
    norm: Norm = Norm.l2
    sigma: float = 0.25
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 10
    lr_gamma: float = 0.3
    training: Training = Training.noise
    stability_weight: float = 6.0
    noisy_samples: int = 1
    seed: int = 0


class DenoiserObjective(str, enum.Enum):
    """What a denoiser is trained to minimise: the mse to the clean image, or the cross-entropy
    of a frozen classifier on the denoised image (Salman et al. 2020)."""

    mse = "mse"
    classifier = "classifier"


@dataclass(frozen=True)
class DenoiserConfig:
    """Hyperparameters of ``ancer train --denoiser``; ``depth``/``width`` come from the dataset."""

    depth: int
    width: int
    norm: Norm = Norm.l2
    sigma_max: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    """Adam's initial learning rate, decayed to 0 along a cosine over the steps of ``epochs``
    (a run resumed with another ``--epochs`` continues along that run's cosine)"""
    objective: DenoiserObjective = DenoiserObjective.mse
    classifier: str | None = None
    """the frozen classifier's file (``classifier`` objective)"""
    classifier_sha256: str | None = None
    seed: int = 0


DEFAULT_PICTURES = 4
"""How many inputs ``ancer show`` draws when no index is chosen."""
THETA_MEANING = {"l2": "noise std per pixel", "l1": "uniform half-width per pixel"}
"""What a theta is, per norm, as pictures label it."""


DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
"""The radii ``ancer accuracy`` reports by default."""
DEFAULT_RHO = 0.001
"""``ancer accuracy --high-probability``: the probability its bounds may fail."""
PLOT_SUFFIXES = (".png", ".pdf")
"""The picture formats plots are written in."""
