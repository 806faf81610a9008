"""Dataset registry: shapes, splits and every error path, on tiny files in the real formats."""

from __future__ import annotations

import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ancer_cli.data import (
    DATASETS,
    DIGITS_MEAN,
    DIGITS_STD,
    DatasetInfo,
    LabelRule,
    check_same_classes,
    dataset_info,
    load_dataset,
    normalization,
    read_class_list,
)
from ancer_cli.errors import DataError

# ---------------------------------------------------------------------------------------------
# writers of the real on-disk formats


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """An idx-ubyte file: big-endian magic, one big-endian uint32 per dimension, uint8 data."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    batch = {
        b"batch_label": b"tiny batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def make_cifar(root: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        write_cifar_batch(folder / name, data, labels)
        written[name] = data
        written[name + "_labels"] = np.array(labels)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
        + [b"dog", b"frog", b"horse", b"ship", b"truck"],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return written


def write_png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_image_tree(root: Path, classes: tuple[str, ...], size: tuple[int, int], per: int) -> None:
    for index, name in enumerate(classes):
        for i in range(per):
            write_png(root / name / f"{i}.png", size, (index * 60, i * 40, 200))


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_and_split_sizes() -> None:
    test = load_dataset("digits", "test")
    train = load_dataset("digits", "train")
    assert (len(test.dataset), len(train.dataset)) == (500, 1297)
    assert test.split == "test" and train.split == "train"
    x, label = test.dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    everything = torch.stack([train.dataset[i][0] for i in range(len(train.dataset))])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    assert test.info == dataset_info("digits")
    assert test.info.input_shape == (1, 8, 8) and test.info.num_classes == 10
    assert test.info.default_arch == "cnn"


def test_digits_split_follows_the_seeded_permutation() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    test = load_dataset("digits", "test").dataset
    train = load_dataset("digits", "train").dataset
    for position in (0, 1, 499):
        x, label = test[position]
        expected = torch.from_numpy(bunch.images[order[position]] / 16.0).float()
        assert torch.equal(x[0], expected) and label == int(bunch.target[order[position]])
    x, label = train[0]
    assert torch.equal(x[0], torch.from_numpy(bunch.images[order[500]] / 16.0).float())
    # Deterministic: a second load gives the same items.
    again = load_dataset("digits", "test").dataset
    assert all(torch.equal(test[i][0], again[i][0]) for i in range(0, 500, 50))


def test_digits_mean_std_match_the_data() -> None:
    from sklearn.datasets import load_digits

    pixels = load_digits().data / 16.0
    assert DIGITS_MEAN == (round(float(pixels.mean()), 4),)
    assert DIGITS_STD == (round(float(pixels.std()), 4),)
    assert normalization("digits") == (DIGITS_MEAN, DIGITS_STD)


def test_digits_needs_no_root_and_ignores_one() -> None:
    assert len(load_dataset("digits", "test", data_root=None).dataset) == 500


# ---------------------------------------------------------------------------------------------
# MNIST


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


# ---------------------------------------------------------------------------------------------
# CIFAR-10


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


# ---------------------------------------------------------------------------------------------
# image folders


def test_imagenet_folder_layout(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", ("n01", "n02", "n03"), (40, 30), per=2)
    make_image_tree(tmp_path / "val", ("n01", "n02", "n03"), (300, 260), per=1)
    for split in ("test", "val"):
        loaded = load_dataset("imagenet", split, data_root=tmp_path)
        assert loaded.split == "test" and len(loaded.dataset) == 3
        x, label = loaded.dataset[2]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and label == 2
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    train = load_dataset("imagenet", "train", data_root=tmp_path)
    assert len(train.dataset) == 6 and train.dataset[0][0].shape == (3, 224, 224)
    assert train.info.num_classes == 3 and train.info.default_arch == "resnet50"
    assert dataset_info("imagenet", tmp_path).num_classes == 3


def test_imagenet_missing_split(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", ("a",), (8, 8), per=1)
    with pytest.raises(DataError, match=r"expected .*/val/<class>/<image files>"):
        load_dataset("imagenet", "test", data_root=tmp_path)


def test_folder_dataset_plain_tree(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ("cat", "dog"), (12, 10), per=3)
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert len(loaded.dataset) == 6 and loaded.split == "test"
    x, label = loaded.dataset[4]
    assert x.shape == (3, 10, 12) and label == 1
    info = loaded.info
    assert info == DatasetInfo(
        name="folder",
        input_shape=(3, 10, 12),
        num_classes=2,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        default_arch="resnet18",
    )
    assert dataset_info("folder", tmp_path) == info
    # Without split folders, both splits are the whole tree.
    assert len(load_dataset("folder", "train", data_root=tmp_path).dataset) == 6


def test_folder_dataset_split_subfolders(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", ("a", "b", "c"), (6, 6), per=2)
    make_image_tree(tmp_path / "val", ("a", "b", "c"), (6, 6), per=1)
    assert len(load_dataset("folder", "train", data_root=tmp_path).dataset) == 6
    assert len(load_dataset("folder", "test", data_root=tmp_path).dataset) == 3
    assert len(load_dataset("folder", "val", data_root=tmp_path).dataset) == 3
    only_train = tmp_path / "only_train"
    make_image_tree(only_train / "train", ("a",), (6, 6), per=1)
    with pytest.raises(DataError, match="no test or val/ for split test"):
        load_dataset("folder", "test", data_root=only_train)


def test_folder_dataset_size_mismatch_is_reported_lazily(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ("a",), (8, 8), per=1)
    write_png(tmp_path / "a" / "odd.png", (9, 7), (1, 2, 3))
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.dataset[0][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"odd\.png is 9x7 .* first image is 8x8"):
        loaded.dataset[1]


def test_folder_unreadable_image(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ("a",), (8, 8), per=1)
    (tmp_path / "a" / "broken.png").write_bytes(b"no png here")
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        loaded.dataset[1]


def test_folder_without_classes_or_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        load_dataset("folder", "test", data_root=empty)
    with pytest.raises(DataError, match="has no class sub-folders"):
        dataset_info("folder", empty)
    # a flat folder of images is no longer an error: its images are unlabeled (label -1)
    flat = tmp_path / "flat"
    flat.mkdir()
    write_png(flat / "lonely.png", (4, 4), (0, 0, 0))
    assert load_dataset("folder", "test", data_root=flat).dataset[0][1] == -1
    no_images = tmp_path / "no_images"
    (no_images / "cls").mkdir(parents=True)
    (no_images / "cls" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found under"):
        load_dataset("folder", "test", data_root=no_images)
    with pytest.raises(DataError, match="no images found under"):
        dataset_info("folder", no_images)
    (tmp_path / "inet" / "val" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found under"):
        load_dataset("imagenet", "val", data_root=tmp_path / "inet")


# ---------------------------------------------------------------------------------------------
# labels of image folders: class index names, a class list, sorted names, no labels


def labels_of(loaded) -> list[int]:
    return [label for _, label in loaded.dataset.samples]


def test_folder_subfolders_named_by_class_index_carry_that_index(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ("3", "10", "7"), (6, 6), per=2)
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    # ImageFolder's order (sorted names: 10, 3, 7), each image labeled by its folder's number
    assert labels_of(loaded) == [10, 10, 3, 3, 7, 7]
    assert [int(loaded.dataset[i][1]) for i in range(6)] == labels_of(loaded)
    mapping = loaded.classes
    assert mapping is not None and mapping.rule is LabelRule.index
    assert mapping.labels == {"3": 3, "7": 7, "10": 10}
    # a model needs 11 logits for label 10; any subset of a larger model's classes is fine
    assert loaded.info.num_classes == 11 == dataset_info("folder", tmp_path).num_classes
    assert mapping.record() == {
        "rule": "index",
        "classes_file": None,
        "labels": {"3": 3, "7": 7, "10": 10},
    }
    assert (
        mapping.describe()
        == "labels from sub-folders named by class index: 3 -> 3, 7 -> 7, 10 -> 10"
    )


def test_folder_labels_from_a_class_list(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_image_tree(root, ("dog", "cat"), (6, 6), per=1)
    names = tmp_path / "cifar10.txt"
    names.write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
    assert read_class_list(names)[3] == "cat" and len(read_class_list(names)) == 10
    loaded = load_dataset("folder", "test", data_root=root, classes=names)
    assert labels_of(loaded) == [3, 5]  # cat/ then dog/, as the list numbers them
    assert loaded.classes is not None and loaded.classes.rule is LabelRule.classes_file
    assert loaded.info.num_classes == 10  # the classes the list names
    assert loaded.classes.record()["classes_file"] == str(names)


def test_class_list_lines_match_by_first_word(tmp_path: Path) -> None:
    """ImageNet's LOC_synset_mapping.txt: ``<wnid> <names>`` per line, line k = class k."""
    wnids = [f"n{1440764 + 7 * k:08d}" for k in range(1000)]
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"{w} name {k}, another name\n" for k, w in enumerate(wnids)))
    make_image_tree(tmp_path / "imagenet" / "val", (wnids[417], wnids[2]), (40, 30), per=1)
    loaded = load_dataset("imagenet", "val", data_root=tmp_path / "imagenet", classes=mapping)
    assert sorted(labels_of(loaded)) == [2, 417]
    assert loaded.info.num_classes == 1000
    assert dataset_info("imagenet", tmp_path / "imagenet", mapping).num_classes == 1000


def test_other_names_keep_the_sorted_rule(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ("zebra", "7", "ant"), (6, 6), per=1)
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.classes is not None and loaded.classes.rule is LabelRule.sorted
    assert loaded.classes.labels == {"7": 0, "ant": 1, "zebra": 2}
    assert labels_of(loaded) == [0, 1, 2] and loaded.info.num_classes == 3


def test_flat_folder_is_unlabeled(tmp_path: Path) -> None:
    for i, name in enumerate(("b.png", "a.jpg", "c.png")):
        write_png(tmp_path / "test" / name, (12, 10), (i * 50, 0, 0))
    (tmp_path / "test" / "notes.txt").write_text("not an image")
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert len(loaded.dataset) == 3 and not loaded.labeled
    assert [Path(path).name for path, _ in loaded.dataset.samples] == ["a.jpg", "b.png", "c.png"]
    x, label = loaded.dataset[0]
    assert label == -1 and x.shape == (3, 10, 12)
    assert loaded.info.num_classes == 0 and loaded.info.input_shape == (3, 10, 12)
    assert loaded.classes is not None and loaded.classes.rule is LabelRule.unlabeled
    assert dataset_info("folder", tmp_path).input_shape == (3, 10, 12)
    assert "unlabeled" in loaded.classes.describe()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("cat\n\ndog\n", "line 2 is empty"),
        ("cat\ndog\ncat\n", "names 'cat' twice (lines 1 and 3)"),
    ],
)
def test_malformed_class_lists(tmp_path: Path, text: str, fragment: str) -> None:
    names = tmp_path / "classes.txt"
    names.write_text(text)
    with pytest.raises(DataError, match=re.escape(fragment)):
        read_class_list(names)


def test_class_list_errors_name_the_problem(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "images", ("cat", "lion"), (6, 6), per=1)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    with pytest.raises(DataError, match="sub-folder 'lion' .* not a class of --classes"):
        load_dataset("folder", "test", data_root=tmp_path / "images", classes=names)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("folder", "test", data_root=tmp_path / "images", classes=tmp_path / "no")
    with pytest.raises(DataError, match="is a folder"):
        load_dataset("folder", "test", data_root=tmp_path / "images", classes=tmp_path)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00cat")
    with pytest.raises(DataError, match="as UTF-8 text"):
        read_class_list(binary)
    with pytest.raises(DataError, match="dataset digits has fixed labels: drop --classes"):
        load_dataset("digits", "test", classes=names)
    flat = tmp_path / "flat"
    write_png(flat / "a.png", (4, 4), (0, 0, 0))
    with pytest.raises(DataError, match="no class sub-folders, so --classes has nothing"):
        load_dataset("folder", "test", data_root=flat, classes=names)


def test_two_folders_for_one_class_index(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ("7", "07"), (6, 6), per=1)
    with pytest.raises(DataError, match="name the same class index 7"):
        load_dataset("folder", "test", data_root=tmp_path)


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


# ---------------------------------------------------------------------------------------------
# names, splits and roots


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
