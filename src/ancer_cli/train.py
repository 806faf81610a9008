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

import time
from collections.abc import Callable, Iterator
from dataclasses import Field, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ancer_cli.core.choices import Norm, theta_from_sigma
from ancer_cli.core.noise import Stream, input_seed
from ancer_cli.core.training import (
    consistency_loss,
    macer_loss,
    noise_loss,
    noisy_copies,
    smoothadv_loss,
    stability_loss,
)
from ancer_cli.data import LoadedData, check_same_classes
from ancer_cli.errors import ModelError
from ancer_cli.models import build_model, read_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from ancer_cli.settings import (
    TrainConfig,
    Training,
)


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


def config_record(config: DataclassInstance) -> dict[str, object]:
    """A training config's hyperparameters as plain values, as stored in the checkpoint; a
    setting of one training method (field metadata ``training``) only when that method trains."""
    applies = {item.name: _applies(item, config) for item in fields(config)}
    return {
        key: getattr(value, "value", value)
        for key, value in asdict(config).items()
        if applies[key]
    }


def _applies(item: Field[Any], config: DataclassInstance) -> bool:
    return "training" not in item.metadata or item.metadata["training"] is getattr(
        config, "training", None
    )


def check_same_config(
    out: Path, checkpoint: dict[str, Any], config: DataclassInstance, options: dict[str, str] | None = None
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
