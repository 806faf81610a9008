"""The dataset registry: the names and splits ancer knows, each dataset's description and
normalization, and the dispatch of :func:`load_dataset` to the family that reads it.

Missing or malformed data raises :class:`~ancer_cli.errors.DataError` with one line naming the
expected layout; no raw torchvision, pickle or PIL exception escapes for those cases.
"""

from __future__ import annotations

from pathlib import Path

from ancer_cli.data.arrays import digits_info, load_digits
from ancer_cli.data.base import NORMALIZATION, DatasetInfo, LabelRule, LoadedData
from ancer_cli.data.cifar import cifar10_info, load_cifar10
from ancer_cli.data.folders import folder_info, imagenet_info, load_folder, load_imagenet
from ancer_cli.data.mnist import load_mnist, mnist_info
from ancer_cli.errors import DataError

DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagenet", "folder")
SPLITS: tuple[str, ...] = ("train", "test")

# ImageFolder-style datasets: labels from sub-folders (see ClassMapping); they also accept "val"
# as another name for the test split.
_IMAGE_FOLDER_DATASETS = frozenset({"imagenet", "folder"})


# ---------------------------------------------------------------------------------------------
# public API


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` the models of dataset ``name`` normalize with; no data needed."""
    _check_name(name)
    return NORMALIZATION[name]


def dataset_info(
    name: str, data_root: Path | None = None, classes: Path | None = None
) -> DatasetInfo:
    """Describe dataset ``name`` without loading its images.

    ``digits``, ``mnist`` and ``cifar10`` have fixed shapes and need no ``data_root``. ``imagenet``
    counts its classes (under ``train/``, else ``val/``) and ``folder`` also reads the size of its
    first image, so both need ``data_root``; ``classes`` is their class list (see
    :func:`~ancer_cli.data.folders.class_mapping`).
    """
    _check_name(name)
    _check_classes_option(name, classes)
    if name == "digits":
        return digits_info()
    if name == "mnist":
        return mnist_info()
    if name == "cifar10":
        return cifar10_info()
    root = _require_root(name, data_root)
    if name == "imagenet":
        return imagenet_info(root, classes)
    return folder_info(root, classes)


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
    is the class list of an image folder (``imagenet``, ``folder``), see
    :func:`~ancer_cli.data.folders.class_mapping`.
    """
    _check_name(name)
    _check_classes_option(name, classes)
    canonical = _canonical_split(name, split)
    if name == "digits":
        return load_digits(canonical)
    root = _require_root(name, data_root)
    if name == "mnist":
        return load_mnist(root, canonical, download)
    if name == "cifar10":
        return load_cifar10(root, canonical, download)
    if name == "imagenet":
        return load_imagenet(root, canonical, classes)
    return load_folder(root, canonical, split, classes)


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
