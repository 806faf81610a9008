"""Datasets held in memory as one integer tensor: :class:`InMemoryImages`, scikit-learn's embedded
digits, and the torchvision download helpers MNIST and CIFAR-10 share."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ancer_cli.data.base import DatasetInfo, LoadedData, info_for
from ancer_cli.errors import DataError, first_line

DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0
DIGITS_LEVELS = 16
"""scikit-learn's digits are integers 0..16: ``x`` is ``k / 16``."""


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


def digits_info() -> DatasetInfo:
    """The fixed shape and classes of scikit-learn's digits."""
    return info_for("digits", (1, 8, 8), 10)


def load_digits(split: str) -> LoadedData:
    """Split ``split`` (canonical) of scikit-learn's digits: the seeded permutation's first
    :data:`DIGITS_TEST_SIZE` images are the test split, the rest the train split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # values 0..16, shape (1797, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    chosen = order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:]
    dataset = InMemoryImages(
        torch.from_numpy(images[chosen]).unsqueeze(1),
        torch.from_numpy(labels[chosen]),
        float(DIGITS_LEVELS),
    )
    return LoadedData(dataset=dataset, info=digits_info(), split=split, grid_levels=DIGITS_LEVELS)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """torchvision prints download messages; keep stdout for results (progress goes to stderr)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def download_error(name: str, root: Path, error: BaseException) -> DataError:
    """One line for a failed torchvision download of ``name`` into ``root``."""
    first = first_line(error)
    return DataError(
        f"could not download {name} into {root}: {first}; check the network, or place the files "
        "there by hand"
    )
