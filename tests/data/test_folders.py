"""Image folders: ImageNet and folder layouts, their labels (class indices, class lists, sorted
names, none) and every error path, on tiny PNG trees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ancer_cli.data import DatasetInfo, LabelRule, dataset_info, load_dataset, read_class_list
from ancer_cli.errors import DataError
from tests.data.writers import make_image_tree, write_png


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


@pytest.mark.parametrize("name", ["imagenet", "folder"])
def test_image_folders_lie_on_the_8_bit_grid(name: str, tmp_path: Path) -> None:
    make_image_tree(tmp_path / "val", ("a", "b"), (40, 30), per=1)
    loaded = load_dataset(name, "val", data_root=tmp_path)
    assert loaded.grid_levels == 255
    levels = loaded.dataset[1][0] * loaded.grid_levels
    assert torch.allclose(levels, levels.round(), atol=1e-4)
