"""Denoisers for denoised smoothing (Salman et al. 2020): the architecture, its checkpoint format
``ancer-denoiser/1``, loading, and the base classifier ``classifier(denoiser(z, theta))``.

A denoiser maps a noisy batch ``z`` ``(B, C, H, W)`` and its noise-level map ``(B, C, H, W)`` --
the noise standard deviation of every pixel, ``theta`` for l2 and ``theta / sqrt(3)`` for l1, so
the map means the same for both norms -- to the denoised batch in ``[0, 1]``. One denoiser serves
a fixed sigma, isotropic thetas and anisotropic (ANCER) thetas alike. The smoothing toolkit adds
the noise itself; the denoiser only sees the noisy batch and the map, so the certificate is that
of the composed base classifier, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import atomic_writer, sha256_file
from ancer_cli.core.choices import Norm
from ancer_cli.core.conditioning import InputThetas, ThetaConditioned
from ancer_cli.core.noise import Theta
from ancer_cli.errors import ModelError
from ancer_cli.models.checkpoints import _on_cpu as on_cpu
from ancer_cli.models.diffusion import (
    DiffusionDenoiser,
    load_diffusion,
    sha256_folder,
    timestep_record,
)
from ancer_cli.models.files import check_model_file, load_weights_only

DENOISER_FORMAT = "ancer-denoiser/1"

DENOISER_KEYS: tuple[str, ...] = (
    "format",
    "arch",
    "depth",
    "width",
    "dataset",
    "input_shape",
    "norm",
    "sigma_max",
    "epoch",
    "state_dict",
    "optimizer_state",
)

# (convolution layers, channels) of the DnCNN per dataset: small for the small images.
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


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_denoiser(
    path: Path,
    *,
    model: DnCNN,
    depth: int,
    width: int,
    dataset: str,
    input_shape: Sequence[int],
    norm: str,
    sigma_max: float,
    epoch: int,
    optimizer_state: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write an ``ancer-denoiser/1`` checkpoint atomically (loadable with ``weights_only=True``);
    tensors are stored on the CPU."""
    payload = {
        "format": DENOISER_FORMAT,
        "arch": "dncnn",
        "depth": int(depth),
        "width": int(width),
        "dataset": dataset,
        "input_shape": [int(size) for size in input_shape],
        "norm": norm,
        "sigma_max": float(sigma_max),
        "epoch": int(epoch),
        "state_dict": on_cpu(model.state_dict()),
        "optimizer_state": on_cpu(optimizer_state),
        **(extra or {}),
    }
    with atomic_writer(Path(path), mode="wb") as handle:
        torch.save(payload, handle)


def read_denoiser(path: Path) -> dict[str, Any]:
    """The checkpoint dict of the denoiser file ``path``, checked to be ``ancer-denoiser/1``."""
    path = Path(path)
    check_model_file(path)
    loaded = load_weights_only(path)
    if not isinstance(loaded, dict) or loaded.get("format") != DENOISER_FORMAT:
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise ModelError(
            f"{path} is not a denoiser (format {found!r}, expected {DENOISER_FORMAT!r}); "
            "train one with ancer train --denoiser"
        )
    missing = [key for key in DENOISER_KEYS if key not in loaded]
    if missing:
        raise ModelError(f"denoiser {path} lacks {', '.join(missing)}; it is not a valid file")
    return loaded


@dataclass
class LoadedDenoiser:
    """A denoiser ready for inference (eval mode, frozen) and what its file or folder says.

    ``kind`` is ``dncnn`` (an ``ancer-denoiser/1`` file: any noise-level map) or ``diffusion``
    (a diffusers folder: one noise level per input, see :mod:`ancer_cli.models.diffusion`)."""

    module: nn.Module
    path: Path
    sha256: str
    kind: str
    channels: int
    dataset: str | None = None
    input_shape: tuple[int, int, int] | None = None
    norm: str | None = None
    sigma_max: float | None = None
    details: dict[str, Any] | None = None

    @property
    def per_pixel(self) -> bool:
        """Whether it takes per-pixel noise levels (ANCER thetas)."""
        return self.kind == "dncnn"

    def check_inputs(self, shape: Sequence[int], dataset: str) -> None:
        """One-line ModelError unless it denoises inputs of ``shape`` ``(C, H, W)``."""
        shape = tuple(int(size) for size in shape)
        if self.input_shape is not None and self.input_shape != shape:
            raise ModelError(
                f"denoiser {self.path} was trained on {self.dataset} inputs of shape "
                f"{self.input_shape}, but {dataset} inputs have shape {shape}; train a denoiser "
                "for this dataset"
            )
        if self.channels != shape[0]:
            raise ModelError(
                f"diffusion model {self.path} takes {self.channels}-channel images, but "
                f"{dataset} inputs have shape {shape}"
            )


def build_denoiser(input_shape: Sequence[int], depth: int, width: int) -> DnCNN:
    """A fresh DnCNN for inputs of ``input_shape`` ``(C, H, W)``."""
    return DnCNN(int(input_shape[0]), depth, width)


def load_denoiser(path: Path, device: torch.device) -> LoadedDenoiser:
    """Load the ``ancer-denoiser/1`` file, or the diffusers model folder, ``path`` on
    ``device``; one-line ModelErrors."""
    path = Path(path)
    if path.is_dir():
        module, details = load_diffusion(path, device)
        return LoadedDenoiser(
            module=module,
            path=path,
            sha256=sha256_folder(path),
            kind="diffusion",
            channels=int(details["in_channels"]),
            details=details,
        )
    checkpoint = read_denoiser(path)
    shape = tuple(int(size) for size in checkpoint["input_shape"])
    dncnn = build_denoiser(shape, int(checkpoint["depth"]), int(checkpoint["width"]))
    try:
        dncnn.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ModelError(f"denoiser {path} holds weights that do not fit its arch") from error
    dncnn = dncnn.to(device).eval()
    for parameter in dncnn.parameters():
        parameter.requires_grad_(False)
    return LoadedDenoiser(
        module=dncnn,
        path=path,
        sha256=sha256_file(path),
        kind="dncnn",
        channels=shape[0],
        dataset=str(checkpoint["dataset"]),
        input_shape=(shape[0], shape[1], shape[2]),
        norm=str(checkpoint["norm"]),
        sigma_max=float(checkpoint["sigma_max"]),
    )


def denoiser_record(
    denoiser: LoadedDenoiser, thetas: Iterable[Theta], norm: Norm | str
) -> dict[str, Any]:
    """What a sidecar or manifest records of the denoiser: its file (or folder) and hash, and
    for a diffusion model the timesteps the noise levels of ``thetas`` use (only then are
    ``thetas`` read)."""
    record: dict[str, Any] = {
        "denoiser": str(denoiser.path),
        "denoiser_sha256": denoiser.sha256,
    }
    if isinstance(denoiser.module, DiffusionDenoiser):
        stds = [float(torch.as_tensor(noise_level(t, norm, ())).min()) for t in thetas]
        record["denoiser_timesteps"] = timestep_record(denoiser.module, stds) if stds else None
    return record


# ---------------------------------------------------------------------------------------------
# the denoised base classifier


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
        return self.classifier(denoised)  # type: ignore[no-any-return]


def find_denoised(model: nn.Module) -> DenoisedClassifier | None:
    """The :class:`DenoisedClassifier` inside ``model`` (speed options may wrap it), if any."""
    return next((m for m in model.modules() if isinstance(m, DenoisedClassifier)), None)


def inputs_per_theta(model: nn.Module, group: int) -> int:
    """How many inputs may share forward passes: ``group``, or 1 when ``model`` denoises with a
    theta that changes from input to input (CERTIFY's passes then hold one input's samples)."""
    denoised = find_denoised(model)
    return 1 if denoised is not None and not denoised.fixed else group
