"""Thetas: the theta-folder format (``theta_{split}_{idx}.pt`` files and ``manifest.json``), the
sources a run reads them from (our folders, original ANCER folders, isotropic value files), and
how a run maps each input to its theta (:data:`ThetaSource`).

Also :func:`read_input_thetas`: chosen inputs of a source with their images, for pictures.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ancer_cli.artifacts import atomic_writer, read_json
from ancer_cli.core.noise import Norm, Theta
from ancer_cli.core.sound import sound_theta
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.errors import ResultsError, ThetaError


class CertifyMethod(str, enum.Enum):
    """How theta was chosen: one sigma for all (Cohen et al.), per-input scalar, per-input tensor."""

    fixed = "fixed"
    isotropic = "isotropic"
    ancer = "ancer"


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


# ---------------------------------------------------------------------------------------------
# theta folders: theta_{split}_{idx}.pt (the original ANCER package's names) + manifest.json

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


# ---------------------------------------------------------------------------------------------
# theta sources: folders and value files, opened once per run


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
    thetas = open_thetas(
        path, data, norm=None, model_sha256=None, device=torch.device("cpu"), recorded=recorded
    )
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
