"""Theta sources: our folders (with manifest), original ANCER folders, isotropic value files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ancer_cli.artifacts import (
    MANIFEST_NAME,
    load_theta,
    read_isotropic_values,
    read_manifest,
    theta_indices,
    theta_path,
)
from ancer_cli.core.noise import Norm
from ancer_cli.data import LoadedData
from ancer_cli.errors import ThetaError


@dataclass
class ThetaSet:
    """Per-input thetas for one dataset split.

    ``method`` is ``isotropic`` (one number per input) or ``ancer`` (a tensor of the input's
    shape). ``indices`` are the dataset indices that have a theta. ``manifest`` is ``None`` for
    original ANCER folders and value files.
    """

    path: Path
    method: str
    indices: list[int]
    shape: tuple[int, ...]
    device: torch.device
    manifest: dict[str, Any] | None = None
    values: torch.Tensor | None = None  # isotropic value file
    split: str = "test"
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def theta(self, idx: int) -> torch.Tensor:
        """Theta of dataset index ``idx`` on the device: 0-d (isotropic) or the input's shape."""
        if self.values is not None:
            if idx >= self.values.numel():
                raise ThetaError(
                    f"isotropic thetas file {self.path} has {self.values.numel()} values, "
                    f"none for dataset index {idx}"
                )
            return self.values[idx].to(self.device)
        theta = load_theta(theta_path(self.path, self.split, idx), self.shape)
        if self.method == "ancer" and theta.ndim == 0:
            raise ThetaError(
                f"theta file {theta_path(self.path, self.split, idx)} holds one number but the "
                f"folder holds anisotropic thetas of shape {self.shape}"
            )
        return theta.to(self.device)


def open_thetas(
    path: Path,
    data: LoadedData,
    *,
    norm: Norm | str | None,
    model_sha256: str | None,
    device: torch.device,
) -> ThetaSet:
    """Open a thetas folder or isotropic value file for ``data`` and check it fits the run.

    A manifest must agree on dataset, split, norm (when given) and model hash.
    """
    path = Path(path)
    shape = tuple(data.info.input_shape)
    if not path.exists():
        raise ThetaError(f"thetas {path} do not exist; run ancer optimize --out {path} first")
    if path.is_file():
        values = read_isotropic_values(path)
        if values.numel() < len(data.dataset):  # type: ignore[arg-type]
            raise ThetaError(
                f"isotropic thetas file {path} has {values.numel()} values but the "
                f"{data.info.name} {data.split} split has {len(data.dataset)} inputs"  # type: ignore[arg-type]
            )
        return ThetaSet(
            path,
            "isotropic",
            list(range(values.numel())),
            shape,
            device,
            values=values,
            split=data.split,
        )
    manifest = read_manifest(path)
    if manifest is None:
        indices = theta_indices(path, data.split)
        if not indices:
            raise ThetaError(
                f"{path} holds no theta_{data.split}_<idx>.pt files and no {MANIFEST_NAME}"
            )
        first = load_theta(theta_path(path, data.split, indices[0]), shape)
        method = "isotropic" if first.ndim == 0 else "ancer"
        return ThetaSet(path, method, indices, shape, device, split=data.split)
    arguments = manifest.get("arguments", {})
    where = f"thetas {path} ({MANIFEST_NAME})"
    if not manifest.get("complete", False):
        raise ThetaError(
            f"{where} record an unfinished run; finish it with ancer optimize --resume"
        )
    for key, have in [("dataset", data.info.name), ("split", data.split)]:
        if arguments.get(key) != have:
            raise ThetaError(
                f"{where} were optimized on {key} {arguments.get(key)!r}, this run uses {have!r}"
            )
    if norm is not None and arguments.get("norm") != Norm(norm).value:
        raise ThetaError(
            f"{where} were optimized for norm {arguments.get('norm')}, this run certifies "
            f"{Norm(norm).value}; drop --norm or optimize again"
        )
    if model_sha256 is not None and arguments.get("model_sha256") != model_sha256:
        raise ThetaError(
            f"{where} were optimized for another model (SHA-256 {str(arguments.get('model_sha256'))[:12]}..., "
            f"given model {model_sha256[:12]}...); certify with the model they were optimized for"
        )
    method = manifest.get("method")
    if method not in ("isotropic", "ancer"):
        raise ThetaError(f"{where} name method {method!r}, expected isotropic or ancer")
    indices = manifest.get("indices")
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
        raise ThetaError(f"{where} lack the list of optimized indices")
    return ThetaSet(path, method, indices, shape, device, manifest=manifest, split=data.split)
