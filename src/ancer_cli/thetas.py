"""Theta sources: our folders (with manifest), original ANCER folders, isotropic value files.

Also :func:`read_input_thetas`: chosen inputs of a source with their images, for pictures.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
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
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.errors import ThetaError


class ValueLayout(str, enum.Enum):
    """Which input each value of an isotropic value file belongs to."""

    per_index = "one value per dataset index"
    per_selected = "one value per selected input"


@dataclass
class ThetaSet:
    """Per-input thetas for one dataset split.

    ``method`` is ``isotropic`` (one number per input) or ``ancer`` (a tensor of the input's
    shape). ``indices`` are the dataset indices that have a theta. ``manifest`` is ``None`` for
    original ANCER folders and value files. A value file's ``values`` are indexed by dataset
    index, or through ``positions`` when it holds one value per selected input (``layout``).
    """

    path: Path
    method: str
    indices: list[int]
    shape: tuple[int, ...]
    device: torch.device
    manifest: dict[str, Any] | None = None
    values: torch.Tensor | None = None  # isotropic value file
    split: str = "test"
    positions: dict[int, int] | None = None  # dataset index -> value, if not the index itself
    layout: ValueLayout | None = None  # how a value file's values map to inputs
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def theta(self, idx: int) -> torch.Tensor:
        """Theta of dataset index ``idx`` on the device: 0-d (isotropic) or the input's shape.

        Each file is read once per run: the validated theta is kept (on the CPU) for the later
        calls -- certification, then the memory pass's claims, regions and rewritten rows.
        """
        if self.values is not None:
            position = idx if self.positions is None else self.positions.get(idx, -1)
            if not 0 <= position < self.values.numel():
                raise ThetaError(
                    f"isotropic thetas file {self.path} has {self.values.numel()} values, "
                    f"none for dataset index {idx}"
                )
            return self.values[position].to(self.device)
        theta = self._cache.get(idx)
        if theta is None:
            theta = load_theta(theta_path(self.path, self.split, idx), self.shape)
            if self.method == "ancer" and theta.ndim == 0:
                raise ThetaError(
                    f"theta file {theta_path(self.path, self.split, idx)} holds one number but "
                    f"the folder holds anisotropic thetas of shape {self.shape}"
                )
            self._cache[idx] = theta
        return theta.to(self.device)


@dataclass(frozen=True)
class RecordedRun:
    """What a thetas folder's manifest says about the run that wrote it (``None`` where it has
    no manifest or does not say): the defaults of every command that reads the folder."""

    manifest: dict[str, Any] | None
    model: Path | None = None
    dataset: str | None = None
    data_root: Path | None = None
    split: str | None = None
    norm: str | None = None
    classes: Path | None = None


def recorded_run(path: Path | None) -> RecordedRun:
    """The :class:`RecordedRun` of thetas at ``path`` (a folder with or without a manifest, or an
    isotropic values file, which records nothing)."""
    manifest = read_manifest(path) if path is not None and Path(path).is_dir() else None
    if manifest is None:
        return RecordedRun(None)
    arguments = manifest.get("arguments", {})

    def as_path(key: str) -> Path | None:
        return Path(arguments[key]) if arguments.get(key) else None

    return RecordedRun(
        manifest,
        model=as_path("model"),
        dataset=arguments.get("dataset"),
        data_root=as_path("data_root"),
        split=arguments.get("split"),
        norm=arguments.get("norm"),
        classes=as_path("classes"),
    )


def open_thetas(
    path: Path,
    data: LoadedData,
    *,
    norm: Norm | str | None,
    model_sha256: str | None,
    device: torch.device,
    selected: Sequence[int] | None = None,
) -> ThetaSet:
    """Open a thetas folder or isotropic value file for ``data`` and check it fits the run.

    A manifest must agree on dataset, split, norm (when given) and model hash. A value file
    holds either one value per dataset index of the split (its length is the split's size) or,
    as the original data-dependent smoothing code writes it, one value per input the run
    selects (``selected``, the dataset indices of ``--skip``/``--max`` in index order): value
    k then belongs to ``selected[k]``. When both lengths agree the meanings coincide; any other
    length is a :class:`ThetaError`.
    """
    path = Path(path)
    shape = tuple(data.info.input_shape)
    if not path.exists():
        raise ThetaError(f"thetas {path} do not exist; run ancer optimize --out {path} first")
    if path.is_file():
        values = read_isotropic_values(path)
        size = len(data.dataset)  # type: ignore[arg-type]
        if values.numel() == size:
            layout = ValueLayout.per_index
            indices, positions = list(range(size)), None
        elif selected is not None and values.numel() == len(selected):
            layout = ValueLayout.per_selected
            indices = list(selected)
            positions = {idx: k for k, idx in enumerate(indices)}
        else:
            chosen = (
                f" or {len(selected)} (one per input selected by --skip/--max, in index order)"
                if selected is not None
                else ""
            )
            raise ThetaError(
                f"isotropic thetas file {path} has {values.numel()} values, but the "
                f"{data.info.name} {data.split} split has {size} inputs; expected {size} (one "
                f"per dataset index){chosen}: pass the --skip/--max the values were optimized "
                "with, or the file of this split"
            )
        return ThetaSet(
            path,
            "isotropic",
            indices,
            shape,
            device,
            values=values,
            split=data.split,
            positions=positions,
            layout=layout,
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


# ---------------------------------------------------------------------------------------------
# inputs beside their thetas (for pictures)

DEFAULT_PICTURES = 4
THETA_MEANING = {"l2": "noise std per pixel", "l1": "uniform half-width per pixel"}


@dataclass(frozen=True)
class InputTheta:
    """One input and its theta, on the CPU: ``image`` ``(C, H, W)`` in [0, 1]; ``theta`` of the
    same shape (anisotropic) or 0-d (isotropic); ``label`` the dataset's class."""

    index: int
    image: torch.Tensor
    theta: torch.Tensor
    label: int | None = None


@dataclass(frozen=True)
class InputThetas:
    """The inputs :func:`read_input_thetas` chose, the source they came from and its norm
    (``None`` when the source does not record it)."""

    inputs: list[InputTheta]
    thetas: ThetaSet
    norm: str | None


def read_input_thetas(
    path: Path,
    indices: Sequence[int] = (),
    *,
    dataset: str | None = None,
    data_root: Path | None = None,
    split: str | None = None,
) -> InputThetas:
    """Read the thetas of dataset ``indices`` from ``path`` with the images they belong to.

    A folder with a manifest names its dataset, data root and split (``dataset``, if given,
    must agree); an original ANCER folder or an isotropic value file needs ``dataset``.
    Without ``indices``, the first four inputs that have a theta. Raises
    :class:`ThetaError` for an index without a theta.
    """
    path = Path(path)
    if not path.exists():
        raise ThetaError(f"thetas {path} do not exist; run ancer optimize --out {path} first")
    recorded = recorded_run(path)
    name = dataset or recorded.dataset
    if name is None:
        raise ThetaError(
            f"thetas {path} have no {MANIFEST_NAME} saying which dataset they belong to; "
            "pass --dataset (and --data-root)"
        )
    data = load_dataset(name, split or recorded.split or "test", data_root or recorded.data_root)
    thetas = open_thetas(path, data, norm=None, model_sha256=None, device=torch.device("cpu"))
    available = set(thetas.indices)
    chosen = list(indices) if indices else thetas.indices[:DEFAULT_PICTURES]
    size = len(data.dataset)  # type: ignore[arg-type]
    inputs = []
    for idx in chosen:
        if idx not in available or not 0 <= idx < size:
            first, last = (min(available), max(available)) if available else (None, None)
            raise ThetaError(
                f"thetas {path} have no theta for {data.split} index {idx} (they cover "
                f"{len(available)} inputs, indices {first} to {last}); choose another --index"
            )
        image, label = data.dataset[idx]
        inputs.append(InputTheta(idx, image.cpu(), thetas.theta(idx).cpu(), int(label)))
    return InputThetas(inputs, thetas, recorded.norm)
