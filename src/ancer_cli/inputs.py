"""What a run smooths, resolved once: the model (checked against its data), the data, each
input's theta and the dataset indices it covers -- from the options certify and predict share
(:class:`InputsSpec`) -- and the groups of inputs their dataset loops sample together."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.core.noise import Norm, Theta, theta_from_sigma
from ancer_cli.core.precision import Precision, prepare_model, speed_options_record
from ancer_cli.core.sound import GAUSSIAN_BITS, TAIL_SIGMAS, to_grid, total_variation_budget
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.distributed import Session
from ancer_cli.errors import AncerError, ModelError, first_line
from ancer_cli.models import LoadedModel, load_model
from ancer_cli.models.denoisers import DenoisedClassifier, denoiser_record, load_denoiser
from ancer_cli.thetas import (
    CertifyMethod,
    ThetaSource,
    fixed_theta,
    open_thetas,
    recorded_run,
    sound_thetas,
)


@dataclass(frozen=True)
class RunInputs:
    """The model, the data it runs on and the norm; ``logits`` is the model's number of
    classes (measured on one input)."""

    model: LoadedModel
    data: LoadedData
    norm: Norm
    logits: int


def load_run_inputs(
    model_path: Path,
    device: torch.device,
    *,
    dataset: str | None,
    data_root: Path | None,
    split: str,
    norm: Norm | str | None,
    arch: str | None = None,
    classes: Path | None = None,
) -> RunInputs:
    """Load the model, then its dataset (``dataset`` or the one stored in the checkpoint; an
    image folder labeled with the class list ``classes``, if given), and check one forward pass.
    The norm defaults to the checkpoint's, else l2."""
    loaded = load_model(model_path, device, arch=arch)
    name = dataset or loaded.dataset
    if name is None:
        raise AncerError(f"model {model_path} does not record its dataset; pass --dataset")
    data = load_dataset(name, split, data_root, classes=classes)
    logits = check_compatible(loaded.module, data, device, str(model_path))
    chosen = Norm(norm) if norm is not None else Norm(loaded.norm or Norm.l2.value)
    return RunInputs(loaded, data, chosen, logits)


def labels_record(data: LoadedData) -> dict[str, Any] | None:
    """How an image folder's images were labeled, as sidecars and manifests record it (``None``
    for the built-in datasets)."""
    return data.classes.record() if data.classes is not None else None


def select_indices(size: int, skip: int = 1, max_index: int | None = None) -> list[int]:
    """Dataset indices to certify, as in Cohen et al.'s scripts: every ``skip``-th index,
    stopping before ``max_index`` (all when ``None``)."""
    stop = size if max_index is None else min(size, max_index)
    return list(range(0, stop, skip))


def check_compatible(model: nn.Module, data: LoadedData, device: torch.device, where: str) -> int:
    """One forward pass on the first input: the model must accept the dataset's inputs and
    return one logit per class of a built-in dataset, or at least as many logits as the labels
    of an image folder need (a folder may hold any subset of the model's classes). Returns the
    number of logits."""
    x, _ = data.dataset[0]
    try:
        with torch.inference_mode():
            logits = model(x.unsqueeze(0).to(device=device, dtype=torch.float32))
    except Exception as error:  # any failure here is a model/data mismatch, not a bug of ours
        first = first_line(error)
        raise ModelError(
            f"model {where} cannot process {data.info.name} inputs of shape "
            f"{tuple(x.shape)}: {first}"
        ) from error
    needed = data.info.num_classes
    if data.classes is None:
        if logits.ndim != 2 or logits.shape[1] != needed:
            raise ModelError(
                f"model {where} returns logits of shape {tuple(logits.shape)} for one input; "
                f"{data.info.name} has {needed} classes, expected (1, {needed})"
            )
        return needed
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise ModelError(
            f"model {where} returns logits of shape {tuple(logits.shape)} for one input, "
            "expected (1, classes)"
        )
    count = int(logits.shape[1])
    if count < needed:
        mapping = data.classes
        why = (
            f"--classes {mapping.classes_file} lists {needed} classes"
            if mapping.classes_file is not None
            else f"its largest label is {needed - 1} ({mapping.describe()})"
        )
        raise ModelError(
            f"model {where} returns {count} logits but the {data.info.name} labels need "
            f"{needed}: {why}; use a model with {needed} or more classes, or relabel the "
            "sub-folders (class index names or --classes FILE)"
        )
    return count


# ---------------------------------------------------------------------------------------------
# the inputs of a certify or predict run: spec -> model, data, thetas, indices


@dataclass(frozen=True)
class InputsSpec:
    """What certify and predict smooth, with which thetas, on which inputs: the options they
    share. ``None`` means "as the thetas' manifest (or the model file) records it"; exactly one
    of ``sigma`` and ``thetas`` is given. ``seed`` seeds every input's random streams (``None``:
    not chosen yet; :func:`ancer_cli.results.run_seed` chooses it). ``sound`` draws the noise on
    the data's pixel grid (:mod:`ancer_cli.core.sound`); ``None``: wherever the data has one."""

    model: Path | None = None
    thetas: Path | None = None
    sigma: float | None = None
    method: CertifyMethod | None = None
    dataset: str | None = None
    data_root: Path | None = None
    split: str | None = None
    norm: Norm | None = None
    arch: str | None = None
    classes: Path | None = None
    skip: int = 1
    max_index: int | None = None
    precision: Precision = Precision.fp32
    channels_last: bool = False
    seed: int | None = None
    sound: bool | None = None
    denoiser: Path | None = None
    """an ``ancer-denoiser/1`` file: the base classifier becomes ``model(denoiser(z, theta))``"""


@dataclass(frozen=True)
class SmoothedInputs:
    """What a certify or predict run smooths, loaded and checked: the base classifier (with its
    speed options), the data, each input's theta, the indices, and the arguments naming them."""

    model: nn.Module
    data: LoadedData
    norm: Norm
    method: CertifyMethod
    thetas: ThetaSource
    description: str
    indices: list[int]
    logits: int
    arguments: dict[str, Any]
    grid_levels: int | None = None
    """the data's grid ``s`` when sampling soundly (``None``: float noise)"""


def resolve_inputs(spec: InputsSpec, session: Session) -> SmoothedInputs:
    """Load the model, data and thetas of ``spec`` and choose its indices. Defaults come from
    the thetas' manifest, then from the model file; ``sigma`` or ``thetas`` must be given.
    The manifest is read once; opening the thetas reuses it."""
    recorded = recorded_run(spec.thetas)
    model_path = spec.model or recorded.model
    if model_path is None:
        raise AncerError("give --model (the thetas have no manifest naming their model)")
    if spec.thetas is not None and recorded.manifest is None:
        if spec.dataset is None or spec.norm is None:
            raise AncerError(
                f"{spec.thetas} has no manifest.json: pass --dataset and --norm with --model"
            )
    run = load_run_inputs(
        model_path,
        session.device,
        dataset=spec.dataset or recorded.dataset,
        data_root=spec.data_root or recorded.data_root,
        split=spec.split or recorded.split or "test",
        norm=spec.norm or recorded.norm,
        arch=spec.arch,
        classes=spec.classes or recorded.classes,
    )
    indices = select_indices(len(run.data.dataset), spec.skip, spec.max_index)  # type: ignore[arg-type]
    denoiser = load_denoiser(spec.denoiser, session.device) if spec.denoiser else None
    if denoiser is not None:
        denoiser.check_inputs(run.data.info.input_shape, run.data.info.name)
    if spec.thetas is not None:
        theta_set = open_thetas(
            spec.thetas,
            run.data,
            norm=run.norm,
            model_sha256=run.model.sha256,
            denoiser_sha256=denoiser.sha256 if denoiser is not None else None,
            device=session.device,
            selected=indices,
            recorded=recorded,
        )
        method = CertifyMethod(theta_set.method)
        if spec.method is not None and spec.method is not method:
            raise AncerError(
                f"--method {spec.method.value} but {spec.thetas} holds {method.value} thetas"
            )
        available = set(theta_set.indices)
        indices = [i for i in indices if i in available]
        thetas: ThetaSource = theta_set.theta
        description = f"{method.value} thetas from {spec.thetas}" + (
            f" ({theta_set.layout.value})" if theta_set.layout is not None else ""
        )
    else:
        assert spec.sigma is not None
        method = CertifyMethod.fixed
        thetas = fixed_theta(theta_from_sigma(spec.sigma, run.norm))
        description = f"noise sigma={spec.sigma}"
    grid = run.data.grid_levels
    sound = grid is not None if spec.sound is None else spec.sound  # default: where there is one
    if sound and grid is None:
        raise AncerError(
            f"--sound needs data on a pixel grid, and {run.data.info.name} has none "
            "(8-bit images do); pass --no-sound for float noise"
        )
    grid_levels = grid if sound else None
    if grid_levels is not None:
        thetas = sound_thetas(thetas, run.norm, grid_levels)
    model = run.model.module
    denoiser_arguments: dict[str, Any] = {}
    if denoiser is not None:
        if not denoiser.per_pixel and method is CertifyMethod.ancer:
            raise AncerError(
                f"{spec.denoiser} is a diffusion model: it takes one noise level per input "
                "(a fixed --sigma or isotropic thetas), not ANCER thetas"
            )
        chosen = indices[:1] if method is CertifyMethod.fixed else indices
        denoiser_arguments = denoiser_record(denoiser, (thetas(i) for i in chosen), run.norm)
        fixed = method is CertifyMethod.fixed
        first = thetas(indices[0]) if indices else None
        model = DenoisedClassifier(model, denoiser.module, run.norm, theta=first, fixed=fixed)
        if first is not None:  # the composed model must still give one logit per class
            check_compatible(model, run.data, session.device, f"{model_path} + {spec.denoiser}")
    arguments = {
        "method": method.value,
        "model": str(model_path),
        "model_sha256": run.model.sha256,
        "thetas": _text(spec.thetas),
        "dataset": run.data.info.name,
        "split": run.data.split,
        "classes": _text(spec.classes or recorded.classes),
        "norm": run.norm.value,
        "sigma": spec.sigma,
        "skip": spec.skip,
        "max": spec.max_index,
        "seed": spec.seed,
        "sound": sound,
        **speed_options_record(spec.precision, spec.channels_last),
        **denoiser_arguments,
    }
    return SmoothedInputs(
        model=prepare_model(model, spec.precision, spec.channels_last),
        data=run.data,
        norm=run.norm,
        method=method,
        thetas=thetas,
        description=description,
        indices=indices,
        logits=run.logits,
        arguments=arguments,
        grid_levels=grid_levels,
    )


def sound_record(inputs: SmoothedInputs) -> dict[str, Any]:
    """What a run's sidecar says about sound sampling (nothing with float noise): the grid, and
    the total-variation budget ``tau`` taken off each ``pA`` lower bound -- its value where every
    input has the same theta (fixed sigma), else the rule that gives it per input."""
    levels = inputs.grid_levels
    if levels is None:
        return {}
    tau = None
    if inputs.method is CertifyMethod.fixed and inputs.indices:
        x = inputs.data.dataset[inputs.indices[0]][0]
        tau = total_variation_budget(inputs.thetas(inputs.indices[0]), inputs.norm, levels, x.shape)
    rule = (
        "0 (exact discrete uniform)"
        if inputs.norm is Norm.l1
        else f"sum over pixels of (2 ceil({TAIL_SIGMAS} s theta_i) + 4) 2^-{GAUSSIAN_BITS}"
    )
    return {"sound": {"grid_levels": levels, "step": f"1/{levels}", "tau": tau, "tau_rule": rule}}


# ---------------------------------------------------------------------------------------------
# the inputs the dataset loops sample together


@dataclass(frozen=True)
class InputGroup:
    """Consecutive inputs sampled together: dataset ``indices``, their ``labels``, the images
    ``xs`` ``(n, C, H, W)`` on the model's device and their ``thetas``."""

    indices: list[int]
    labels: list[int]
    xs: torch.Tensor
    thetas: list[Theta]


def input_groups(
    data: LoadedData,
    indices: Iterable[int],
    thetas: ThetaSource,
    size: int,
    device: torch.device,
    grid_levels: int | None = None,
) -> Iterator[InputGroup]:
    """The inputs of ``indices`` in order, in groups of at most ``size``, with their thetas.

    A theta that cannot be loaded ends its group early: the inputs before it are yielded (so
    their rows are written), then its error is raised. With ``grid_levels``, an input off the
    data's ``1/s`` grid is an error in the same way (sound sampling certifies grid inputs only).
    """
    order = list(indices)
    for start in range(0, len(order), size):
        chosen = order[start : start + size]
        group_thetas, failure = _load_thetas(thetas, chosen)
        chosen = chosen[: len(group_thetas)]  # what comes before a bad theta goes first
        items = [data.dataset[idx] for idx in chosen]
        if grid_levels is not None:
            on_grid, off_grid = _on_grid(items, chosen, grid_levels)
            if off_grid is not None:
                chosen, group_thetas, items, failure = (
                    chosen[:on_grid], group_thetas[:on_grid], items[:on_grid], off_grid
                )  # fmt: skip
        if chosen:
            xs = torch.stack([x for x, _ in items]).to(device=device, dtype=torch.float32)
            yield InputGroup(chosen, [int(label) for _, label in items], xs, group_thetas)
        if failure is not None:
            raise failure


def _on_grid(
    items: list[tuple[torch.Tensor, int]], indices: list[int], levels: int
) -> tuple[int, AncerError | None]:
    """How many leading ``items`` lie on the ``1/levels`` grid, and the error of the first that
    does not (``None`` if all do)."""
    for count, ((x, _), idx) in enumerate(zip(items, indices, strict=True)):
        try:
            to_grid(x, levels)
        except ValueError as error:
            return count, AncerError(
                f"input {idx}: {error}; --sound certifies on-grid inputs only "
                "(--no-sound for float noise)"
            )
    return len(items), None


def _load_thetas(thetas: ThetaSource, indices: list[int]) -> tuple[list[Theta], AncerError | None]:
    """Thetas of ``indices`` up to the first that cannot be loaded, and that error."""
    loaded: list[Theta] = []
    for idx in indices:
        try:
            loaded.append(thetas(idx))
        except AncerError as error:
            return loaded, error
    return loaded, None


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None
