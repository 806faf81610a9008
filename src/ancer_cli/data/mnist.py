"""MNIST from its raw idx-ubyte files (``<data-root>/MNIST/raw/``), optionally downloaded first."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ancer_cli.data.arrays import InMemoryImages, download_error, stdout_to_stderr
from ancer_cli.data.base import EIGHT_BIT_LEVELS, DatasetInfo, LoadedData, info_for
from ancer_cli.errors import DataError

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def mnist_info() -> DatasetInfo:
    """The fixed shape and classes of MNIST."""
    return info_for("mnist", (1, 28, 28), 10)


def load_mnist(root: Path, split: str, download: bool) -> LoadedData:
    """Split ``split`` (canonical) of MNIST under ``root``; ``download`` fetches it first."""
    if download:
        from torchvision.datasets import MNIST

        try:
            with stdout_to_stderr():
                MNIST(root=str(root), train=split == "train", download=True)
        except Exception as error:  # noqa: BLE001 - any download failure becomes one line
            raise download_error("MNIST", root, error) from error
    raw = root / "MNIST" / "raw"
    image_name, label_name = _MNIST_FILES[split]
    images = _read_idx(raw / image_name, _IDX_IMAGES_MAGIC, ndim=3)
    labels = _read_idx(raw / label_name, _IDX_LABELS_MAGIC, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"MNIST {split} files in {raw} disagree: {images.shape[0]} images but "
            f"{labels.shape[0]} labels; re-download them with --download"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise DataError(
            f"MNIST labels in {raw / label_name} must be 0..9, got {int(labels.max())}; "
            "re-download them with --download"
        )
    dataset = InMemoryImages(images.unsqueeze(1), labels, float(EIGHT_BIT_LEVELS))
    return LoadedData(dataset=dataset, info=mnist_info(), split=split, grid_levels=EIGHT_BIT_LEVELS)


def _read_idx(path: Path, magic: int, ndim: int) -> torch.Tensor:
    """Read an uint8 idx-ubyte file (big-endian header, Yann LeCun's MNIST format).

    Accepts the file or its ``.gz`` as downloaded. Returns a uint8 tensor of the header's shape.
    """
    layout = (
        f"expected {path} (the raw idx-ubyte files of MNIST under <data-root>/MNIST/raw/); "
        "pass --download to fetch them"
    )
    try:
        if path.is_file():
            payload = path.read_bytes()
        elif path.with_name(path.name + ".gz").is_file():
            payload = gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
        else:
            raise DataError(f"MNIST file missing: {layout}")
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read MNIST file {path} ({error}); {layout}") from error
    header_size = 4 * (1 + ndim)
    if len(payload) < header_size:
        raise DataError(f"MNIST file {path} is truncated ({len(payload)} bytes); {layout}")
    found = int.from_bytes(payload[:4], "big")
    if found != magic:
        raise DataError(
            f"MNIST file {path} has magic number {found}, expected {magic}; the file is corrupt "
            "or not an idx-ubyte file; pass --download to fetch it again"
        )
    shape = [int.from_bytes(payload[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    expected = int(np.prod(shape)) if shape else 0
    if len(payload) - header_size != expected:
        raise DataError(
            f"MNIST file {path} holds {len(payload) - header_size} bytes of data, expected "
            f"{expected} for shape {tuple(shape)}; the file is truncated or corrupt; pass "
            "--download to fetch it again"
        )
    array = np.frombuffer(payload, dtype=np.uint8, offset=header_size).reshape(shape)
    return torch.from_numpy(array.copy())
