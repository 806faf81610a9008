"""Loading any supported model file for inference: ancer and Cohen et al. checkpoints, plain state
dicts with ``--arch``, TorchScript archives and ``torch.export`` programs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import sha256_file
from ancer_cli.data import DATASETS, DatasetInfo, normalization
from ancer_cli.errors import ModelError, first_line
from ancer_cli.models.architectures import ARCHITECTURES, build_for, build_model, is_factory_arch
from ancer_cli.models.checkpoints import (
    COHEN_ARCHITECTURES,
    COHEN_INPUT_SHAPES,
    is_ancer_checkpoint,
    is_cohen_checkpoint,
    load_state,
    plain_state_dict,
    validate_checkpoint,
)
from ancer_cli.models.denoisers.files import DENOISER_FORMAT
from ancer_cli.models.factory import build_factory
from ancer_cli.models.files import (
    KIND_NAMES,
    check_model_file,
    detect_file_kind,
    load_weights_only,
    torch_reason,
)


@dataclass
class LoadedModel:
    """A classifier ready for inference: ``module`` maps ``(B, C, H, W)`` in [0, 1] to ``(B, K)``.

    ``module`` is in eval mode on the requested device with every parameter frozen. ``kind`` is
    one of :data:`MODEL_KINDS`; the metadata fields are ``None`` where the file does not say.
    """

    module: nn.Module
    kind: str
    path: Path
    sha256: str
    arch: str | None
    dataset: str | None
    num_classes: int | None
    input_shape: tuple[int, int, int] | None
    norm: str | None
    sigma: float | None
    checkpoint: dict[str, Any] | None


def load_model(
    path: Path,
    device: torch.device,
    arch: str | None = None,
    info: DatasetInfo | None = None,
) -> LoadedModel:
    """Load any supported model file for inference on ``device``.

    - an ancer checkpoint: rebuilt from its own ``arch`` (``arch``, if given, must agree); if
      ``info`` is given its classes and input shape must match the checkpoint's;
    - a checkpoint of Cohen et al. (``arch`` in :data:`COHEN_ARCHITECTURES` and a
      ``state_dict``): rebuilt as our equivalent architecture with the normalization of their
      training dataset (CIFAR-10 or ImageNet), l2 norm, unknown sigma;
    - a TorchScript archive or a ``torch.export`` program: used as a black box (no ``arch``);
    - a plain state dict (or a dict holding one under ``"state_dict"``): needs ``arch``, and
      ``info`` for built-in architectures; kind ``"checkpoint"`` (with ``checkpoint=None``) for a
      built-in ``arch``, ``"factory"`` for ``package.module:factory``.

    The kind is decided from the zip member names, never by trying loaders in turn. Every
    problem (missing, corrupt or code-running file, unknown arch, state dict that does not fit)
    raises :class:`~ancer_cli.errors.ModelError` with one line naming ``path``.
    """
    path = Path(path)
    check_model_file(path)
    digest = sha256_file(path)
    file_kind = detect_file_kind(path)
    if file_kind in ("torchscript", "export"):
        if arch is not None:
            raise ModelError(
                f"{path} is a {KIND_NAMES[file_kind]}, which carries its own architecture; "
                f"drop --arch {arch}"
            )
        if file_kind == "torchscript":
            module, input_shape = _load_torchscript(path, device), None
        else:
            module, input_shape = _load_export(path, device)
        return LoadedModel(
            module=_freeze(module),
            kind=file_kind,
            path=path,
            sha256=digest,
            arch=None,
            dataset=None,
            num_classes=None,
            input_shape=input_shape,
            norm=None,
            sigma=None,
            checkpoint=None,
        )

    loaded = load_weights_only(path)
    if isinstance(loaded, dict) and loaded.get("format") == DENOISER_FORMAT:
        raise ModelError(
            f"{path} is a denoiser (written by ancer train --denoiser), not a classifier: pass it "
            "as --denoiser, with the classifier it serves as --model"
        )
    if is_ancer_checkpoint(loaded):
        return _from_checkpoint(loaded, path, digest, device, arch, info)
    if is_cohen_checkpoint(loaded):
        return _from_cohen_checkpoint(loaded, path, digest, device, arch, info)
    if arch is None:
        raise ModelError(
            f"{path} holds a plain state dict without an architecture; pass --arch (one of "
            f"{', '.join(ARCHITECTURES)}, or package.module:factory)"
        )
    state = plain_state_dict(loaded, path)
    if is_factory_arch(arch):
        module = build_factory(arch, info.num_classes if info is not None else None)
    else:
        if info is None:
            raise ModelError(
                f"{path} holds a plain state dict for --arch {arch}; pass --dataset so the "
                "model's input shape, classes and normalization are known"
            )
        module = build_model(arch, info)
    load_state(module, state, path, arch)
    return LoadedModel(
        module=_freeze(module.to(device)),
        kind="factory" if is_factory_arch(arch) else "checkpoint",
        path=path,
        sha256=digest,
        arch=arch,
        dataset=info.name if info is not None else None,
        num_classes=info.num_classes if info is not None else None,
        input_shape=info.input_shape if info is not None else None,
        norm=None,
        sigma=None,
        checkpoint=None,
    )


def _from_checkpoint(
    checkpoint: dict[str, Any],
    path: Path,
    digest: str,
    device: torch.device,
    arch: str | None,
    info: DatasetInfo | None,
) -> LoadedModel:
    validate_checkpoint(checkpoint, path)
    saved_arch: str = checkpoint["arch"]
    if arch is not None and arch != saved_arch:
        raise ModelError(
            f"checkpoint {path} holds arch {saved_arch}, but --arch {arch} was given; drop --arch"
        )
    num_classes: int = checkpoint["num_classes"]
    input_shape = (
        int(checkpoint["input_shape"][0]),
        int(checkpoint["input_shape"][1]),
        int(checkpoint["input_shape"][2]),
    )
    dataset: str = checkpoint["dataset"]
    if info is not None and (info.num_classes, info.input_shape) != (num_classes, input_shape):
        raise ModelError(
            f"checkpoint {path} was trained on {dataset} with {num_classes} classes and inputs "
            f"{input_shape}, but dataset {info.name} has {info.num_classes} classes and inputs "
            f"{info.input_shape}; use the matching dataset or model"
        )
    if is_factory_arch(saved_arch):
        module = build_factory(saved_arch, num_classes)
    else:
        # The normalization layer is not in the file: it is the training dataset's, by name.
        if dataset in DATASETS:
            mean, std = normalization(dataset)
        elif info is not None:
            mean, std = info.mean, info.std
        else:
            raise ModelError(
                f"checkpoint {path} names dataset {dataset!r}, which ancer does not know; "
                f"expected one of {', '.join(DATASETS)}"
            )
        module = build_for(saved_arch, dataset, input_shape, num_classes, mean, std)
    load_state(module, checkpoint["state_dict"], path, saved_arch)
    return LoadedModel(
        module=_freeze(module.to(device)),
        kind="checkpoint",
        path=path,
        sha256=digest,
        arch=saved_arch,
        dataset=dataset,
        num_classes=num_classes,
        input_shape=input_shape,
        norm=checkpoint["norm"],
        sigma=float(checkpoint["sigma"]),
        checkpoint=checkpoint,
    )


def _from_cohen_checkpoint(
    checkpoint: Mapping[str, Any],
    path: Path,
    digest: str,
    device: torch.device,
    arch: str | None,
    info: DatasetInfo | None,
) -> LoadedModel:
    """Our model for a checkpoint of Cohen et al. (locuslab/smoothing ``train.py``).

    ``cifar_resnet20``/``cifar_resnet110`` become ``resnet20``/``resnet110`` (the same parameter
    names; our adaptive average pool equals their 8x8 pool on 32x32 inputs) with CIFAR-10's
    normalization; ``resnet50`` is torchvision's ResNet-50 with ImageNet's. The number of
    classes is read from the ``fc`` layer. ``1.``, ``1.module.`` and ``module.`` key prefixes
    are handled by :func:`load_state`.
    """
    cohen_arch: str = checkpoint["arch"]
    ours, dataset, default_classes = COHEN_ARCHITECTURES[cohen_arch]
    if arch is not None and arch not in (ours, cohen_arch):
        raise ModelError(
            f"{path} is Cohen et al.'s {cohen_arch} checkpoint (our {ours}), but --arch {arch} "
            "was given; drop --arch"
        )
    state: Mapping[str, torch.Tensor] = checkpoint["state_dict"]
    fc = next(
        (tensor for key, tensor in state.items() if key.endswith("fc.weight") and tensor.ndim == 2),
        None,
    )
    num_classes = int(fc.shape[0]) if fc is not None else default_classes
    input_shape = info.input_shape if info is not None else COHEN_INPUT_SHAPES[dataset]
    if info is not None and (info.num_classes != num_classes or info.input_shape[0] != 3):
        raise ModelError(
            f"{path} is Cohen et al.'s {cohen_arch} for {dataset} with {num_classes} classes "
            f"and 3 colour channels, but dataset {info.name} has {info.num_classes} classes and "
            f"inputs {info.input_shape}; use the matching dataset or model"
        )
    mean, std = normalization(dataset)
    module = build_for(ours, dataset, input_shape, num_classes, mean, std)
    load_state(module, state, path, f"{ours} (Cohen et al.'s {cohen_arch})")
    return LoadedModel(
        module=_freeze(module.to(device)),
        kind="checkpoint",
        path=path,
        sha256=digest,
        arch=ours,
        dataset=dataset,
        num_classes=num_classes,
        input_shape=input_shape,
        norm="l2",
        sigma=None,
        checkpoint=None,
    )


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but remains a supported input format here.
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
            module = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # noqa: BLE001 - the TorchScript loader raises RuntimeError et al.
        raise ModelError(
            f"cannot load TorchScript archive {path} ({torch_reason(error)}); re-save it with "
            "torch.jit.save"
        ) from error
    return module


class ExportedModule(nn.Module):
    """Wraps ``torch.export.load(path).module()``: ``(B, C, H, W)`` -> ``(B, K)``.

    An exported graph has its train/eval behaviour baked in and refuses ``.eval()``; this wrapper
    makes ``train``/``eval`` flip only its own flag so callers can treat it like any module.
    """

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def _load_export(path: Path, device: torch.device) -> tuple[nn.Module, tuple[int, int, int] | None]:
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as error:  # noqa: BLE001 - deserialization raises many types
        raise ModelError(
            f"cannot load torch.export program {path} ({torch_reason(error)}); re-save it with "
            "torch.export.save"
        ) from error
    input_shape = _exported_input_shape(program, path)
    try:
        module = module.to(device)
    except Exception as error:  # noqa: BLE001
        raise ModelError(
            f"cannot move torch.export program {path} to {device} ({first_line(error)}); "
            "export it on that device"
        ) from error
    return ExportedModule(module), input_shape


def _exported_input_shape(program: Any, path: Path) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a single-image-batch exported program; its batch size must be dynamic."""
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        return None
    nodes = [node for node in program.graph.nodes if node.op == "placeholder"]
    value = next((n.meta.get("val") for n in nodes if n.name == user_inputs[0]), None)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 4:
        return None
    if isinstance(shape[0], int):
        raise ModelError(
            f"torch.export program {path} was exported with a fixed batch size of {shape[0]}; "
            "ancer feeds batches of any size: re-export with dynamic_shapes="
            "({0: torch.export.Dim('batch', min=1)},)"
        )
    if not all(isinstance(size, int) for size in shape[1:]):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])
