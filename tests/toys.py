"""Toy models with known behaviour, shared by the tests.

Each computes something simple enough that its smoothed classifier follows from the mathematics:
under Gaussian noise ``theta * z`` (``Phi`` the standard normal CDF, ``x_0`` the first
coordinate, ``theta_0`` its theta) the probabilities below are exact. Only torch is imported, so
that the ``cuda`` tests that use these run on a bare GPU machine.
"""

from __future__ import annotations

import torch
from torch import nn


class Linear2(nn.Module):
    """Logits ``(0, w.x + b)``: class 1 iff ``w.x + b > 0``; ``pA = Phi(|w.x + b| / ||theta *
    w||_2)``, and the smoothed classifier has the same half-space for any theta."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = w.flatten()
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)


class SteepLinear2(nn.Module):
    """:class:`Linear2` with logits ``(0, 10 (w.x + b))``: the same votes and pA, and a softmax
    close to the vote (what the optimizers' soft objectives see)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = w.flatten()
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1) @ self.w + self.b) * 10
        return torch.stack([torch.zeros_like(score), score], dim=1)


class Constant(nn.Module):
    """The given ``logits`` for every input: ``pA = 1`` for their argmax, whatever the noise."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class ConstantOnGraph(nn.Module):
    """Logits ``(2, 1, 0)`` for every input (``pA = 1`` for class 0), tied to the input by
    ``+ 0 * x`` so that an optimizer's gradients reach theta (:class:`Constant` has none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([2.0, 1.0, 0.0]).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


class CoinFlip(nn.Module):
    """Class 0 iff ``x_0 > 1/2`` (logits ``5 * (x_0 > 1/2, x_0 <= 1/2)``): at ``x_0 = 1/2`` the
    votes always split, ``pA = 1/2``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign = (x.flatten(1)[:, :1] > 0.5).float()
        return torch.cat([sign, 1 - sign], dim=1) * 5


class Threshold(nn.Module):
    """Class 1 iff ``x_0 > 0`` (logits ``(0, 10 x_0)``): ``pA = Phi(|x_0| / theta_0)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1)[:, 0] * 10
        return torch.stack([torch.zeros_like(score), score], dim=1)


class Stripe(nn.Module):
    """Class 1 iff ``|x_0| < 1`` (logits 0 and 10): class 1 has probability
    ``Phi((1 - x_0) / theta_0) - Phi((-1 - x_0) / theta_0)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x.flatten(1)[:, 0].abs() < 1).float()
        return torch.stack([1 - inside, inside], dim=1) * 10


class Ball(nn.Module):
    """Class 0 iff ``||x||_2 < 0.5`` (logits ``(50 (0.5 - ||x||_2), 0)``): more noise means less
    class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = x.flatten(1).norm(dim=1)
        return torch.stack([50 * (0.5 - distance), torch.zeros_like(distance)], dim=1)


class ZeroLogits(nn.Module):
    """``classes`` zero logits for every input: only the width of its output matters."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((x.shape[0], self.classes))


class ColourClassifier(nn.Module):
    """``classes`` logits peaking at ``k = mean red value * (classes - 1)``: an image whose red
    channel is ``k / (classes - 1)`` everywhere is class k, whatever its size."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean(dim=(1, 2)) * (self.classes - 1)
        k = torch.arange(self.classes, dtype=x.dtype, device=x.device)
        return -(red[:, None] - k[None, :]).abs() * 10


class TinyClassifier(nn.Module):
    """(B, 1, 8, 8) in [0, 1] -> (B, 4) logits through a convolution, BatchNorm and a linear
    layer: a model with parameters and buffers to save and load."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x - 0.5)))
        return self.fc(out.mean(dim=(2, 3)))
