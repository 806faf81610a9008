"""The model and data a run works on: loaded, matched to each other, checked once up front."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ancer_cli.certify import check_compatible
from ancer_cli.core.noise import Norm
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.errors import AncerError
from ancer_cli.models import LoadedModel, load_model


@dataclass(frozen=True)
class RunInputs:
    model: LoadedModel
    data: LoadedData
    norm: Norm


def load_run_inputs(
    model_path: Path,
    device: torch.device,
    *,
    dataset: str | None,
    data_root: Path | None,
    split: str,
    norm: Norm | str | None,
    arch: str | None = None,
) -> RunInputs:
    """Load the model, then its dataset (``dataset`` or the one stored in the checkpoint), and
    check one forward pass. The norm defaults to the checkpoint's, else l2."""
    loaded = load_model(model_path, device, arch=arch)
    name = dataset or loaded.dataset
    if name is None:
        raise AncerError(f"model {model_path} does not record its dataset; pass --dataset")
    data = load_dataset(name, split, data_root)
    check_compatible(loaded.module, data, device, str(model_path))
    chosen = Norm(norm) if norm is not None else Norm(loaded.norm or Norm.l2.value)
    return RunInputs(loaded, data, chosen)
