"""MNIST: the idx-ubyte files, their error paths and the download, on tiny files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ancer_cli.data import load_dataset
from ancer_cli.errors import DataError
from tests.data.writers import make_mnist, write_idx


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path)
    test = load_dataset("mnist", "test", data_root=tmp_path)
    train = load_dataset("mnist", "train", data_root=tmp_path)
    assert (len(test.dataset), len(train.dataset)) == (4, 6)
    x, label = test.dataset[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(arrays["t10k_images"][2]).float() / 255)
    assert label == int(arrays["t10k_labels"][2])
    assert train.info.mean == (0.1307,) and train.info.std == (0.3081,)
    assert train.info.default_arch == "cnn"


def test_mnist_missing_files_name_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"MNIST/raw.*--download"):
        load_dataset("mnist", "test", data_root=tmp_path)


def test_mnist_corrupt_files(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), 1234)
    with pytest.raises(DataError, match="magic number 1234, expected 2051"):
        load_dataset("mnist", "test", data_root=tmp_path)
    data = (raw / "train-labels-idx1-ubyte").read_bytes()
    (raw / "train-labels-idx1-ubyte").write_bytes(data[:-2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", "train", data_root=tmp_path)


def test_download_then_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision.datasets

    calls: list[dict[str, object]] = []

    def fake_mnist(**kwargs: object) -> None:
        calls.append(kwargs)
        print("Downloading https://example/mnist")  # torchvision prints like this
        make_mnist(Path(str(kwargs["root"])))

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    loaded = load_dataset("mnist", "train", data_root=tmp_path, download=True)
    assert len(loaded.dataset) == 6
    assert calls == [{"root": str(tmp_path), "train": True, "download": True}]
    captured = capsys.readouterr()
    assert captured.out == "" and "Downloading" in captured.err


def test_mnist_lies_on_the_8_bit_grid(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    loaded = load_dataset("mnist", "test", data_root=tmp_path)
    assert loaded.grid_levels == 255
    levels = loaded.dataset[0][0] * loaded.grid_levels
    assert torch.allclose(levels, levels.round(), atol=1e-4)
