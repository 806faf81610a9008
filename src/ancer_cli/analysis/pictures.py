"""The inputs ``ancer show`` draws: chosen inputs of a theta source with their images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ancer_cli.data import load_dataset
from ancer_cli.errors import ThetaError
from ancer_cli.settings import DEFAULT_PICTURES
from ancer_cli.theta_sources import ThetaSet, open_thetas, recorded_run
from ancer_cli.thetas import MANIFEST_NAME


@dataclass(frozen=True)
class InputTheta:
    """One input and its theta, on the CPU: ``image`` ``(C, H, W)`` in [0, 1]; ``theta`` of the
    same shape (anisotropic) or 0-d (isotropic); ``label`` the dataset's class."""

    index: int
    image: torch.Tensor
    theta: torch.Tensor
    label: int | None = None


@dataclass(frozen=True)
class PicturedThetas:
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
) -> PicturedThetas:
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
    size = data.size
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
    return PicturedThetas(inputs, thetas, recorded.norm)
