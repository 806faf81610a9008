"""What every dataset loader returns (DatasetInfo, LoadedData, an image folder's ClassMapping) and
the per-dataset constants they are built from (normalization, default architecture, pixel grid).

A :class:`LoadedData`'s dataset yields ``(x, label)``: ``x`` a float32 tensor of shape
``(C, H, W)`` with values in ``[0, 1]``, ``label`` a Python ``int``. Normalization is *not*
applied to ``x``: every model carries its own mean/std layer (see :mod:`ancer_cli.models`), so
noise is always added in pixel space.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

# Dataset-wide pixel mean/std of scikit-learn's digits after scaling to [0, 1] (all 1,797 images,
# population std), rounded to 4 decimals.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": (DIGITS_MEAN, DIGITS_STD),
    "mnist": (MNIST_MEAN, MNIST_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "folder": (IMAGENET_MEAN, IMAGENET_STD),
}

DEFAULT_ARCH = {
    "digits": "cnn",
    "mnist": "cnn",
    "cifar10": "resnet18",
    "imagenet": "resnet50",
    "folder": "resnet18",
}

EIGHT_BIT_LEVELS = 255
"""The pixel grid of 8-bit images: every value of ``x`` is ``k / 255`` for an integer ``k``."""
SIXTEEN_BIT_LEVELS = 65535
"""The pixel grid of 16-bit images, ``k / 65535``; 8-bit values lie on it too (65535 = 255 x 257)."""


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

    index = "index"  # type: ignore[assignment]  # sub-folders named by class index: 0/, 7/, ...
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
    image folder's images were labeled (``None`` for the built-in datasets). ``grid_levels`` is
    the pixel grid the values of ``x`` lie on: each is ``k / grid_levels`` for an integer ``k``
    (255 for 8-bit images, 65535 for image folders holding 16-bit images, 16 for digits); ``None``
    for data without a grid (a folder holding float images). ``grid_note`` is then one line that
    says why, for a command to show when its default, sound sampling where the data has a grid,
    turns to float noise (the library never prints).
    """

    dataset: Dataset[tuple[torch.Tensor, int]]
    info: DatasetInfo
    split: str
    classes: ClassMapping | None = None
    grid_levels: int | None = None
    grid_note: str | None = None

    @property
    def size(self) -> int:
        """How many inputs the split holds (every dataset here has a length)."""
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def labeled(self) -> bool:
        """Whether the images carry labels (an unlabeled folder's are all -1)."""
        return self.classes is None or self.classes.rule is not LabelRule.unlabeled


def info_for(name: str, input_shape: tuple[int, int, int], num_classes: int) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` with this shape and number of classes."""
    mean, std = NORMALIZATION[name]
    return DatasetInfo(
        name=name,
        input_shape=input_shape,
        num_classes=num_classes,
        mean=mean,
        std=std,
        default_arch=DEFAULT_ARCH[name],
    )
