"""The model and data a run works on: loaded, matched to each other, checked once up front, and
the dataset indices it covers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.core.noise import Norm
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.errors import AncerError, ModelError, first_line
from ancer_cli.models import LoadedModel, load_model


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
