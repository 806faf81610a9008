"""CIFAR-10 from its python pickles (``<data-root>/cifar-10-batches-py/``), read by an unpickler
that rebuilds only numpy arrays and builtin containers; optionally downloaded first."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ancer_cli.data.arrays import InMemoryImages, download_error, stdout_to_stderr
from ancer_cli.data.base import EIGHT_BIT_LEVELS, DatasetInfo, LoadedData, info_for
from ancer_cli.errors import DataError, first_line

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
_CIFAR10_CLASSES = 10


def cifar10_info() -> DatasetInfo:
    """The fixed shape and classes of CIFAR-10."""
    return info_for("cifar10", (3, 32, 32), _CIFAR10_CLASSES)


def load_cifar10(root: Path, split: str, download: bool) -> LoadedData:
    """Split ``split`` (canonical) of CIFAR-10 under ``root``; ``download`` fetches it first."""
    if download:
        from torchvision.datasets import CIFAR10

        try:
            with stdout_to_stderr():
                CIFAR10(root=str(root), train=split == "train", download=True)
        except Exception as error:  # noqa: BLE001 - any download failure becomes one line
            raise download_error("CIFAR-10", root, error) from error
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_TRAIN_BATCHES if split == "train" else CIFAR10_TEST_BATCHES
    meta = folder / "batches.meta"
    if meta.is_file():
        _check_cifar10_meta(meta)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch_name in names:
        data, batch_labels = _read_cifar10_batch(folder / batch_name)
        images.append(data)
        labels.append(batch_labels)
    stacked = np.concatenate(images).reshape(-1, 3, 32, 32)  # rows are channel-major 3x32x32
    dataset = InMemoryImages(
        torch.from_numpy(stacked),
        torch.from_numpy(np.concatenate(labels)),
        float(EIGHT_BIT_LEVELS),
    )
    return LoadedData(
        dataset=dataset, info=cifar10_info(), split=split, grid_levels=EIGHT_BIT_LEVELS
    )


def _cifar10_missing(path: Path) -> str:
    return (
        f"expected {path} (the python version of CIFAR-10, "
        f"<data-root>/{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch,batches.meta}}); "
        "pass --download to fetch it"
    )


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: ``data`` uint8 ``(N, 3072)`` and ``labels`` int64 ``(N,)``."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch missing: {_cifar10_missing(path)}")
    batch = _restricted_unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(
            f"CIFAR-10 batch {path} holds a {type(batch).__name__}, expected a dict with data "
            f"and labels; {_cifar10_missing(path)}"
        )
    entries = {_text_key(key): value for key, value in batch.items()}
    data = entries.get("data")
    raw_labels = entries.get("labels")
    if not isinstance(data, np.ndarray) or raw_labels is None:
        raise DataError(
            f"CIFAR-10 batch {path} lacks a numpy 'data' array or 'labels' list "
            f"(keys: {', '.join(sorted(entries))}); {_cifar10_missing(path)}"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"CIFAR-10 batch {path}: data must be uint8 of shape (N, 3072), got {data.dtype} "
            f"{data.shape}; {_cifar10_missing(path)}"
        )
    try:
        labels = np.asarray(raw_labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"CIFAR-10 batch {path}: labels must be integers ({error}); {_cifar10_missing(path)}"
        ) from error
    if labels.shape[0] != data.shape[0]:
        raise DataError(
            f"CIFAR-10 batch {path} holds {data.shape[0]} images but {labels.shape[0]} labels; "
            f"{_cifar10_missing(path)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _CIFAR10_CLASSES):
        raise DataError(
            f"CIFAR-10 batch {path}: labels must be 0..9, got {labels.min()}..{labels.max()}; "
            f"{_cifar10_missing(path)}"
        )
    return data, labels


def _check_cifar10_meta(path: Path) -> None:
    meta = _restricted_unpickle(path)
    names = {_text_key(key): value for key, value in meta.items()} if isinstance(meta, dict) else {}
    label_names = names.get("label_names")
    if not isinstance(label_names, list) or len(label_names) != _CIFAR10_CLASSES:
        found = len(label_names) if isinstance(label_names, list) else "no"
        raise DataError(
            f"CIFAR-10 metadata {path} must list 10 label_names, found {found}; is this another "
            f"dataset? {_cifar10_missing(path)}"
        )


def _text_key(key: object) -> str:
    # The original batches are Python 2 pickles: keys arrive as bytes (b"data") or str.
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


# Globals a CIFAR-10 pickle legitimately needs: numpy's array reconstruction, the codec Python 3
# uses for bytes under protocol 2, and inert builtin containers. Everything else could run code.
_SAFE_BUILTINS = frozenset(
    {"list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float"}
)
_SAFE_NUMPY = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and builtin containers; refuses other globals."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        # latin1 is numpy's documented way to read arrays pickled by Python 2.
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(importlib.import_module("builtins"), name)
        target = _SAFE_NUMPY.get((module, name))
        if target is None:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.path}: a CIFAR-10 batch holds "
                "only numpy arrays and lists, and loading this global could run code; replace "
                "the file with the original CIFAR-10 python batches (--download)"
            )
        target_module, target_name = target
        try:
            resolved = importlib.import_module(target_module)
        except ImportError:  # numpy < 2 has no numpy._core
            resolved = importlib.import_module(target_module.replace("numpy._core", "numpy.core"))
        return getattr(resolved, target_name)

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"refusing persistent id in {self.path}: CIFAR-10 batches have none; the file is not a "
            "CIFAR-10 batch"
        )


def _restricted_unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, path).load()
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - a malformed pickle can raise almost anything
        reason = first_line(error)
        raise DataError(
            f"cannot read {path} as a CIFAR-10 pickle ({reason}); {_cifar10_missing(path)}"
        ) from error
