"""Datasets ancer knows, loaded as ``(x, label)`` items with ``x`` float32 ``(C, H, W)`` in [0, 1].

One family per module; imports go ``base`` <- families <- ``registry``:

- :mod:`~ancer_cli.data.base`: what a loader returns (``DatasetInfo``, ``LoadedData``, an image
  folder's ``ClassMapping``) and the per-dataset constants (normalization, pixel grid);
- :mod:`~ancer_cli.data.arrays`: in-memory integer images (``InMemoryImages``), the embedded
  digits, and the download helpers MNIST and CIFAR-10 share;
- :mod:`~ancer_cli.data.mnist`: MNIST from its idx-ubyte files;
- :mod:`~ancer_cli.data.cifar`: CIFAR-10 from its python pickles, through a restricted
  unpickler;
- :mod:`~ancer_cli.data.images`: one image file at its real bit depth (8-bit, 16-bit, float),
  and the pixel grid of a folder of them;
- :mod:`~ancer_cli.data.folders`: image folders (``imagenet``, ``folder``) and class lists;
- :mod:`~ancer_cli.data.registry`: the dataset names and splits, ``dataset_info``,
  ``normalization`` and the ``load_dataset`` dispatch.
"""

from __future__ import annotations

from ancer_cli.data.arrays import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE, InMemoryImages
from ancer_cli.data.base import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    UNLABELED,
    ClassMapping,
    DatasetInfo,
    LabelRule,
    LoadedData,
)
from ancer_cli.data.cifar import CIFAR10_FOLDER, CIFAR10_TEST_BATCHES, CIFAR10_TRAIN_BATCHES
from ancer_cli.data.folders import (
    IMAGENET_CROP,
    IMAGENET_RESIZE,
    ImageFiles,
    class_mapping,
    read_class_list,
)
from ancer_cli.data.registry import (
    DATASETS,
    SPLITS,
    check_same_classes,
    dataset_info,
    load_dataset,
    normalization,
)

__all__ = [
    "CIFAR10_FOLDER",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_TEST_BATCHES",
    "CIFAR10_TRAIN_BATCHES",
    "DATASETS",
    "DIGITS_MEAN",
    "DIGITS_SPLIT_SEED",
    "DIGITS_STD",
    "DIGITS_TEST_SIZE",
    "IMAGENET_CROP",
    "IMAGENET_MEAN",
    "IMAGENET_RESIZE",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "SPLITS",
    "UNLABELED",
    "ClassMapping",
    "DatasetInfo",
    "ImageFiles",
    "InMemoryImages",
    "LabelRule",
    "LoadedData",
    "check_same_classes",
    "class_mapping",
    "dataset_info",
    "load_dataset",
    "normalization",
    "read_class_list",
]
