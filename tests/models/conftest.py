"""Fixtures shared by these tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ancer_cli.models import (
    build_model,
    save_checkpoint,
)
from tests.models.fakes import DIGITS, trained_like


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run these tiny models on one thread: on small shared CPUs intra-op threading of batch-1
    convolutions costs seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def digits_batch() -> torch.Tensor:
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def checkpoint_path(tmp_path: Path) -> Path:
    model = trained_like(build_model("cnn", DIGITS))
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model=model,
        arch="cnn",
        info=DIGITS,
        norm="l2",
        sigma=0.25,
        epoch=3,
        optimizer_state=None,
    )
    return path
