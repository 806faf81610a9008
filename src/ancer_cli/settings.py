"""The settings of the commands' runs, with their defaults in one place: the choices they are
made of (enums) and a frozen dataclass per kind of run.

Nothing here imports PyTorch, numpy or pandas: the command line builds its options and
``--help`` from this module (and :mod:`ancer_cli.core.choices`) without loading the library.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any

from ancer_cli.core.attack_settings import AttackConfig, AuditConfig, Threat
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
from ancer_cli.errors import AncerError


class CertifyMethod(str, enum.Enum):
    """How theta was chosen: one sigma for all (Cohen et al.), per-input scalar, per-input tensor."""

    fixed = "fixed"
    isotropic = "isotropic"
    ancer = "ancer"


class Metric(str, enum.Enum):
    """Which radius column a result is read by: ``radius`` (``min(theta) * gap``, the largest
    ball inside the region), ``proxy`` (``geomean(theta) * gap``, the ball of the region's
    volume) or ``linf`` (``radius_linf``, the half-width of the largest l-infinity box inside
    the region)."""

    radius = "radius"
    proxy = "proxy"
    linf = "linf"

    @property
    def column(self) -> str:
        """The results-file column this metric reads."""
        return {"radius": "radius", "proxy": "radius_proxy", "linf": "radius_linf"}[self.value]


class SequentialMetric(str, enum.Enum):
    """The unit of sequential certification's ``--radius``: a :class:`Metric` whose threshold
    on ``pA`` a radius gives (``radius`` or ``proxy``)."""

    radius = "radius"
    proxy = "proxy"


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


@dataclass(frozen=True)
class AttackJob:
    """What ``ancer attack`` does for each input: the SmoothAdv ``attack`` in the ``threat`` ball
    (``None``: the noise's norm) of each radius in ``eps``, then PREDICT of the attacked point
    with ``num`` samples at level ``alpha`` (``None``: the results file's ``N`` and ``alpha``,
    else :class:`PredictConfig`'s), ``batch_size`` noisy samples per forward pass. ``random``:
    a random point on the ball's boundary instead of the attack (the baseline it must beat)."""

    eps: tuple[float, ...] = ()
    threat: Threat | None = None
    attack: AttackConfig = AttackConfig()
    num: int | None = None
    alpha: float | None = None
    batch_size: int = PredictConfig.batch_size
    random: bool = False


AUDIT_SAMPLES = 10_000
"""PREDICT's samples when ``ancer audit`` confirms a candidate flip."""
AUDIT_CONFIRMATIONS = 4
"""Candidates per certificate ``ancer audit`` confirms at most (the most adverse first)."""


@dataclass(frozen=True)
class AuditJob:
    """What ``ancer audit`` does for each certified row: the ``search`` inside its region, then
    PREDICT with ``num`` samples at level ``alpha`` at the ``confirmations`` candidates the soft
    smoothed classifier gives another class, the most adverse first, until one is confirmed;
    ``batch_size`` noisy samples per forward pass."""

    search: AuditConfig = AuditConfig()
    num: int = AUDIT_SAMPLES
    alpha: float = DEFAULT_ALPHA
    confirmations: int = AUDIT_CONFIRMATIONS
    batch_size: int = PredictConfig.batch_size


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
    start) come from the model unless given, ``grid`` from the data and ``--sound``."""

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
    grid: int | None = None
    """the data's pixel grid ``s`` when the noise is sound (certify's default wherever the data
    has one), ``None`` for float noise: the law the certified objective scores thetas under"""

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
    consistency = "consistency"
    macer = "macer"
    smoothadv = "smoothadv"


NOISY_SAMPLES = {
    Training.noise: 1,
    Training.stability: 1,  # at least 2 copies are used
    Training.consistency: 2,  # m, Jeong & Shin 2020 (all their experiments)
    Training.macer: 16,  # k, Zhai et al.'s code default
    Training.smoothadv: 4,  # m_train, Jeong & Shin's SmoothAdv baseline on MNIST
}
"""Noisy copies of each image per step, by method, when ``noisy_samples`` is not given."""

LEARNING_RATES = {Training.macer: 0.01}  # Zhai et al.'s code default, at batch size 64
"""The initial learning rate, by method, when ``lr`` is not given; :data:`DEFAULT_LR` for the
others. MACER's robustness term diverges on digits at 0.05."""
DEFAULT_LR = 0.05

L2_ONLY = {
    Training.macer: "its robustness term is the Gaussian-smoothing l2 radius "
    "sigma/2 * (Phi^-1(p_y) - Phi^-1(p_c)), which has no l1 form in the paper (Zhai et al. 2020)",
    Training.smoothadv: "its attack is an l2 PGD on the soft smoothed classifier "
    "(Salman et al. 2019) and ancer has no l1 attack",
}
"""Methods defined for l2 (Gaussian) noise only, and why."""


def _method(training: Training, default: float, positive: bool = False) -> Any:
    """A setting of one training method: recorded and compared on resume only for that method;
    a finite number >= 0 (> 0 when ``positive``)."""
    return field(default=default, metadata={"training": training, "positive": positive})


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of ``ancer train``; the defaults here are the command's defaults.

    Each method's own settings carry it in their field metadata (:func:`method_settings`);
    ``noisy_samples`` and ``lr`` left ``None`` become the method's (:data:`NOISY_SAMPLES`,
    :data:`LEARNING_RATES`).
    """

    arch: str
    training: Training = Training.noise
    norm: Norm = Norm.l2
    sigma: float = 0.25
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    """initial SGD learning rate; ``None``: :data:`LEARNING_RATES` or :data:`DEFAULT_LR`"""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 10
    lr_gamma: float = 0.3
    stability_weight: float = _method(Training.stability, 6.0)
    """weight of the KL term (RS4A's l1 recipe)"""
    noisy_samples: int | None = None
    """noisy copies of each image per step; ``None``: the method's :data:`NOISY_SAMPLES`"""
    consistency_weight: float = _method(Training.consistency, 10.0)
    """lambda, the KL term's weight: Jeong & Shin's code default (their CIFAR-10 runs use 10 at
    every sigma and 20 at 0.25 and 0.5, their MNIST runs 20)"""
    entropy_weight: float = _method(Training.consistency, 0.5)
    """eta, the entropy term's weight (Jeong & Shin 2020, all experiments)"""
    macer_weight: float = _method(Training.macer, 12.0)
    """lambda, the robustness term's weight (Zhai et al.'s code default, their CIFAR-10 setting)"""
    macer_beta: float = _method(Training.macer, 16.0, positive=True)
    """beta, the inverse temperature of the soft smoothed classifier (Zhai et al.'s code)"""
    macer_margin: float = _method(Training.macer, 8.0)
    """gamma, the hinge on xi = Phi^-1(z_y) - Phi^-1(z_c) (Zhai et al.'s code)"""
    macer_warmup: int = _method(Training.macer, 0)
    """epochs trained with lambda 0 first (Zhai et al.'s code: none; Jeong & Shin's "deferred"
    MACER: until the first learning-rate decay)"""
    smoothadv_eps: float = _method(Training.smoothadv, 1.0, positive=True)
    """l2 radius of the attack, pixel units (Salman et al.'s 255/256, as in Jeong & Shin's MNIST
    baseline)"""
    smoothadv_steps: int = _method(Training.smoothadv, 10, positive=True)
    """PGD steps T (Salman et al.'s code default)"""
    smoothadv_warmup: int = _method(Training.smoothadv, 10)
    """epochs over which eps grows linearly to its value (Salman et al.'s experiments)"""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noisy_samples is None:
            object.__setattr__(self, "noisy_samples", NOISY_SAMPLES[self.training])
        if self.lr is None:
            object.__setattr__(self, "lr", LEARNING_RATES.get(self.training, DEFAULT_LR))
        settings = {name: getattr(self, name) for name in method_settings(self.training)}
        check_training(self.training, self.norm, self.sigma, self.copies, settings)

    @property
    def copies(self) -> int:
        """Noisy copies of each image per step (``noisy_samples``, resolved)."""
        return self.noisy_samples or NOISY_SAMPLES[self.training]

    @property
    def initial_lr(self) -> float:
        """The initial learning rate (``lr``, resolved)."""
        return self.lr or LEARNING_RATES.get(self.training, DEFAULT_LR)

    def macer_weight_at(self, epoch: int) -> float:
        """MACER's lambda in epoch ``epoch`` (0-based): 0 during the warm-up."""
        return 0.0 if epoch < self.macer_warmup else self.macer_weight

    def smoothadv_eps_at(self, epoch: int) -> float:
        """SmoothAdv's eps in epoch ``epoch`` (0-based): ``eps * (epoch + 1) / warmup`` during the
        warm-up, as in Salman et al.'s code, then ``eps``."""
        if epoch + 1 >= self.smoothadv_warmup:
            return self.smoothadv_eps
        return self.smoothadv_eps * (epoch + 1) / self.smoothadv_warmup


def method_settings(training: Training | None = None) -> list[str]:
    """The names of the :class:`TrainConfig` fields that belong to ``training`` (all methods'
    when ``None``), in declaration order."""
    return [
        item.name
        for item in fields(TrainConfig)
        if "training" in item.metadata and training in (None, item.metadata["training"])
    ]


def setting_method(name: str) -> Training:
    """The training method a :func:`method_settings` field belongs to."""
    return _field(name).metadata["training"]


def _field(name: str) -> Field[Any]:
    return next(item for item in fields(TrainConfig) if item.name == name)


def option_name(name: str) -> str:
    """The command-line option of a :class:`TrainConfig` field: ``--macer-beta``."""
    return "--" + name.replace("_", "-")


def check_training(
    training: Training,
    norm: Norm,
    sigma: float,
    copies: int,
    settings: Mapping[str, float],
) -> None:
    """Raise :class:`AncerError` (one line: what and why) when ``training`` is not defined for
    ``norm``, ``sigma`` or ``copies`` noisy copies per image, or when one of its ``settings``
    (:func:`method_settings` names) is out of range."""
    if copies < 1:
        raise AncerError(f"--noisy-samples must be >= 1, got {copies}")
    if training in L2_ONLY and Norm(norm) is not Norm.l2:
        raise AncerError(f"--training {training.value} is for l2 noise only: {L2_ONLY[training]}")
    if training in (Training.consistency, Training.macer, Training.smoothadv) and sigma <= 0:
        raise AncerError(
            f"--training {training.value} trains under noise: give --sigma > 0 (--sigma 0 trains "
            "a clean classifier with --training noise)"
        )
    if training is Training.consistency and copies < 2:
        raise AncerError(
            f"--training consistency compares noisy copies: --noisy-samples must be >= 2, "
            f"got {copies}"
        )
    for name, value in settings.items():
        positive = _field(name).metadata["positive"]
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            bound = "> 0" if positive else ">= 0"
            raise AncerError(f"{option_name(name)} must be a finite number {bound}, got {value}")


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
DEFAULT_LINF_RADII: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
"""The l-infinity half-widths ``ancer accuracy --metric linf`` reports by default."""
DEFAULT_RHO = 0.001
"""``ancer accuracy --high-probability``: the probability its bounds may fail."""
PLOT_SUFFIXES = (".png", ".pdf")
"""The picture formats plots are written in."""
