"""Training a base classifier under noise: the training loop, its settings and its checkpoint.

``--training`` picks the loss, each in :mod:`ancer_cli.core.training`: ``noise`` (cross-entropy on
noisy copies ``x + theta * eps``, Cohen et al. 2019), ``stability`` (plus ``stability_weight``
times a KL divergence between noisy copies, Li et al. 2019, RS4A's l1 recipe), ``consistency``
(Jeong & Shin 2020), ``macer`` (Zhai et al. 2020) and ``smoothadv`` (Salman et al. 2019).
``sigma = 0`` trains a clean classifier (no noise), the off-the-shelf case of denoised smoothing.

The random streams are seeded per epoch, so a run resumed from the checkpoint of epoch k continues
exactly as the uninterrupted run would have -- MACER's draws and SmoothAdv's attack noise included,
and the epoch-dependent settings (MACER's warm-up, SmoothAdv's growing eps) are functions of the
epoch alone.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ancer_cli.core.noise import Norm, Stream, input_seed, theta_from_sigma
from ancer_cli.core.training import (
    consistency_loss,
    macer_loss,
    noise_loss,
    noisy_copies,
    smoothadv_loss,
    stability_loss,
)
from ancer_cli.data import LoadedData, check_same_classes
from ancer_cli.errors import AncerError, ModelError
from ancer_cli.models import build_model, read_checkpoint, save_checkpoint


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
    return _field(name).metadata["training"]  # type: ignore[no-any-return]


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


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    clean_accuracy: float
    noisy_accuracy: float | None
    """``None`` when training without noise (sigma 0)"""
    lr: float
    seconds: float


def _loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    theta: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch in epoch ``epoch`` and the logits of its first noisy copy."""
    copies, norm = config.copies, config.norm
    if config.training is Training.stability:
        weight = config.stability_weight
        return stability_loss(model, x, y, theta, norm, generator, weight, max(copies, 2))
    if config.training is Training.consistency:
        return consistency_loss(
            model, x, y, theta, norm, generator, copies,
            config.consistency_weight, config.entropy_weight,
        )  # fmt: skip
    if config.training is Training.macer:
        return macer_loss(
            model, x, y, theta, generator, copies,
            config.macer_weight_at(epoch), config.macer_beta, config.macer_margin,
        )  # fmt: skip
    if config.training is Training.smoothadv:
        return smoothadv_loss(
            model, x, y, theta, norm, generator, copies,
            config.smoothadv_eps_at(epoch), config.smoothadv_steps,
        )  # fmt: skip
    return noise_loss(model, x, y, theta, norm, generator, copies)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: LoadedData,
    theta: float,
    norm: Norm,
    device: torch.device,
    seed: int,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Clean and noisy (one draw per input, fixed stream) accuracy of the base classifier."""
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(input_seed(seed, 0, Stream.evaluate))
    clean = noisy = total = 0
    for x, y in DataLoader(data.dataset, batch_size=batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        clean += int((model(x).argmax(1) == y).sum())
        noisy += int((model(noisy_copies(x, 1, theta, norm, generator)).argmax(1) == y).sum())
        total += y.numel()
    return clean / max(total, 1), noisy / max(total, 1)


def train(
    config: TrainConfig,
    train_data: LoadedData,
    test_data: LoadedData,
    device: torch.device,
    out: Path,
    resume: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> Iterator[EpochReport]:
    """Train ``config.arch`` under noise and yield one report per epoch.

    The checkpoint ``out`` is written atomically after every epoch. With ``resume`` the run
    continues from the epoch stored in ``out``; its arch, dataset, norm and sigma must match.
    ``on_batch(done, total)`` is called after every optimization step of an epoch.
    """
    check_same_classes(train_data, test_data)
    info = train_data.info
    torch.manual_seed(config.seed)  # weight initialisation
    model = build_model(config.arch, info).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.initial_lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step, config.lr_gamma)
    start = 0
    if resume:
        start = _restore(out, config, info.name, model, optimizer, scheduler)
    theta = theta_from_sigma(config.sigma, config.norm)
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        model.train()
        generator = torch.Generator(device=device)
        generator.manual_seed(input_seed(config.seed, epoch, Stream.train))
        order = torch.Generator().manual_seed(input_seed(config.seed, epoch, Stream.train))
        loader = DataLoader(
            train_data.dataset, batch_size=config.batch_size, shuffle=True, generator=order
        )
        total_loss = correct = seen = 0.0
        for step, (x, y) in enumerate(loader, start=1):
            x, y = x.to(device), y.to(device)
            loss, logits = _loss(model, x, y, config, epoch, theta, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * y.numel()
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
            if on_batch is not None:
                on_batch(step, len(loader))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        clean, noisy = evaluate(model, test_data, theta, config.norm, device, config.seed)
        save_checkpoint(
            out,
            model=model,
            arch=config.arch,
            info=info,
            norm=config.norm.value,
            sigma=config.sigma,
            epoch=epoch + 1,
            optimizer_state={
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "config": config_record(config),
            },
        )
        yield EpochReport(
            epoch=epoch + 1,
            epochs=config.epochs,
            train_loss=total_loss / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            clean_accuracy=clean,
            noisy_accuracy=noisy if config.sigma > 0 else None,
            lr=lr,
            seconds=time.perf_counter() - began,
        )


def config_record(config: object) -> dict[str, object]:
    """A training config's hyperparameters as plain values, as stored in the checkpoint; a
    setting of one training method (field metadata ``training``) only when that method trains."""
    applies = {item.name: _applies(item, config) for item in fields(config)}  # type: ignore[arg-type]
    return {
        key: getattr(value, "value", value)
        for key, value in asdict(config).items()  # type: ignore[call-overload]
        if applies[key]
    }


def _applies(item: Field[Any], config: object) -> bool:
    return "training" not in item.metadata or item.metadata["training"] is getattr(
        config, "training", None
    )


def check_same_config(
    out: Path, checkpoint: dict[str, Any], config: object, options: dict[str, str] | None = None
) -> None:
    """Refuse to resume ``out`` when its stored hyperparameters (all but ``epochs``) differ from
    ``config``'s; ``options`` names the command-line option of a field where it is not
    ``--field-name``."""
    stored = (checkpoint.get("optimizer_state") or {}).get("config", {})
    for key, value in config_record(config).items():
        if key != "epochs" and key in stored and stored[key] != value:
            option = (options or {}).get(key, "--" + key.replace("_", "-"))
            raise ModelError(
                f"cannot resume {out}: it was trained with {option} {stored[key]!r}, this run "
                f"asks for {value!r}; resume with the same options or use --force to start over"
            )


def _restore(
    out: Path,
    config: TrainConfig,
    dataset: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Load model, optimizer and schedule from ``out``; return the number of epochs done."""
    checkpoint = read_checkpoint(out)
    expected = {
        "arch": config.arch,
        "dataset": dataset,
        "norm": config.norm.value,
        "sigma": config.sigma,
    }
    for key, value in expected.items():
        if checkpoint.get(key) != value:
            raise ModelError(
                f"cannot resume {out}: it was trained with {key}={checkpoint.get(key)!r}, "
                f"this run asks for {value!r}; use --force to start over"
            )
    check_same_config(out, checkpoint, config)
    model.load_state_dict(checkpoint["state_dict"])
    state = checkpoint.get("optimizer_state") or {}
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    return int(checkpoint["epoch"])
