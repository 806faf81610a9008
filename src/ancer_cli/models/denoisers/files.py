"""The denoiser file format ``ancer-denoiser/1``: writing one atomically and reading it back
(weights only, checked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ancer_cli.artifacts import atomic_writer
from ancer_cli.errors import ModelError
from ancer_cli.models.checkpoints import _on_cpu as on_cpu
from ancer_cli.models.denoisers.architecture import DnCNN
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
