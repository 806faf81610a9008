"""The DnCNN denoiser (Zhang et al. 2017) of denoised smoothing, as ``ancer train --denoiser``
builds it: a noisy batch ``z`` and its per-pixel noise level in, the denoised batch out; its size
per dataset; and the noise level a theta means."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta

DENOISER_SIZES: dict[str, tuple[int, int]] = {
    "digits": (6, 64),
    "mnist": (7, 32),
    "cifar10": (12, 64),
}
DEFAULT_DENOISER_SIZE = (17, 64)


def denoiser_size(dataset: str) -> tuple[int, int]:
    """``(depth, width)`` of the DnCNN trained for ``dataset``."""
    return DENOISER_SIZES.get(dataset, DEFAULT_DENOISER_SIZE)


class DnCNN(nn.Module):
    """A DnCNN-style residual denoiser with a noise-level map as extra input (FFDNet-style).

    Input: ``z`` ``(B, C, H, W)`` and ``noise_level`` ``(B, C, H, W)`` (noise std per pixel),
    concatenated to ``2C`` channels; ``depth`` 3x3 convolutions of ``width`` channels with ReLUs
    predict the noise; the output ``clamp(z - noise, 0, 1)`` has ``z``'s shape.
    """

    def __init__(self, channels: int, depth: int, width: int) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"a DnCNN needs at least 2 layers, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(2 * channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        noise = self.body(torch.cat([z, noise_level.to(z.dtype)], dim=1))
        return (z - noise).clamp(0.0, 1.0)


def noise_level(theta: Theta, norm: Norm | str, shape: Sequence[int]) -> torch.Tensor | float:
    """The noise standard deviation per pixel for ``theta``: ``theta`` (l2) or
    ``theta / sqrt(3)`` (l1, uniform on ``[-theta, theta]``); a number stays a number, a tensor
    keeps the input's ``shape`` (its own with ``shape`` empty)."""
    scale = 1.0 / math.sqrt(3.0) if Norm(norm) is Norm.l1 else 1.0
    if isinstance(theta, torch.Tensor):
        level = theta.float() * scale
        return level.expand(*shape) if len(shape) else level
    return float(theta) * scale
