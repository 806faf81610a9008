"""Training a denoiser for denoised smoothing (Salman et al. 2020), with a noise-level map input.

Each image of a batch gets its own noise: with probability 1/2 a constant sigma drawn uniformly
from ``[0, sigma_max]``, otherwise a per-pixel map -- a smooth random field (coarse uniform noise
upsampled bilinearly) scaled into a random range ``[lo, hi]`` of ``[0, sigma_max]`` -- so one
denoiser serves a fixed sigma, isotropic thetas and anisotropic thetas. The noise is Gaussian
(l2) or uniform (l1) with that standard deviation. Objectives: ``mse`` to the clean image, or
``classifier``: the cross-entropy of a frozen classifier on the denoised image.

The random streams are seeded per epoch, so a run resumed from the checkpoint of epoch k continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ancer_cli.core.choices import Norm, theta_from_sigma
from ancer_cli.core.noise import Stream, draw_base_noise_, input_seed
from ancer_cli.data import LoadedData, check_same_classes
from ancer_cli.errors import ModelError
from ancer_cli.models.denoisers import build_denoiser, read_denoiser, save_denoiser
from ancer_cli.settings import DenoiserConfig, DenoiserObjective
from ancer_cli.train import check_same_config, config_record

# The fixed noise levels (std) at which every epoch reports PSNR, capped at sigma_max.
EVALUATION_SIGMAS: tuple[float, ...] = (0.12, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class DenoiserReport:
    """One epoch: the training loss, PSNR (dB) of denoised test images at each evaluation
    sigma, and with a classifier its accuracy on them (``None`` without one)."""

    epoch: int
    epochs: int
    train_loss: float
    psnr: dict[float, float]
    accuracy: dict[float, float] | None
    seconds: float


def cosine_lr(lr: float, step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``: ``lr`` decayed to 0 along a
    half cosine. A function of the step alone, so a resumed run continues the same schedule."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))


def evaluation_sigmas(sigma_max: float) -> list[float]:
    """The evaluation noise levels up to ``sigma_max`` (``[sigma_max]`` if none is)."""
    return [s for s in EVALUATION_SIGMAS if s <= sigma_max] or [sigma_max]


def draw_noise_levels(
    shape: torch.Size, sigma_max: float, generator: torch.Generator
) -> torch.Tensor:
    """Per-image noise standard deviations ``(B, C, H, W)`` in ``[0, sigma_max]``: half the
    images (chosen at random) get a constant, the others a smooth random field in a random
    range."""
    batch, channels, height, width = shape
    device = generator.device

    def uniform(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=generator, device=device)

    constant = uniform(batch, 1, 1, 1).expand(shape) * sigma_max
    coarse = uniform(batch, channels, max(2, height // 4), max(2, width // 4))
    field = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    low = field.amin(dim=(1, 2, 3), keepdim=True)
    high = field.amax(dim=(1, 2, 3), keepdim=True)
    field = (field - low) / (high - low).clamp_min(1e-6)
    ends = uniform(batch, 2, 1, 1).sort(dim=1).values * sigma_max
    field = ends[:, :1] + field * (ends[:, 1:] - ends[:, :1])
    use_constant = uniform(batch, 1, 1, 1) < 0.5
    return torch.where(use_constant, constant, field)


def add_noise(
    x: torch.Tensor, level: torch.Tensor, norm: Norm, generator: torch.Generator
) -> torch.Tensor:
    """``x`` plus noise of standard deviation ``level`` per pixel (l1: uniform)."""
    eps = torch.empty_like(x)
    draw_base_noise_(eps, norm, generator)
    return x + theta_from_sigma(1.0, norm) * level * eps


@torch.no_grad()
def evaluate_denoiser(
    denoiser: nn.Module,
    data: LoadedData,
    config: DenoiserConfig,
    device: torch.device,
    classifier: nn.Module | None = None,
    batch_size: int = 256,
) -> tuple[dict[float, float], dict[float, float] | None]:
    """PSNR (dB, of the mean squared error over the split) of the denoised test images at each
    evaluation sigma, and the classifier's accuracy on them; one fixed noise draw per image."""
    denoiser.eval()
    psnr: dict[float, float] = {}
    accuracy: dict[float, float] = {}
    for sigma in evaluation_sigmas(config.sigma_max):
        generator = torch.Generator(device=device)
        generator.manual_seed(input_seed(config.seed, 0, Stream.evaluate))
        squared = correct = total = 0.0
        pixels = 0
        for x, y in DataLoader(data.dataset, batch_size=batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            level = torch.full_like(x, sigma)
            denoised = denoiser(add_noise(x, level, config.norm, generator), level)
            squared += float(((denoised - x) ** 2).sum())
            pixels += x.numel()
            if classifier is not None:
                correct += int((classifier(denoised).argmax(1) == y).sum())
            total += y.numel()
        mse = squared / max(pixels, 1)
        psnr[sigma] = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
        accuracy[sigma] = correct / max(total, 1)
    return psnr, (accuracy if classifier is not None else None)


def train_denoiser(
    config: DenoiserConfig,
    train_data: LoadedData,
    test_data: LoadedData,
    device: torch.device,
    out: Path,
    classifier: nn.Module | None = None,
    resume: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> Iterator[DenoiserReport]:
    """Train a DnCNN denoiser and yield one report per epoch.

    ``classifier`` (frozen, eval mode) is needed by the ``classifier`` objective and reported on
    with either. The checkpoint ``out`` is written atomically after every epoch; with
    ``resume`` the run continues from the epoch stored in ``out`` (same hyperparameters).
    """
    if config.objective is DenoiserObjective.classifier and classifier is None:
        raise ModelError("the classifier objective needs --classifier MODEL")
    check_same_classes(train_data, test_data)
    info = train_data.info
    torch.manual_seed(config.seed)  # weight initialisation
    denoiser = build_denoiser(info.input_shape, config.depth, config.width).to(device)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=config.lr)
    start = _restore(out, config, info.name, denoiser, optimizer) if resume else 0
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        denoiser.train()
        generator = torch.Generator(device=device)
        generator.manual_seed(input_seed(config.seed, epoch, Stream.train))
        order = torch.Generator().manual_seed(input_seed(config.seed, epoch, Stream.train))
        loader = DataLoader(
            train_data.dataset, batch_size=config.batch_size, shuffle=True, generator=order
        )
        total_loss = seen = 0.0
        for step, (x, y) in enumerate(loader, start=1):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(
                    config.lr, epoch * len(loader) + step - 1, config.epochs * len(loader)
                )
            x, y = x.to(device), y.to(device)
            level = draw_noise_levels(x.shape, config.sigma_max, generator)
            denoised = denoiser(add_noise(x, level, config.norm, generator), level)
            if config.objective is DenoiserObjective.mse:
                loss = F.mse_loss(denoised, x)
            else:
                assert classifier is not None
                loss = F.cross_entropy(classifier(denoised), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * y.numel()
            seen += y.numel()
            if on_batch is not None:
                on_batch(step, len(loader))
        psnr, accuracy = evaluate_denoiser(denoiser, test_data, config, device, classifier)
        save_denoiser(
            out,
            model=denoiser,
            depth=config.depth,
            width=config.width,
            dataset=info.name,
            input_shape=info.input_shape,
            norm=config.norm.value,
            sigma_max=config.sigma_max,
            epoch=epoch + 1,
            optimizer_state={"optimizer": optimizer.state_dict(), "config": config_record(config)},
            extra={"objective": config.objective.value, "classifier": config.classifier},
        )
        yield DenoiserReport(
            epoch=epoch + 1,
            epochs=config.epochs,
            train_loss=total_loss / max(seen, 1),
            psnr=psnr,
            accuracy=accuracy,
            seconds=time.perf_counter() - began,
        )


def _restore(
    out: Path,
    config: DenoiserConfig,
    dataset: str,
    denoiser: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> int:
    """Load the denoiser and its optimizer from ``out``; return the number of epochs done."""
    checkpoint = read_denoiser(out)
    if checkpoint["dataset"] != dataset:
        raise ModelError(
            f"cannot resume {out}: it was trained on {checkpoint['dataset']!r}, this run uses "
            f"{dataset!r}; use --force to start over"
        )
    check_same_config(out, checkpoint, config, {"sigma_max": "--sigma"})
    denoiser.load_state_dict(checkpoint["state_dict"])
    state = checkpoint.get("optimizer_state") or {}
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return int(checkpoint["epoch"])
