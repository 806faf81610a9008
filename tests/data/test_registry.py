"""The registry: dataset names, splits and roots, and train/test class agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import TensorDataset

from ancer_cli.data import DATASETS, LoadedData, check_same_classes, dataset_info, load_dataset
from ancer_cli.errors import DataError
from tests.data.writers import make_image_tree, write_png


def test_train_and_test_splits_must_mean_the_same_classes(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "sorted" / "train", ("cat", "dog"), (6, 6), per=1)
    make_image_tree(tmp_path / "sorted" / "test", ("dog",), (6, 6), per=1)
    train = load_dataset("folder", "train", data_root=tmp_path / "sorted")
    test = load_dataset("folder", "test", data_root=tmp_path / "sorted")
    with pytest.raises(DataError, match="different class sub-folders .*--classes FILE"):
        check_same_classes(train, test)
    make_image_tree(tmp_path / "index" / "train", ("0", "1", "5"), (6, 6), per=1)
    make_image_tree(tmp_path / "index" / "test", ("5",), (6, 6), per=1)
    check_same_classes(  # fewer classes in the test split is fine with class indices
        load_dataset("folder", "train", data_root=tmp_path / "index"),
        load_dataset("folder", "test", data_root=tmp_path / "index"),
    )
    make_image_tree(tmp_path / "index" / "test", ("9",), (6, 6), per=1)
    with pytest.raises(DataError, match="needs 10 classes but the train split only 6"):
        check_same_classes(
            load_dataset("folder", "train", data_root=tmp_path / "index"),
            load_dataset("folder", "test", data_root=tmp_path / "index"),
        )
    write_png(tmp_path / "flat" / "train" / "a.png", (6, 6), (0, 0, 0))
    write_png(tmp_path / "flat" / "test" / "a.png", (6, 6), (0, 0, 0))
    with pytest.raises(DataError, match="no labels; training needs"):
        check_same_classes(
            load_dataset("folder", "train", data_root=tmp_path / "flat"),
            load_dataset("folder", "test", data_root=tmp_path / "flat"),
        )


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError, match="unknown dataset 'svhn'; valid datasets: digits, mnist"):
        load_dataset("svhn")
    with pytest.raises(DataError, match="valid datasets"):
        dataset_info("svhn")
    assert DATASETS == ("digits", "mnist", "cifar10", "imagenet", "folder")


@pytest.mark.parametrize(
    ("name", "split", "valid"),
    [
        ("digits", "val", "train, test"),
        ("mnist", "dev", "train, test"),
        ("imagenet", "validation", "train, test, val"),
    ],
)
def test_unknown_split_lists_valid_splits(
    name: str, split: str, valid: str, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=f"unknown split '{split}' .*valid splits: {valid}$"):
        load_dataset(name, split, data_root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet", "folder"])
def test_missing_root_says_pass_data_root(name: str) -> None:
    with pytest.raises(DataError, match="pass --data-root"):
        load_dataset(name, "test")


def test_root_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--data-root .*nowhere does not exist"):
        load_dataset("cifar10", "test", data_root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="pass --data-root"):
        dataset_info("imagenet")


def test_fixed_shape_infos_need_no_root() -> None:
    assert dataset_info("mnist").input_shape == (1, 28, 28)
    assert dataset_info("cifar10").num_classes == 10


def test_data_without_a_grid_declares_none() -> None:
    loaded = LoadedData(dataset=TensorDataset(), info=dataset_info("digits"), split="test")
    assert loaded.grid_levels is None
