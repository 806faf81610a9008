"""The theta-folder format: ``theta_{split}_{idx}.pt`` files (the original ANCER package's names:
a float32 tensor of the input's shape, or a 0-d tensor), the ``manifest.json`` ``ancer optimize``
writes beside them, and isotropic value files (one sigma per input). Where a run reads its
thetas from is :mod:`ancer_cli.theta_sources`'.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ancer_cli.artifacts import atomic_writer, read_json
from ancer_cli.errors import ResultsError, ThetaError

THETA_FORMAT = "ancer-thetas/1"
MANIFEST_NAME = "manifest.json"
ISOTROPIC_SUBFOLDER = "isotropic"
_THETA_NAME = re.compile(r"^theta_(?P<split>[A-Za-z0-9]+)_(?P<idx>\d+)\.pt$")


def theta_path(folder: Path, split: str, idx: int) -> Path:
    """``folder/theta_{split}_{idx}.pt``."""
    return Path(folder) / f"theta_{split}_{idx}.pt"


def save_theta(path: Path, theta: torch.Tensor) -> None:
    """Write one input's theta (float32, on the CPU) atomically."""
    with atomic_writer(path, "wb") as handle:
        torch.save(theta.detach().to("cpu", torch.float32).contiguous().clone(), handle)


def validate_theta(theta: object, where: str, shape: tuple[int, ...] | None) -> torch.Tensor:
    """Check a loaded theta: a floating tensor, 0-d or of ``shape``, finite and > 0."""
    if not isinstance(theta, torch.Tensor):
        raise ThetaError(f"{where} holds a {type(theta).__name__}, expected a theta tensor")
    if not theta.is_floating_point():
        raise ThetaError(f"{where} holds a {theta.dtype} tensor, expected floating point")
    if theta.ndim != 0 and shape is not None and tuple(theta.shape) != tuple(shape):
        raise ThetaError(
            f"{where} has shape {tuple(theta.shape)}, expected {tuple(shape)} (the input's shape) "
            "or a single number; were these thetas optimized for another dataset?"
        )
    if not bool(torch.isfinite(theta).all()):
        raise ThetaError(f"{where} contains NaN or infinite values; optimize this input again")
    if not bool((theta > 0).all()):
        raise ThetaError(
            f"{where} contains values <= 0 (min {float(theta.min()):.4g}); theta must be positive"
        )
    return theta.to(torch.float32)


def load_theta(path: Path, shape: tuple[int, ...] | None) -> torch.Tensor:
    """Read and validate one theta file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ThetaError(f"theta file {path} is missing; optimize that input or lower --max")
    try:
        theta = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        raise ThetaError(
            f"theta file {path} cannot be read as a tensor ({type(error).__name__})"
        ) from error
    return validate_theta(theta, f"theta file {path}", shape)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` for an original ANCER folder without one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = read_json(path, "manifest")
    except ResultsError as error:
        raise ThetaError(str(error)) from error
    if manifest.get("format") != THETA_FORMAT:
        raise ThetaError(
            f"manifest {path} has format {manifest.get('format')!r}, expected {THETA_FORMAT!r}"
        )
    _check_manifest_fields(manifest, path)
    return manifest


def _check_manifest_fields(manifest: dict[str, Any], path: Path) -> None:
    """The fields later code relies on, with the types it expects."""

    def bad(field: str, expected: str) -> ThetaError:
        return ThetaError(
            f"manifest {path}: {field} must be {expected}; the file is damaged, "
            "optimize again with --force"
        )

    arguments = manifest.get("arguments")
    if not isinstance(arguments, dict):
        raise bad("arguments", "an object")
    for key in ("model", "model_sha256", "dataset", "split", "norm"):
        if not isinstance(arguments.get(key), str):
            raise bad(f"arguments.{key}", "a string")
    for key in ("data_root", "classes"):
        if not isinstance(arguments.get(key), str | None):
            raise bad(f"arguments.{key}", "a string or null")
    if manifest.get("method") not in ("isotropic", "ancer"):
        raise bad("method", "isotropic or ancer")
    indices = manifest.get("indices")
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices
    ):
        raise bad("indices", "a list of dataset indices")
    if not isinstance(manifest.get("complete"), bool):
        raise bad("complete", "true or false")


def theta_indices(folder: Path, split: str) -> list[int]:
    """Sorted dataset indices that have a ``theta_{split}_{idx}.pt`` file in ``folder``."""
    found = []
    for entry in Path(folder).iterdir():
        match = _THETA_NAME.match(entry.name)
        if match and match["split"] == split:
            found.append(int(match["idx"]))
    return sorted(found)


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a legacy pickle


def read_isotropic_values(path: Path) -> torch.Tensor:
    """An isotropic thetas file: a 1-d float tensor saved with ``torch.save`` (the original
    data-dependent smoothing code's output, whatever its file name: it writes
    ``isotropic_parameters`` without a suffix) or a text file with one number per line.

    Returns the values as a 1-d float32 tensor; how they map to inputs is the caller's
    (:func:`open_thetas`) business.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if path.suffix in (".pt", ".pth") or head.startswith(_TORCH_MAGIC):
            values = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(values, torch.Tensor):
                raise ThetaError(
                    f"isotropic thetas file {path} holds a {type(values).__name__}, expected a tensor"
                )
        else:
            values = torch.tensor([float(v) for v in path.read_text().split()], dtype=torch.float64)
    except ThetaError:
        raise
    except Exception as error:
        raise ThetaError(
            f"isotropic thetas file {path} cannot be read ({type(error).__name__}: {error})"
        ) from error
    if sum(size > 1 for size in values.shape) > 1:
        raise ThetaError(
            f"isotropic thetas file {path} holds a tensor of shape {tuple(values.shape)}; "
            "expected one sigma per input (a 1-d tensor)"
        )
    values = values.detach().flatten().to(torch.float32)
    if values.numel() == 0:
        raise ThetaError(f"isotropic thetas file {path} is empty; expected one sigma per input")
    return validate_theta(values, f"isotropic thetas file {path}", None)
