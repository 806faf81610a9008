"""Loading any denoiser -- an ``ancer-denoiser/1`` file or a diffusers DDPM folder -- for
inference, and what a sidecar or manifest records of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import sha256_file
from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta
from ancer_cli.errors import ModelError
from ancer_cli.models.denoisers.architecture import DnCNN, noise_level
from ancer_cli.models.denoisers.files import read_denoiser
from ancer_cli.models.diffusion import (
    DiffusionDenoiser,
    load_diffusion,
    sha256_folder,
    timestep_record,
)


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
