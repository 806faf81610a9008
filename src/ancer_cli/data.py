"""Dataset registry: every dataset ancer knows, loaded as ``(x, label)`` items with ``x`` in [0, 1].

Each loader returns a :class:`LoadedData` whose dataset yields ``x``, a float32 tensor of shape
``(C, H, W)`` with values in ``[0, 1]``, and ``label``, a Python ``int``. Normalization is *not*
applied here: every model carries its own mean/std layer (see :mod:`ancer_cli.models`), so noise is
always added in pixel space.

Image folders (``imagenet``, ``folder``) label their images by a :class:`ClassMapping`: sub-folders
named by class index carry that index, sub-folders named in a class list (``--classes FILE``, line
k = class k) carry its line, other names are sorted and numbered 0, 1, ...; a folder of images
without sub-folders is unlabeled (label -1).

Missing or malformed data raises :class:`~ancer_cli.errors.DataError` with one line naming the
expected layout; no raw torchvision, pickle or PIL exception escapes for those cases.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import importlib
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ancer_cli.errors import DataError, first_line

DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagenet", "folder")
SPLITS: tuple[str, ...] = ("train", "test")

# ImageFolder-style datasets: labels from sub-folders (see ClassMapping); they also accept "val"
# as another name for the test split.
_IMAGE_FOLDER_DATASETS = frozenset({"imagenet", "folder"})

# Dataset-wide pixel mean/std of scikit-learn's digits after scaling to [0, 1] (all 1,797 images,
# population std), rounded to 4 decimals.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": (DIGITS_MEAN, DIGITS_STD),
    "mnist": (MNIST_MEAN, MNIST_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "folder": (IMAGENET_MEAN, IMAGENET_STD),
}

_DEFAULT_ARCH = {
    "digits": "cnn",
    "mnist": "cnn",
    "cifar10": "resnet18",
    "imagenet": "resnet50",
    "folder": "resnet18",
}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
_CIFAR10_CLASSES = 10

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

IMAGENET_RESIZE = 256
IMAGENET_CROP = 224


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``input_shape`` is ``(C, H, W)``; ``mean``/``std`` have one entry per channel and feed the
    model's normalization layer; ``default_arch`` is the architecture ``ancer train`` picks.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_arch: str


UNLABELED = -1
"""The label of an image in a folder without class sub-folders."""


class LabelRule(str, enum.Enum):
    """How the images of an image folder got their labels."""

    index = "index"  # sub-folders named by the model's class index: 0/, 7/, ...
    classes_file = "classes-file"  # sub-folders named in --classes FILE: line k is class k
    sorted = "sorted"  # any other names: sorted and numbered 0, 1, ...
    unlabeled = "unlabeled"  # images without sub-folders: label -1


@dataclass(frozen=True)
class ClassMapping:
    """The labels of an image folder's sub-folders, and the rule that gave them.

    ``labels`` maps each sub-folder name to its label (empty when unlabeled); ``classes_file``
    is the class list that named them (rule ``classes_file``) and ``listed`` the number of
    classes it lists.
    """

    rule: LabelRule
    labels: dict[str, int] = field(default_factory=dict)
    classes_file: Path | None = None
    listed: int = 0

    @property
    def num_classes(self) -> int:
        """Classes a model needs for these labels: the class list's length, else the largest
        label plus one (0 when unlabeled)."""
        if self.rule is LabelRule.classes_file:
            return self.listed
        return max(self.labels.values(), default=-1) + 1

    def record(self) -> dict[str, Any]:
        """The mapping as recorded in sidecars and manifests."""
        return {
            "rule": self.rule.value,
            "classes_file": str(self.classes_file) if self.classes_file is not None else None,
            "labels": dict(sorted(self.labels.items(), key=lambda item: (item[1], item[0]))),
        }

    def describe(self, shown: int = 4) -> str:
        """One line for people: the rule and the first few ``name -> label`` pairs."""
        if self.rule is LabelRule.unlabeled:
            return "no class sub-folders: the images are unlabeled (label -1)"
        pairs = sorted(self.labels.items(), key=lambda item: (item[1], item[0]))
        listed = ", ".join(f"{name} -> {label}" for name, label in pairs[:shown])
        if len(pairs) > shown:
            listed += f", ... ({len(pairs)} classes)"
        how = {
            LabelRule.index: "sub-folders named by class index",
            LabelRule.classes_file: f"sub-folders named in --classes {self.classes_file}",
            LabelRule.sorted: "sorted sub-folder names",
        }[self.rule]
        return f"labels from {how}: {listed}"


@dataclass(frozen=True)
class LoadedData:
    """A loaded split. ``dataset[i]`` is ``(x, label)``: ``x`` float32 ``(C, H, W)`` in [0, 1].

    ``split`` is the canonical split name, ``"train"`` or ``"test"`` (``"val"`` becomes ``"test"``
    so theta files are named the same whichever alias the user typed). ``classes`` says how an
    image folder's images were labeled (``None`` for the built-in datasets).
    """

    dataset: Dataset[tuple[torch.Tensor, int]]
    info: DatasetInfo
    split: str
    classes: ClassMapping | None = None

    @property
    def labeled(self) -> bool:
        """Whether the images carry labels (an unlabeled folder's are all -1)."""
        return self.classes is None or self.classes.rule is not LabelRule.unlabeled


# ---------------------------------------------------------------------------------------------
# public API


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` the models of dataset ``name`` normalize with; no data needed."""
    _check_name(name)
    return _NORMALIZATION[name]


def dataset_info(
    name: str, data_root: Path | None = None, classes: Path | None = None
) -> DatasetInfo:
    """Describe dataset ``name`` without loading its images.

    ``digits``, ``mnist`` and ``cifar10`` have fixed shapes and need no ``data_root``. ``imagenet``
    counts its classes (under ``train/``, else ``val/``) and ``folder`` also reads the size of its
    first image, so both need ``data_root``; ``classes`` is their class list (see
    :func:`class_mapping`).
    """
    _check_name(name)
    _check_classes_option(name, classes)
    if name == "digits":
        return _info(name, (1, 8, 8), 10)
    if name == "mnist":
        return _info(name, (1, 28, 28), 10)
    if name == "cifar10":
        return _info(name, (3, 32, 32), _CIFAR10_CLASSES)
    root = _require_root(name, data_root)
    if name == "imagenet":
        for split in ("train", "test"):
            directory = _imagenet_split_dir(root, split)
            if directory.is_dir():
                mapping = class_mapping(directory, name, classes)
                return _info(name, (3, IMAGENET_CROP, IMAGENET_CROP), mapping.num_classes)
        raise DataError(
            f"ImageNet not found: expected {root}/train or {root}/val with one sub-folder of "
            "images per class; pass the folder that holds them as --data-root"
        )
    directory = _folder_split_dir(root, _first_folder_split(root))
    mapping = class_mapping(directory, name, classes)
    first = _first_image(directory, mapping)
    return _info(name, (3, *_image_hw(first)), mapping.num_classes)


def load_dataset(
    name: str,
    split: str = "test",
    data_root: Path | None = None,
    download: bool = False,
    classes: Path | None = None,
) -> LoadedData:
    """Load split ``split`` of dataset ``name``.

    ``digits`` is embedded (scikit-learn); the others read ``data_root``. ``download`` fetches
    MNIST or CIFAR-10 with torchvision first; it is ignored by the other datasets. ``classes``
    is the class list of an image folder (``imagenet``, ``folder``), see :func:`class_mapping`.
    """
    _check_name(name)
    _check_classes_option(name, classes)
    canonical = _canonical_split(name, split)
    if name == "digits":
        return _load_digits(canonical)
    root = _require_root(name, data_root)
    if name == "mnist":
        return _load_mnist(root, canonical, download)
    if name == "cifar10":
        return _load_cifar10(root, canonical, download)
    if name == "imagenet":
        return _load_imagenet(root, canonical, classes)
    return _load_folder(root, canonical, split, classes)


def check_same_classes(train: LoadedData, test: LoadedData) -> None:
    """Refuse a train and a test split whose labels mean different classes.

    With the sorted-names rule a label is a position among the split's own sub-folders, so
    both splits must hold the same sub-folders; with class indices or a class list, labels
    mean the same in both and the test split may hold fewer classes. Images without labels
    cannot be trained on.
    """
    for data in (train, test):
        if data.classes is not None and data.classes.rule is LabelRule.unlabeled:
            raise DataError(
                f"the {data.info.name} {data.split} split has no class sub-folders, so its "
                "images have no labels; training needs <split>/<class>/<image> folders"
            )
    if train.classes is None or test.classes is None:
        return
    if LabelRule.sorted in (train.classes.rule, test.classes.rule):
        if set(train.classes.labels) != set(test.classes.labels):
            only = sorted(set(train.classes.labels) ^ set(test.classes.labels))
            raise DataError(
                f"the train and test splits of {train.info.name} hold different class "
                f"sub-folders ({', '.join(only[:3])} in one only); their names are not class "
                "indices, so labels are positions among the sorted names and would differ: "
                "name the sub-folders by class index or pass --classes FILE"
            )
    elif test.classes.num_classes > train.classes.num_classes:
        raise DataError(
            f"the test split of {train.info.name} needs {test.classes.num_classes} classes but "
            f"the train split only {train.classes.num_classes}; a model trained on it could not "
            "predict every test label"
        )


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def _canonical_split(name: str, split: str) -> str:
    valid = SPLITS + (("val",) if name in _IMAGE_FOLDER_DATASETS else ())
    if split not in valid:
        raise DataError(
            f"unknown split {split!r} for dataset {name}; valid splits: {', '.join(valid)}"
        )
    return "test" if split == "val" else split


def _check_classes_option(name: str, classes: Path | None) -> None:
    if classes is not None and name not in _IMAGE_FOLDER_DATASETS:
        raise DataError(
            f"--classes names the classes of an image folder (datasets imagenet and folder); "
            f"dataset {name} has fixed labels: drop --classes"
        )


def _require_root(name: str, data_root: Path | None) -> Path:
    if data_root is None:
        raise DataError(f"dataset {name} reads files from disk; pass --data-root DIR")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataError(f"--data-root {root} does not exist; pass the folder that holds {name}")
    if not root.is_dir():
        raise DataError(f"--data-root {root} is a file; pass the folder that holds {name}")
    return root


def _info(name: str, input_shape: tuple[int, int, int], num_classes: int) -> DatasetInfo:
    mean, std = _NORMALIZATION[name]
    return DatasetInfo(
        name=name,
        input_shape=input_shape,
        num_classes=num_classes,
        mean=mean,
        std=std,
        default_arch=_DEFAULT_ARCH[name],
    )


# ---------------------------------------------------------------------------------------------
# in-memory datasets (digits, MNIST, CIFAR-10)


class InMemoryImages(Dataset[tuple[torch.Tensor, int]]):
    """Images held as one integer tensor ``(N, C, H, W)``; item ``i`` is ``images[i] / scale``.

    Storing the raw integers (uint8) keeps memory at one byte per pixel; the division to float32
    happens per item so indexing stays cheap.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, scale: float) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        self.images = images
        self.targets = labels.long()
        self.scale = float(scale)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32) / self.scale
        return x, int(self.targets[index])


def _load_digits(split: str) -> LoadedData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # values 0..16, shape (1797, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    chosen = order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:]
    dataset = InMemoryImages(
        torch.from_numpy(images[chosen]).unsqueeze(1), torch.from_numpy(labels[chosen]), 16.0
    )
    return LoadedData(dataset=dataset, info=dataset_info("digits"), split=split)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """torchvision prints download messages; keep stdout for results (progress goes to stderr)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _download_error(name: str, root: Path, error: BaseException) -> DataError:
    first = first_line(error)
    return DataError(
        f"could not download {name} into {root}: {first}; check the network, or place the files "
        "there by hand"
    )


def _load_mnist(root: Path, split: str, download: bool) -> LoadedData:
    if download:
        from torchvision.datasets import MNIST

        try:
            with _stdout_to_stderr():
                MNIST(root=str(root), train=split == "train", download=True)
        except Exception as error:  # noqa: BLE001 - any download failure becomes one line
            raise _download_error("MNIST", root, error) from error
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
    dataset = InMemoryImages(images.unsqueeze(1), labels, 255.0)
    return LoadedData(dataset=dataset, info=dataset_info("mnist"), split=split)


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


def _load_cifar10(root: Path, split: str, download: bool) -> LoadedData:
    if download:
        from torchvision.datasets import CIFAR10

        try:
            with _stdout_to_stderr():
                CIFAR10(root=str(root), train=split == "train", download=True)
        except Exception as error:  # noqa: BLE001 - any download failure becomes one line
            raise _download_error("CIFAR-10", root, error) from error
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
        torch.from_numpy(stacked), torch.from_numpy(np.concatenate(labels)), 255.0
    )
    return LoadedData(dataset=dataset, info=dataset_info("cifar10"), split=split)


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


# ---------------------------------------------------------------------------------------------
# image folders (imagenet, folder)


_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
_ANY_SPLIT_FOLDER = ("train", "test", "val")


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """Images read lazily from ``samples`` (path, class index) and turned into ``(C, H, W)``.

    ``transform`` maps an RGB PIL image to a float32 tensor in [0, 1]. If ``size`` (width,
    height) is given, every image must have it: a different size raises a DataError naming the
    file instead of being silently resized (a certificate is about the exact input given).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Any], torch.Tensor],
        classes: Sequence[str],
        size: tuple[int, int] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.classes = list(classes)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = _open_rgb(Path(path))
        if self.size is not None and image.size != self.size:
            raise DataError(
                f"image {path} is {image.size[0]}x{image.size[1]} (WxH) but the folder's first "
                f"image is {self.size[0]}x{self.size[1]}; all images of a folder dataset must "
                "share one size: resize them first"
            )
        return self.transform(image), label


def _open_rgb(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(
            f"cannot read image {path} ({error}); remove or replace the file"
        ) from error


def _image_hw(path: Path) -> tuple[int, int]:
    width, height = _open_rgb(path).size
    return height, width


def _imagenet_split_dir(root: Path, split: str) -> Path:
    return root / ("train" if split == "train" else "val")


def _subfolders(directory: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    except OSError as error:
        raise DataError(f"cannot list {directory} ({error.strerror or error})") from error


def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _loose_images(directory: Path) -> list[Path]:
    """Image files directly in ``directory`` (not in sub-folders), sorted by name."""
    extensions = _image_extensions()
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_file() and entry.name.lower().endswith(extensions)
        )
    except OSError as error:
        raise DataError(f"cannot list {directory} ({error.strerror or error})") from error
    return [directory / name for name in names]


_CLASS_INDEX = re.compile(r"^\d+$")


def read_class_list(path: Path) -> list[str]:
    """The class names of ``path``, one per line: the first line names class 0, the next 1, ...

    Lines are stripped of surrounding white space; empty lines at the end are ignored, an empty
    line before them, a repeated name or an empty list is a :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(
            f"--classes {path} {what}; give a text file with one class name per line "
            "(line k names class k)"
        )
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"cannot read --classes {path} as UTF-8 text ({first_line(error)}); give a text "
            "file with one class name per line"
        ) from error
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"--classes {path} is empty; give one class name per line")
    seen: dict[str, int] = {}
    for number, name in enumerate(lines):
        if not name:
            raise DataError(
                f"--classes {path}, line {number + 1} is empty; the first line names class 0, "
                "the next class 1 and so on, so no line before the last may be empty"
            )
        if name in seen:
            raise DataError(
                f"--classes {path} names {name!r} twice (lines {seen[name] + 1} and "
                f"{number + 1}); each class needs one line"
            )
        seen[name] = number
    return lines


def class_mapping(directory: Path, name: str, classes: Path | None = None) -> ClassMapping:
    """How the images under ``directory`` are labeled.

    - ``classes`` given: every sub-folder must be named in that list (see
      :func:`read_class_list`), by a whole line or by its first word (so ImageNet's
      ``LOC_synset_mapping.txt``, ``n01440764 tench, Tinca tinca``, works as it is), and gets
      that line's class;
    - else sub-folders whose names are all integers (``0/``, ``7/``) carry those class indices;
    - else the sorted names map to 0, 1, ...;
    - no sub-folders but images: unlabeled (label -1).
    """
    found = _subfolders(directory)
    if not found:
        if classes is None and _loose_images(directory):
            return ClassMapping(LabelRule.unlabeled)
        if classes is not None and _loose_images(directory):
            raise DataError(
                f"{name} dataset folder {directory} has images but no class sub-folders, so "
                "--classes has nothing to name; drop --classes to use them unlabeled, or sort "
                f"them into {directory}/<class>/ folders"
            )
        raise DataError(
            f"{name} dataset folder {directory} has no class sub-folders and no images; "
            f"expected {directory}/<class>/<image files>, one sub-folder per class (or the "
            "images themselves, unlabeled)"
        )
    if classes is not None:
        listed = read_class_list(classes)
        exact = {line: k for k, line in enumerate(listed)}
        first_word: dict[str, int | None] = {}
        for k, line in enumerate(listed):
            word = line.split()[0]
            first_word[word] = None if word in first_word else k  # None: ambiguous
        labels = {}
        for folder in found:
            label = exact.get(folder, first_word.get(folder))
            if label is None:
                why = "names it on several lines" if folder in first_word else "does not name it"
                raise DataError(
                    f"sub-folder {folder!r} of {directory} is not a class of --classes "
                    f"{classes} (the list {why}; its {len(listed)} lines name classes 0 to "
                    f"{len(listed) - 1}); rename the folder or fix the list"
                )
            labels[folder] = label
        return ClassMapping(LabelRule.classes_file, labels, Path(classes), len(listed))
    if all(_CLASS_INDEX.match(folder) for folder in found):
        labels = {folder: int(folder) for folder in found}
        if len(set(labels.values())) < len(labels):
            twins = [f for f in found if list(labels.values()).count(int(f)) > 1]
            raise DataError(
                f"sub-folders {', '.join(twins[:2])} of {directory} name the same class index "
                f"{int(twins[0])}; keep one folder per class"
            )
        return ClassMapping(LabelRule.index, labels)
    return ClassMapping(LabelRule.sorted, {folder: k for k, folder in enumerate(found)})


def _first_image(directory: Path, mapping: ClassMapping) -> Path:
    """The first image of the dataset: the first class's first file in sorted walk order (the
    order ImageFolder lists), or the first loose image of an unlabeled folder."""
    if mapping.rule is LabelRule.unlabeled:
        return _loose_images(directory)[0]
    extensions = _image_extensions()
    for class_name in sorted(mapping.labels):
        for current, folders, files in sorted(os.walk(directory / class_name, followlinks=True)):
            folders.sort()
            for file_name in sorted(files):
                if file_name.lower().endswith(extensions):
                    return Path(current) / file_name
    raise _no_images(directory)


def _no_images(directory: Path) -> DataError:
    return DataError(
        f"no images found under {directory}; expected {directory}/<class>/<image> files with "
        f"extensions {', '.join(_image_extensions())}"
    )


def _scan(
    directory: Path, name: str, classes: Path | None
) -> tuple[list[tuple[str, int]], ClassMapping]:
    """(path, label) pairs in ImageFolder's order (sorted class names, then sorted walk; an
    unlabeled folder's images by name, label -1), and the class mapping."""
    from torchvision.datasets.folder import make_dataset

    mapping = class_mapping(directory, name, classes)
    if mapping.rule is LabelRule.unlabeled:
        return [(str(path), UNLABELED) for path in _loose_images(directory)], mapping
    try:
        samples = make_dataset(
            str(directory), mapping.labels, extensions=_image_extensions(), allow_empty=True
        )
    except OSError as error:
        raise DataError(f"cannot list images under {directory} ({error})") from error
    if not samples:
        raise _no_images(directory)
    return samples, mapping


def _load_imagenet(root: Path, split: str, classes: Path | None) -> LoadedData:
    from torchvision import transforms

    directory = _imagenet_split_dir(root, split)
    if not directory.is_dir():
        raise DataError(
            f"ImageNet {split} split not found: expected {directory}/<class>/<image files> "
            f"(ImageFolder layout under --data-root {root}, with train/ and val/)"
        )
    samples, mapping = _scan(directory, "imagenet", classes)
    transform = transforms.Compose(
        [
            transforms.Resize(IMAGENET_RESIZE),
            transforms.CenterCrop(IMAGENET_CROP),
            transforms.ToTensor(),
        ]
    )
    dataset = ImageFiles(samples, transform, sorted(mapping.labels))
    info = _info("imagenet", (3, IMAGENET_CROP, IMAGENET_CROP), mapping.num_classes)
    return LoadedData(dataset=dataset, info=info, split=split, classes=mapping)


def _first_folder_split(root: Path) -> str:
    for split, folders in _SPLIT_FOLDERS.items():
        if any((root / folder).is_dir() for folder in folders):
            return split
    return "test"


def _folder_split_dir(root: Path, split: str, typed: str | None = None) -> Path:
    """``root/<split>`` when the tree has split folders, else ``root`` itself (both splits).

    A tree with any of ``train/``, ``test/``, ``val/`` is treated as split; a missing requested
    split is then an error rather than a silent fallback that would turn ``train`` into a class.
    """
    if not any((root / folder).is_dir() for folder in _ANY_SPLIT_FOLDER):
        return root
    preferred = (typed,) if typed in _ANY_SPLIT_FOLDER else ()
    for folder in preferred + _SPLIT_FOLDERS[split]:
        if (root / folder).is_dir():
            return root / folder
    present = [folder for folder in _ANY_SPLIT_FOLDER if (root / folder).is_dir()]
    raise DataError(
        f"folder dataset {root} has split folder(s) {', '.join(present)} but no "
        f"{' or '.join(_SPLIT_FOLDERS[split])}/ for split {split}; add it or choose --split "
        f"{'train' if 'train' in present else 'test'}"
    )


def _load_folder(root: Path, split: str, typed: str, classes: Path | None) -> LoadedData:
    from torchvision import transforms

    directory = _folder_split_dir(root, split, typed)
    samples, mapping = _scan(directory, "folder", classes)
    height, width = _image_hw(Path(samples[0][0]))
    dataset = ImageFiles(
        samples, transforms.ToTensor(), sorted(mapping.labels), size=(width, height)
    )
    info = _info("folder", (3, height, width), mapping.num_classes)
    return LoadedData(dataset=dataset, info=info, split=split, classes=mapping)
