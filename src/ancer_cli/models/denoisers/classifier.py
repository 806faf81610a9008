"""The base classifier of denoised smoothing: ``classifier(denoiser(z, noise level))``, told each
input's theta by the loops that smooth it."""

from __future__ import annotations

import math

import torch
from torch import nn

from ancer_cli.core.choices import Norm
from ancer_cli.core.conditioning import InputThetas, ThetaConditioned
from ancer_cli.core.noise import Theta
from ancer_cli.errors import ModelError
from ancer_cli.models.denoisers.architecture import noise_level


class DenoisedClassifier(ThetaConditioned):
    """The base classifier ``classifier(denoiser(z, noise_level))`` of denoised smoothing.

    ``(B, C, H, W)`` noisy batch -> ``(B, K)`` logits. The noise level comes from the thetas of
    the inputs being smoothed, which the loops announce before each forward pass
    (:func:`~ancer_cli.core.conditioning.tell_thetas`): one theta per input, the batch laid out
    input-major with equal samples per input (one input: every sample gets its theta). With
    ``fixed`` the theta is the same for every input, set once, and announcements are ignored.
    ``denoiser`` is any module ``(z, noise_level) -> image``; thetas that require gradients keep
    them (``optimize`` differentiates through the map too).
    """

    def __init__(
        self,
        classifier: nn.Module,
        denoiser: nn.Module,
        norm: Norm | str,
        theta: Theta | None = None,
        fixed: bool = False,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.denoiser = denoiser
        self.norm = Norm(norm)
        self.fixed = fixed
        self.levels: torch.Tensor | float | None = None
        if theta is not None:
            self._set([theta])

    def set_theta(self, theta: Theta) -> None:
        """The theta of every sample of the next passes (also with ``fixed``)."""
        self._set([theta])

    def set_input_thetas(self, thetas: InputThetas) -> None:
        if not self.fixed:
            self._set(thetas)

    def _set(self, thetas: InputThetas) -> None:
        if isinstance(thetas, torch.Tensor):
            scale = 1.0 / math.sqrt(3.0) if self.norm is Norm.l1 else 1.0
            self.levels = thetas * scale  # (B, 1, 1, 1) or (B, C, H, W); gradients kept
        elif len(thetas) == 1 and not isinstance(thetas[0], torch.Tensor):
            self.levels = float(noise_level(thetas[0], self.norm, ()))
        else:
            maps = [torch.as_tensor(noise_level(t, self.norm, ())).float() for t in thetas]
            maps = [m.view(1, 1, 1) if m.dim() == 0 else m for m in maps]
            shape = max((tuple(m.shape) for m in maps), key=math.prod)
            self.levels = torch.stack([m.expand(shape) for m in maps])

    def level_map(self, z: torch.Tensor) -> torch.Tensor:
        """The noise-level map of the noisy batch ``z``: ``z``'s shape, input-major."""
        levels = self.levels
        if levels is None:
            raise RuntimeError("DenoisedClassifier: set the inputs' thetas before a forward pass")
        if not isinstance(levels, torch.Tensor):
            return z.new_full(z.shape, levels)
        levels = levels.to(z.device, z.dtype)
        inputs = levels.shape[0]
        if inputs == 1:
            return levels.expand(z.shape)
        if z.shape[0] % inputs:
            raise RuntimeError(
                f"a pass of {z.shape[0]} samples cannot hold {inputs} inputs equally"
            )
        per_input = levels.expand(inputs, *z.shape[1:])
        return per_input.repeat_interleave(z.shape[0] // inputs, dim=0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        denoised = self.denoiser(z, self.level_map(z))
        if denoised.shape != z.shape:
            raise ModelError(
                f"the denoiser returns shape {tuple(denoised.shape)} for noisy images of shape "
                f"{tuple(z.shape)}; expected the image's shape"
            )
        return self.classifier(denoised)


def find_denoised(model: nn.Module) -> DenoisedClassifier | None:
    """The :class:`DenoisedClassifier` inside ``model`` (speed options may wrap it), if any."""
    return next((m for m in model.modules() if isinstance(m, DenoisedClassifier)), None)


def inputs_per_theta(model: nn.Module, group: int) -> int:
    """How many inputs may share forward passes: ``group``, or 1 when ``model`` denoises with a
    theta that changes from input to input (CERTIFY's passes then hold one input's samples)."""
    denoised = find_denoised(model)
    return 1 if denoised is not None and not denoised.fixed else group
