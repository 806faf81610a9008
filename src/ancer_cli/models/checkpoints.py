"""Checkpoint formats: ancer's ``ancer-model/1`` files, Cohen et al.'s checkpoints and plain state
dicts -- writing, reading, validating, and fitting a state dict into a module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import atomic_writer
from ancer_cli.data import DatasetInfo
from ancer_cli.errors import ModelError, first_line
from ancer_cli.models.architectures import Normalize
from ancer_cli.models.files import (
    ACCEPTED_FILES,
    KIND_NAMES,
    check_model_file,
    detect_file_kind,
    load_weights_only,
)

CHECKPOINT_FORMAT = "ancer-model/1"


CHECKPOINT_KEYS: tuple[str, ...] = (
    "format",
    "arch",
    "num_classes",
    "dataset",
    "input_shape",
    "norm",
    "sigma",
    "epoch",
    "state_dict",
    "optimizer_state",
)


NORMS: tuple[str, ...] = ("l2", "l1")


# Cohen et al.'s (locuslab/smoothing) ``arch`` names -> (our architecture, training dataset,
# default number of classes). Their files hold ``Sequential(NormalizeLayer, net)`` (ImageNet: net
# wrapped in DataParallel, keys ``1.module.*``); NormalizeLayer keeps no state.
COHEN_ARCHITECTURES: dict[str, tuple[str, str, int]] = {
    "cifar_resnet20": ("resnet20", "cifar10", 10),
    "cifar_resnet110": ("resnet110", "cifar10", 10),
    "resnet50": ("resnet50", "imagenet", 1000),
}


COHEN_INPUT_SHAPES = {"cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    arch: str,
    info: DatasetInfo,
    norm: str,
    sigma: float,
    epoch: int,
    optimizer_state: dict[str, Any] | None,
) -> None:
    """Write an ``ancer-model/1`` checkpoint atomically (loadable with ``weights_only=True``).

    ``model`` is what :func:`build_model` returned; its whole state dict is stored (keys ``1.*``
    for built-in architectures). ``sigma`` is the training noise standard deviation. Tensors are
    stored on the CPU, so a checkpoint trained on a GPU loads on a machine without one (resuming
    moves the optimizer state back to the parameters' device).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "num_classes": int(info.num_classes),
        "dataset": info.name,
        "input_shape": [int(size) for size in info.input_shape],
        "norm": norm,
        "sigma": float(sigma),
        "epoch": int(epoch),
        "state_dict": _on_cpu(model.state_dict()),
        "optimizer_state": _on_cpu(optimizer_state),
    }
    with atomic_writer(Path(path), mode="wb") as handle:
        torch.save(payload, handle)


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to the CPU; a state
    dict keeps its type and the ``_metadata`` (module versions) ``load_state_dict`` reads."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        moved = {key: _on_cpu(item) for key, item in value.items()}
        if isinstance(value, OrderedDict):
            moved = OrderedDict(moved)
            if hasattr(value, "_metadata"):
                moved._metadata = value._metadata  # type: ignore[attr-defined]
        return moved
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and validate an ``ancer-model/1`` checkpoint onto the CPU (``weights_only=True``)."""
    path = Path(path)
    check_model_file(path)
    kind = detect_file_kind(path)
    if kind in ("torchscript", "export"):
        raise ModelError(
            f"{path} is a {KIND_NAMES[kind]}, not an ancer checkpoint; give a file written by "
            "ancer train"
        )
    loaded = load_weights_only(path)
    if not is_ancer_checkpoint(loaded):
        raise ModelError(
            f"{path} is not an ancer checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}); give a file written by ancer train"
        )
    validate_checkpoint(loaded, path)
    return loaded


def is_ancer_checkpoint(loaded: object) -> bool:
    return isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT


def validate_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ModelError(
            f"checkpoint {path} lacks key(s) {', '.join(missing)}; expected "
            f"{', '.join(CHECKPOINT_KEYS)}; re-create it with ancer train"
        )
    problems: list[str] = []
    if not isinstance(checkpoint["arch"], str) or not checkpoint["arch"]:
        problems.append(f"arch must be a non-empty string, got {checkpoint['arch']!r}")
    num_classes = checkpoint["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        problems.append(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(checkpoint["dataset"], str):
        problems.append(f"dataset must be a string, got {checkpoint['dataset']!r}")
    shape = checkpoint["input_shape"]
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(size, int) and size > 0 for size in shape)
    ):
        problems.append(f"input_shape must be [C, H, W] of positive integers, got {shape!r}")
    if checkpoint["norm"] not in NORMS:
        problems.append(f"norm must be one of {', '.join(NORMS)}, got {checkpoint['norm']!r}")
    sigma = checkpoint["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        problems.append(f"sigma must be a non-negative number, got {sigma!r}")
    if isinstance(checkpoint["epoch"], bool) or not isinstance(checkpoint["epoch"], int):
        problems.append(f"epoch must be an integer, got {checkpoint['epoch']!r}")
    if not is_state_dict(checkpoint["state_dict"]):
        problems.append("state_dict must map parameter names to tensors")
    optimizer_state = checkpoint["optimizer_state"]
    if optimizer_state is not None and not isinstance(optimizer_state, dict):
        problems.append(
            f"optimizer_state must be a dict or None, got {type(optimizer_state).__name__}"
        )
    if problems:
        raise ModelError(
            f"checkpoint {path} is malformed: {'; '.join(problems)}; re-create it with ancer train"
        )


def is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()
    )


def is_cohen_checkpoint(loaded: object) -> bool:
    return (
        isinstance(loaded, Mapping)
        and loaded.get("arch") in COHEN_ARCHITECTURES
        and is_state_dict(loaded.get("state_dict"))
    )


def plain_state_dict(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    if is_state_dict(loaded):
        return loaded  # type: ignore[return-value]
    if isinstance(loaded, Mapping) and is_state_dict(loaded.get("state_dict")):
        return loaded["state_dict"]
    found = type(loaded).__name__
    if isinstance(loaded, Mapping):
        keys = ", ".join(str(key) for key in list(loaded)[:5])
        found = f"a dict with keys {keys}"
    raise ModelError(f"{path} holds {found}, not a state dict (names -> tensors); {ACCEPTED_FILES}")


def _state_candidates(
    state: Mapping[str, torch.Tensor],
) -> Iterator[dict[str, torch.Tensor]]:
    """The state dict as saved, then with DataParallel's ``module.`` prefix removed."""
    yield dict(state)
    for prefix, replacement in (("module.", ""), ("1.module.", "1.")):
        if state and all(key.startswith(prefix) for key in state):
            yield {replacement + key[len(prefix) :]: value for key, value in state.items()}


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load ``state`` strictly into ``module`` (or into its ``net`` when the keys lack ``1.``)."""
    targets = [module]
    if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], Normalize):
        targets.append(module[1])  # a state dict of the bare network, saved without the wrapper
    best: tuple[nn.Module, dict[str, torch.Tensor]] | None = None
    for target in targets:
        expected = target.state_dict()
        for candidate in _state_candidates(state):
            # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's counters; they are unused in
            # eval mode, so fill them rather than reject an otherwise exact match.
            for key, value in expected.items():
                if key.endswith("num_batches_tracked") and key not in candidate:
                    candidate[key] = torch.zeros_like(value)
            if set(candidate) == set(expected):
                best = (target, candidate)
                break
        if best is not None:
            break
    target, candidate = best if best is not None else (module, dict(state))
    problem = _state_mismatch(target.state_dict(), candidate)
    if problem is None:
        try:
            target.load_state_dict(candidate, strict=True)
            return
        except RuntimeError as error:
            problem = first_line(error)
    raise ModelError(
        f"state dict in {path} does not fit arch {arch}: {problem}; check --arch and --dataset "
        "(or the checkpoint)"
    )


def _state_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> str | None:
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    parts: list[str] = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    for key, tensor in expected.items():
        if key in given and tuple(given[key].shape) != tuple(tensor.shape):
            parts.append(
                f"{key} has shape {tuple(given[key].shape)} in the file but "
                f"{tuple(tensor.shape)} in the model"
            )
            break
    return "; ".join(parts) if parts else None
