"""What a run smooths, resolved once: the model (checked against its data), the data, each
input's theta, the dataset indices it covers and the noise -- from the options the runs share
(:class:`~ancer_cli.run.spec.InputsSpec`) -- its commitment, and the groups of inputs the dataset
loops sample together."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.core.choices import Norm, theta_from_sigma
from ancer_cli.core.law import Noise, NoiseLaw
from ancer_cli.core.noise import Theta
from ancer_cli.core.precision import prepare_model
from ancer_cli.core.sound import GAUSSIAN_BITS, TAIL_SIGMAS, to_grid, total_variation_budget
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.distributed import Session
from ancer_cli.errors import AncerError, ModelError, first_line
from ancer_cli.models import LoadedModel, load_model
from ancer_cli.models.checks import check_inputs, check_per_input
from ancer_cli.models.denoisers import (
    DenoisedClassifier,
    LoadedDenoiser,
    denoiser_record,
    load_denoiser,
    noise_level,
)
from ancer_cli.run.commit import Commitment, commit_inputs, tensor_digest
from ancer_cli.run.spec import InputsSpec, Resolved, inputs_arguments
from ancer_cli.settings import CertifyMethod
from ancer_cli.theta_sources import (
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
    # the smoothed classifier is defined for a function of one input: refuse a model whose
    # answers depend on what shares its forward pass (before any denoiser is put in front)
    check_per_input(loaded.module, check_inputs(data).to(device), str(model_path))
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
# the inputs of a run: spec -> model, data, thetas, indices, noise; and their commitment


def _denoiser_notes(denoiser: LoadedDenoiser, thetas: Sequence[Theta], norm: Norm) -> list[str]:
    """A caution where a noise level exceeds the largest the denoiser was trained on: beyond it
    a denoiser's output is untested (often every input abstains)."""
    if denoiser.sigma_max is None or not thetas:
        return []
    largest = max(float(torch.as_tensor(noise_level(t, norm, ())).max()) for t in thetas)
    if largest <= denoiser.sigma_max * (1 + 1e-9):
        return []
    return [
        f"caution: noise level {largest:g} exceeds the largest the denoiser {denoiser.path} was "
        f"trained on ({denoiser.sigma_max:g}); expect abstentions, or train it with --sigma "
        f"{largest:g}"
    ]


def _bare(classifier: nn.Module) -> nn.Module:
    """The base classifier is the classifier itself (no denoiser)."""
    return classifier


@dataclass(frozen=True)
class SmoothedInputs:
    """What a run smooths, loaded and checked: the base classifier (with its speed options), the
    data, each input's theta, the indices, the noise and the arguments naming them."""

    model: nn.Module
    data: LoadedData
    method: CertifyMethod
    thetas: ThetaSource
    description: str
    indices: list[int]
    logits: int
    arguments: dict[str, Any]
    noise: Noise
    model_sha256: str
    denoiser_sha256: str | None = None
    compose: Callable[[nn.Module], nn.Module] = field(default=_bare, repr=False)
    notes: tuple[str, ...] = ()
    """cautions for the person running it (a noise level the denoiser was not trained on)"""
    """wraps a classifier into the base classifier as this run composes its own (with the
    denoiser, if any; speed options not included): reuse puts a changed model in its place"""

    @property
    def norm(self) -> Norm:
        return self.noise.norm

    @property
    def grid_levels(self) -> int | None:
        """The data's grid ``s`` when sampling soundly (``None``: float noise)."""
        return self.noise.grid

    def commitment(self, indices: Sequence[int] | None = None) -> Commitment:
        """The hashes of what this run certifies (:mod:`ancer_cli.run.commit`): model,
        denoiser, and each input of ``indices`` (all by default) with its theta (per-input
        thetas only; a fixed sigma is in the arguments)."""
        chosen = self.indices if indices is None else list(indices)
        per_input = None if self.method is CertifyMethod.fixed else self.thetas
        inputs, thetas = commit_inputs(chosen, lambda i: self.data.dataset[i][0], per_input)
        return Commitment(self.model_sha256, self.denoiser_sha256, inputs, thetas)


def resolve_inputs(
    spec: InputsSpec, session: Session, optimizing: bool = False
) -> SmoothedInputs:
    """Load the model, data and thetas of ``spec`` and choose its indices. Defaults come from
    the thetas' manifest, then from the model file; ``sigma`` or ``thetas`` must be given.
    The manifest is read once; opening the thetas reuses it.

    ``optimizing``: the thetas will be optimized from ``sigma`` (``ancer optimize``): the sigma
    defaults to the model's training sigma, and a denoiser hears each input's theta."""
    recorded = recorded_run(spec.thetas)
    model_path = spec.model or recorded.model
    if model_path is None:
        raise AncerError("give --model (the thetas have no manifest naming their model)")
    if spec.thetas is not None and recorded.manifest is None:
        if spec.dataset is None or spec.norm is None:
            raise AncerError(
                f"{spec.thetas} has no manifest.json: pass --dataset and --norm with --model"
            )
    classes = spec.classes or recorded.classes
    run = load_run_inputs(
        model_path,
        session.device,
        dataset=spec.dataset or recorded.dataset,
        data_root=spec.data_root or recorded.data_root,
        split=spec.split or recorded.split or "test",
        norm=spec.norm or recorded.norm,
        arch=spec.arch,
        classes=classes,
    )
    indices = select_indices(run.data.size, spec.skip, spec.max_index)
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
        sigma = spec.sigma
        if sigma is None and optimizing:
            sigma = run.model.sigma
            if sigma is None:
                raise AncerError(
                    f"model {model_path} does not record its training sigma; pass --sigma"
                )
            if not sigma > 0:
                raise AncerError(
                    f"model {model_path} was trained without noise (sigma {sigma}); pass --sigma"
                )
            spec = replace(spec, sigma=sigma)
        if sigma is None:
            raise AncerError("give --sigma (fixed sigma) or --thetas (per-input thetas)")
        method = CertifyMethod.fixed
        thetas = fixed_theta(theta_from_sigma(sigma, run.norm))
        description = f"noise sigma={sigma}"
    grid = run.data.grid_levels
    sound = grid is not None if spec.sound is None else spec.sound  # default: where there is one
    if sound and grid is None:
        raise AncerError(
            f"--sound needs data on a pixel grid, and {run.data.info.name} has none "
            "(8-bit images do); pass --no-sound for float noise"
        )
    noise = Noise(run.norm, grid if sound else None)
    if noise.grid is not None:
        thetas = sound_thetas(thetas, run.norm, noise.grid)
    model = run.model.module
    notes: list[str] = []
    denoiser_arguments: dict[str, Any] | None = None
    compose: Callable[[nn.Module], nn.Module] = _bare
    if denoiser is not None:
        if not denoiser.per_pixel and method is CertifyMethod.ancer:
            raise AncerError(
                f"{spec.denoiser} is a diffusion model: it takes one noise level per input "
                "(a fixed --sigma or isotropic thetas), not ANCER thetas"
            )
        fixed = method is CertifyMethod.fixed and not optimizing
        chosen = [] if optimizing else indices[:1] if fixed else indices
        denoiser_arguments = denoiser_record(denoiser, (thetas(i) for i in chosen), run.norm)
        first = thetas(indices[0]) if indices else None
        compose = partial(
            DenoisedClassifier, denoiser=denoiser.module, norm=run.norm, theta=first, fixed=fixed
        )
        model = compose(model)
        notes = _denoiser_notes(denoiser, [thetas(i) for i in chosen or indices[:1]], run.norm)
        if first is not None:  # the composed model must still give one logit per class
            check_compatible(model, run.data, session.device, f"{model_path} + {spec.denoiser}")
    resolved = Resolved(
        method=method,
        model_sha256=run.model.sha256,
        dataset=run.data.info.name,
        split=run.data.split,
        norm=run.norm,
        sound=sound,
        denoiser=denoiser_arguments,
    )
    arguments = inputs_arguments(
        replace(spec, model=model_path, classes=classes, method=method), resolved
    )
    return SmoothedInputs(
        model=prepare_model(model, spec.precision, spec.channels_last),
        data=run.data,
        method=method,
        thetas=thetas,
        description=description,
        indices=indices,
        logits=run.logits,
        arguments=arguments,
        noise=noise,
        model_sha256=run.model.sha256,
        denoiser_sha256=denoiser.sha256 if denoiser is not None else None,
        compose=compose,
        notes=tuple(notes),
    )


def rows_of(inputs: SmoothedInputs, rows: Sequence[int], spec: InputsSpec, results: Path) -> SmoothedInputs:
    """``inputs`` (resolved with no ``--skip``/``--max``) restricted to the sorted dataset
    indices ``rows`` of a results file ``results``, then to ``spec``'s ``--skip``/``--max``
    among them (recorded in its arguments); refuses a row its data (and thetas) do not hold."""
    available = set(inputs.indices)
    missing = [idx for idx in rows if idx not in available]
    if missing:
        raise AncerError(
            f"{results} has a row for input {missing[0]}, which its data (and thetas) do not "
            f"hold ({inputs.data.info.name} {inputs.data.split}); is it the run's file?"
        )
    selected = set(select_indices(max(rows, default=-1) + 1, spec.skip, spec.max_index))
    indices = [idx for idx in rows if idx in selected]
    arguments = {**inputs.arguments, "skip": spec.skip, "max": spec.max_index}
    return replace(inputs, indices=indices, arguments=arguments)


def module_digest(model: nn.Module) -> str:
    """SHA-256 of a module's state (every tensor of its ``state_dict``, by name): the hash of
    an in-memory model, where there is no file to hash."""
    digests = {name: tensor_digest(value) for name, value in model.state_dict().items()}
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(digests.items())).encode()).hexdigest()


def in_memory_inputs(
    model: nn.Module,
    data: LoadedData,
    thetas: ThetaSource | float,
    *,
    norm: Norm = Norm.l2,
    indices: Sequence[int] | None = None,
    sound: bool | None = None,
    device: torch.device | None = None,
) -> SmoothedInputs:
    """What a run smooths, from a model and data in memory (a library caller's own, or a test's):
    ``thetas`` a fixed theta (the natural parameter: l2 standard deviation, l1 half-width) or a
    map from dataset index to theta; ``sound`` as in :class:`~ancer_cli.run.spec.InputsSpec`.
    The model is hashed by its state (:func:`module_digest`), checked on one input and checked to
    be a function of one input (:func:`~ancer_cli.models.checks.check_per_input`)."""
    device = device or torch.device("cpu")
    chosen = list(range(data.size)) if indices is None else list(indices)
    if callable(thetas):
        first = thetas(chosen[0]) if chosen else 0.0
        per_pixel = isinstance(first, torch.Tensor) and first.ndim > 0
        method = CertifyMethod.ancer if per_pixel else CertifyMethod.isotropic
        source: ThetaSource = thetas
        description = f"{method.value} thetas (in memory)"
    else:
        method, source = CertifyMethod.fixed, fixed_theta(float(thetas))
        description = f"noise theta={float(thetas)}"
    grid = data.grid_levels
    sound = grid is not None if sound is None else sound
    if sound and grid is None:
        raise AncerError(f"--sound needs data on a pixel grid, and {data.info.name} has none")
    noise = Noise(norm, grid if sound else None)
    if noise.grid is not None:
        source = sound_thetas(source, norm, noise.grid)
    digest = module_digest(model)
    logits = check_compatible(model, data, device, "in memory")
    check_per_input(model, check_inputs(data).to(device), "in memory")
    spec = InputsSpec(method=method, split=data.split, norm=norm, sound=sound)
    resolved = Resolved(method, digest, data.info.name, data.split, Norm(norm), sound)
    return SmoothedInputs(
        model=model,
        data=data,
        method=method,
        thetas=source,
        description=description,
        indices=chosen,
        logits=logits,
        arguments=inputs_arguments(spec, resolved),
        noise=noise,
        model_sha256=digest,
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
    ``xs`` ``(n, C, H, W)`` on the model's device, their ``thetas`` and noise ``laws``."""

    indices: list[int]
    labels: list[int]
    xs: torch.Tensor
    thetas: list[Theta]
    laws: list[NoiseLaw]


def input_groups(
    inputs: SmoothedInputs,
    indices: Iterable[int],
    size: int,
    device: torch.device,
    committed: Mapping[int, str] | None,
) -> Iterator[InputGroup]:
    """The inputs of ``indices`` in order, in groups of at most ``size``, with their thetas and
    noise laws.

    An input that cannot be used ends its group early: the inputs before it are yielded (so their
    rows are written), then its error is raised -- a theta that cannot be loaded, an input off the
    data's grid with sound noise (which certifies grid inputs only), or an input whose digest is
    not the one ``committed`` records (it changed since the run committed it). Every run that
    draws after committing passes its commitment's digests, so an input changed once the seed is
    public is refused; ``None`` only where no seed was published before the inputs are read."""
    order = list(indices)
    for start in range(0, len(order), size):
        chosen = order[start : start + size]
        group_thetas, failure = _load_thetas(inputs.thetas, chosen)
        chosen = chosen[: len(group_thetas)]  # what comes before a bad theta goes first
        items = []
        for idx in chosen:
            item = inputs.data.dataset[idx]
            problem = _unusable(item[0], idx, inputs.grid_levels, committed)
            if problem is not None:
                failure = problem
                break
            items.append(item)
        chosen, group_thetas = chosen[: len(items)], group_thetas[: len(items)]
        if chosen:
            xs = torch.stack([x for x, _ in items]).to(device=device, dtype=torch.float32)
            laws = [inputs.noise.law(theta, xs.shape[1:]) for theta in group_thetas]
            yield InputGroup(chosen, [int(label) for _, label in items], xs, group_thetas, laws)
        if failure is not None:
            raise failure


def _unusable(
    x: torch.Tensor, idx: int, levels: int | None, committed: Mapping[int, str] | None
) -> AncerError | None:
    """Why input ``idx`` cannot be certified (``None`` if it can)."""
    if committed is not None and tensor_digest(x) != committed.get(idx):
        return AncerError(
            f"input {idx} changed since this run committed it (its SHA-256 differs from the "
            "record); certify it again with --force"
        )
    if levels is not None:
        try:
            to_grid(x, levels)
        except ValueError as error:
            return AncerError(
                f"input {idx}: {error}; --sound certifies on-grid inputs only "
                "(--no-sound for float noise)"
            )
    return None


def _load_thetas(thetas: ThetaSource, indices: list[int]) -> tuple[list[Theta], AncerError | None]:
    """Thetas of ``indices`` up to the first that cannot be loaded, and that error."""
    loaded: list[Theta] = []
    for idx in indices:
        try:
            loaded.append(thetas(idx))
        except AncerError as error:
            return loaded, error
    return loaded, None
