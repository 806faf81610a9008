"""Base classifiers that are told the theta of the inputs they classify (denoised smoothing).

The smoothing mathematics never changes for them: the toolkit adds the noise, the model sees the
noisy batch. A :class:`ThetaConditioned` module additionally hears, before each forward pass,
the theta of every input whose samples the pass holds, so that a denoiser can be given the noise
level of each pixel. The passes that call :func:`tell_thetas` lay their batch out input-major:
the samples of input 0, then those of input 1, each input the same number of samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ancer_cli.core.noise import Theta

InputThetas = Sequence[Theta] | torch.Tensor
"""The thetas of the inputs of one forward pass: one per input (a number or a tensor of the
input's shape), or a tensor ``(B, 1, 1, 1)`` / ``(B, C, H, W)`` (possibly requiring gradients)."""


class ThetaConditioned(nn.Module):
    """A base classifier whose output depends on the thetas of the inputs it is shown."""

    def set_input_thetas(self, thetas: InputThetas) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def tell_thetas(model: nn.Module, thetas: InputThetas) -> None:
    """Tell a conditioned ``model`` the thetas of the inputs of its next forward passes (input-
    major, equal samples per input); every conditioned module inside it hears them (a pair of
    denoised classifiers, as reuse runs them, holds two); a no-op for any other model."""
    for module in model.modules():
        if isinstance(module, ThetaConditioned):
            module.set_input_thetas(thetas)
