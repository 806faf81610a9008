"""CIFAR-10: the python pickles, the restricted unpickler and the download, on tiny files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ancer_cli.data import load_dataset
from ancer_cli.errors import DataError
from tests.data.writers import make_cifar, write_cifar_batch


def test_cifar10_reads_python_pickles(tmp_path: Path) -> None:
    written = make_cifar(tmp_path)
    test = load_dataset("cifar10", "test", data_root=tmp_path)
    train = load_dataset("cifar10", "train", data_root=tmp_path)
    assert (len(test.dataset), len(train.dataset)) == (2, 10)
    x, label = test.dataset[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = torch.from_numpy(written["test_batch"][1].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expected) and label == int(written["test_batch_labels"][1])
    # The train split concatenates data_batch_1..5 in order.
    x, label = train.dataset[9]
    expected = torch.from_numpy(written["data_batch_5"][1].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expected) and label == int(written["data_batch_5_labels"][1])
    assert test.info.input_shape == (3, 32, 32) and test.info.default_arch == "resnet18"
    assert test.info.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_missing_batch_names_layout(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py/test_batch \(the python version"):
        load_dataset("cifar10", "test", data_root=tmp_path)
    with pytest.raises(DataError, match="pass --download"):
        load_dataset("cifar10", "test", data_root=tmp_path / "cifar-10-batches-py")


def test_cifar10_refuses_malicious_pickle(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt)\.system"):
        load_dataset("cifar10", "test", data_root=tmp_path)
    assert not marker.exists()


def test_cifar10_malformed_batches(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar_batch(batch, np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(DataError, match=r"uint8 of shape \(N, 3072\)"):
        load_dataset("cifar10", "test", data_root=tmp_path)
    write_cifar_batch(batch, np.zeros((2, 3072), np.uint8), [0])
    with pytest.raises(DataError, match="2 images but 1 labels"):
        load_dataset("cifar10", "test", data_root=tmp_path)
    batch.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="cannot read .*test_batch as a CIFAR-10 pickle"):
        load_dataset("cifar10", "test", data_root=tmp_path)


def test_cifar10_accepts_numpy1_global_names(tmp_path: Path) -> None:
    # Pickles written under numpy 1 (and the original Python 2 batches) name numpy.core.multiarray.
    make_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    write_cifar_batch(batch, data, [3, 4])
    payload = batch.read_bytes()
    assert b"numpy._core.multiarray" in payload
    batch.write_bytes(payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = load_dataset("cifar10", "test", data_root=tmp_path)
    x, label = loaded.dataset[1]
    assert label == 4
    assert torch.allclose(x.flatten(), torch.from_numpy(data[1]).float() / 255)


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(**kwargs: object) -> None:
        raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(
        DataError, match="could not download CIFAR-10 into .*cifar-10-python"
    ) as info:
        load_dataset("cifar10", "test", data_root=tmp_path, download=True)
    assert "\n" not in str(info.value)


def test_cifar10_lies_on_the_8_bit_grid(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    loaded = load_dataset("cifar10", "test", data_root=tmp_path)
    assert loaded.grid_levels == 255
    levels = loaded.dataset[0][0] * loaded.grid_levels
    assert torch.allclose(levels, levels.round(), atol=1e-4)
