"""Where a run reads each input's theta from: a fixed sigma, a thetas folder (ours, with its
manifest, or the original ANCER package's), an isotropic value file -- opened once per run and
checked against it -- as a :data:`ThetaSource`, a map from dataset index to theta."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta
from ancer_cli.core.sound import sound_theta
from ancer_cli.data import LoadedData
from ancer_cli.errors import ThetaError
from ancer_cli.run.spec import inputs_spec
from ancer_cli.thetas import (
    MANIFEST_NAME,
    load_theta,
    read_isotropic_values,
    read_manifest,
    theta_indices,
    theta_path,
)

ThetaSource = Callable[[int], Theta]
"""Maps a dataset index to the input's theta (a number or a tensor on the model's device)."""


def fixed_theta(theta: float) -> ThetaSource:
    """The same theta for every input (Cohen et al.'s fixed-sigma smoothing)."""
    return lambda _idx: theta


def sound_thetas(thetas: ThetaSource, norm: Norm, levels: int) -> ThetaSource:
    """``thetas`` as the sound sampler certifies them on the ``1/levels`` grid
    (:func:`~ancer_cli.core.sound.sound_theta`: l2 unchanged, l1 the grid half-width), so radii,
    ``min_sigma`` and the memory pass all speak of the noise actually drawn."""
    return lambda idx: sound_theta(thetas(idx), norm, levels)



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
    no manifest or does not say), read with the one mapping of run records
    (:func:`~ancer_cli.run.spec.inputs_spec`): the defaults of every command that reads the
    folder."""

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
    spec = inputs_spec(manifest["arguments"], f"manifest {Path(path or '') / MANIFEST_NAME}")
    return RecordedRun(
        manifest,
        model=spec.model,
        dataset=spec.dataset,
        data_root=spec.data_root,
        split=spec.split,
        norm=spec.norm.value if spec.norm is not None else None,
        classes=spec.classes,
    )


def open_thetas(
    path: Path,
    data: LoadedData,
    *,
    norm: Norm | str | None,
    model_sha256: str | None,
    device: torch.device,
    selected: Sequence[int] | None = None,
    recorded: RecordedRun | None = None,
    denoiser_sha256: str | None = None,
) -> ThetaSet:
    """Open a thetas folder or isotropic value file for ``data`` and check it fits the run.

    A manifest must agree on dataset, split, norm (when given) and model hash, and, where it
    records one (``denoiser_sha256``, ``None`` for none), on the denoiser's hash. A value file
    holds either one value per dataset index of the split (its length is the split's size) or,
    as the original data-dependent smoothing code writes it, one value per input the run
    selects (``selected``, the dataset indices of ``--skip``/``--max`` in index order): value
    k then belongs to ``selected[k]``. When both lengths agree the meanings coincide; any other
    length is a :class:`ThetaError`.

    ``recorded`` is :func:`recorded_run` of the same ``path`` when the caller has read it
    already: its manifest is used rather than read again (a run reads the manifest once).
    """
    path = Path(path)
    shape = tuple(data.info.input_shape)
    if not path.exists():
        raise ThetaError(f"thetas {path} do not exist; run ancer optimize --out {path} first")
    if path.is_file():
        values = read_isotropic_values(path)
        size = data.size
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
    manifest = recorded.manifest if recorded is not None else read_manifest(path)
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
    if "denoiser_sha256" in arguments and arguments["denoiser_sha256"] != denoiser_sha256:
        recorded_hash, named = arguments["denoiser_sha256"], arguments.get("denoiser")
        if recorded_hash is None:
            problem, fix = "without a denoiser, this run gives one", "drop --denoiser"
        elif denoiser_sha256 is None:
            problem = (
                f"with denoiser {named} (SHA-256 {recorded_hash[:12]}...), this run gives no "
                "denoiser"
            )
            fix = f"certify with --denoiser {named}"
        else:
            problem = (
                f"with another denoiser (SHA-256 {recorded_hash[:12]}..., given denoiser "
                f"{denoiser_sha256[:12]}...)"
            )
            fix = f"certify with the denoiser they were optimized with, {named}"
        raise ThetaError(f"{where} were optimized {problem}; {fix}")
    recorded_method = manifest.get("method")
    if recorded_method not in ("isotropic", "ancer"):
        raise ThetaError(
            f"{where} name method {recorded_method!r}, expected isotropic or ancer"
        )
    listed = manifest.get("indices")
    if not isinstance(listed, list) or not all(isinstance(i, int) for i in listed):
        raise ThetaError(f"{where} lack the list of optimized indices")
    return ThetaSet(
        path, str(recorded_method), listed, shape, device, manifest=manifest, split=data.split
    )
