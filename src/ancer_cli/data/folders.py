"""Image folders (``imagenet``, ``folder``): their layouts and class lists, and the labels a
:class:`~ancer_cli.data.base.ClassMapping` gives their images.

Sub-folders named by class index carry that index, sub-folders named in a class list
(``--classes FILE``, line k = class k) carry its line, other names are sorted and numbered 0,
1, ...; a folder of images without sub-folders is unlabeled (label -1). Every image is read at
its own bit depth (:mod:`ancer_cli.data.images`) and the folder's grid is the finest its images
need: 1/255 for 8-bit images, 1/65535 once one is 16-bit, none once one is float.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ancer_cli.data.base import (
    UNLABELED,
    ClassMapping,
    DatasetInfo,
    LabelRule,
    LoadedData,
    info_for,
)
from ancer_cli.data.images import (
    Geometry,
    PixelSurvey,
    decode,
    fits_grid,
    open_image,
    pixel_kind,
    survey_images,
)
from ancer_cli.errors import DataError, first_line

IMAGENET_RESIZE = 256
IMAGENET_CROP = 224

_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
_ANY_SPLIT_FOLDER = ("train", "test", "val")


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """Images read lazily from ``samples`` (path, class index) and turned into ``(3, H, W)``.

    Each image is decoded at its bit depth (:func:`~ancer_cli.data.images.decode`), after
    ``geometry`` (a resize and crop of the PIL image) if given, and must lie on the grid the
    dataset was declared with, ``grid_levels`` (``None``: any kind); an image that does not (the
    folder changed since it was surveyed) is a DataError naming the file. If ``size`` (width,
    height) is given, every image must have it: a different size raises a DataError naming the
    file instead of being silently resized (a certificate is about the exact input given).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        grid_levels: int | None,
        size: tuple[int, int] | None = None,
        geometry: Geometry | None = None,
    ) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.grid_levels = grid_levels
        self.size = size
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with open_image(path) as image:
            kind = pixel_kind(image, path)
            if not fits_grid(kind, self.grid_levels):
                raise DataError(
                    f"image {path} is a {kind.value} image but the dataset was read as lying on "
                    f"the 1/{self.grid_levels} grid (the folder changed since it was loaded); "
                    "start the command again"
                )
            if self.size is not None and image.size != self.size:
                raise DataError(
                    f"image {path} is {image.size[0]}x{image.size[1]} (WxH) but the folder's "
                    f"first image is {self.size[0]}x{self.size[1]}; all images of a folder "
                    "dataset must share one size: resize them first"
                )
            return decode(image, kind, path, self.geometry), label


def _image_hw(path: Path) -> tuple[int, int]:
    with open_image(path) as image:
        width, height = image.size
    return height, width


def _survey(samples: Sequence[tuple[str, int]]) -> PixelSurvey:
    return survey_images(path for path, _ in samples)


def _imagenet_split_dir(root: Path, split: str) -> Path:
    return root / ("train" if split == "train" else "val")


def _subfolders(directory: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    except OSError as error:
        raise DataError(f"cannot list {directory} ({error.strerror or error})") from error


def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def _loose_images(directory: Path) -> list[Path]:
    """Image files directly in ``directory`` (not in sub-folders), sorted by name."""
    extensions = _image_extensions()
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_file() and entry.name.lower().endswith(extensions)
        )
    except OSError as error:
        raise DataError(f"cannot list {directory} ({error.strerror or error})") from error
    return [directory / name for name in names]


_CLASS_INDEX = re.compile(r"^\d+$")


def read_class_list(path: Path) -> list[str]:
    """The class names of ``path``, one per line: the first line names class 0, the next 1, ...

    Lines are stripped of surrounding white space; empty lines at the end are ignored, an empty
    line before them, a repeated name or an empty list is a :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(
            f"--classes {path} {what}; give a text file with one class name per line "
            "(line k names class k)"
        )
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"cannot read --classes {path} as UTF-8 text ({first_line(error)}); give a text "
            "file with one class name per line"
        ) from error
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"--classes {path} is empty; give one class name per line")
    seen: dict[str, int] = {}
    for number, name in enumerate(lines):
        if not name:
            raise DataError(
                f"--classes {path}, line {number + 1} is empty; the first line names class 0, "
                "the next class 1 and so on, so no line before the last may be empty"
            )
        if name in seen:
            raise DataError(
                f"--classes {path} names {name!r} twice (lines {seen[name] + 1} and "
                f"{number + 1}); each class needs one line"
            )
        seen[name] = number
    return lines


def class_mapping(directory: Path, name: str, classes: Path | None = None) -> ClassMapping:
    """How the images under ``directory`` are labeled.

    - ``classes`` given: every sub-folder must be named in that list (see
      :func:`read_class_list`), by a whole line or by its first word (so ImageNet's
      ``LOC_synset_mapping.txt``, ``n01440764 tench, Tinca tinca``, works as it is), and gets
      that line's class;
    - else sub-folders whose names are all integers (``0/``, ``7/``) carry those class indices;
    - else the sorted names map to 0, 1, ...;
    - no sub-folders but images: unlabeled (label -1).
    """
    found = _subfolders(directory)
    if not found:
        if classes is None and _loose_images(directory):
            return ClassMapping(LabelRule.unlabeled)
        if classes is not None and _loose_images(directory):
            raise DataError(
                f"{name} dataset folder {directory} has images but no class sub-folders, so "
                "--classes has nothing to name; drop --classes to use them unlabeled, or sort "
                f"them into {directory}/<class>/ folders"
            )
        raise DataError(
            f"{name} dataset folder {directory} has no class sub-folders and no images; "
            f"expected {directory}/<class>/<image files>, one sub-folder per class (or the "
            "images themselves, unlabeled)"
        )
    if classes is not None:
        listed = read_class_list(classes)
        exact = {line: k for k, line in enumerate(listed)}
        first_word: dict[str, int | None] = {}
        for k, line in enumerate(listed):
            word = line.split()[0]
            first_word[word] = None if word in first_word else k  # None: ambiguous
        labels = {}
        for folder in found:
            label = exact.get(folder, first_word.get(folder))
            if label is None:
                why = "names it on several lines" if folder in first_word else "does not name it"
                raise DataError(
                    f"sub-folder {folder!r} of {directory} is not a class of --classes "
                    f"{classes} (the list {why}; its {len(listed)} lines name classes 0 to "
                    f"{len(listed) - 1}); rename the folder or fix the list"
                )
            labels[folder] = label
        return ClassMapping(LabelRule.classes_file, labels, Path(classes), len(listed))
    if all(_CLASS_INDEX.match(folder) for folder in found):
        labels = {folder: int(folder) for folder in found}
        if len(set(labels.values())) < len(labels):
            twins = [f for f in found if list(labels.values()).count(int(f)) > 1]
            raise DataError(
                f"sub-folders {', '.join(twins[:2])} of {directory} name the same class index "
                f"{int(twins[0])}; keep one folder per class"
            )
        return ClassMapping(LabelRule.index, labels)
    return ClassMapping(LabelRule.sorted, {folder: k for k, folder in enumerate(found)})


def _first_image(directory: Path, mapping: ClassMapping) -> Path:
    """The first image of the dataset: the first class's first file in sorted walk order (the
    order ImageFolder lists), or the first loose image of an unlabeled folder."""
    if mapping.rule is LabelRule.unlabeled:
        return _loose_images(directory)[0]
    extensions = _image_extensions()
    for class_name in sorted(mapping.labels):
        for current, folders, files in sorted(os.walk(directory / class_name, followlinks=True)):
            folders.sort()
            for file_name in sorted(files):
                if file_name.lower().endswith(extensions):
                    return Path(current) / file_name
    raise _no_images(directory)


def _no_images(directory: Path) -> DataError:
    return DataError(
        f"no images found under {directory}; expected {directory}/<class>/<image> files with "
        f"extensions {', '.join(_image_extensions())}"
    )


def _scan(
    directory: Path, name: str, classes: Path | None
) -> tuple[list[tuple[str, int]], ClassMapping]:
    """(path, label) pairs in ImageFolder's order (sorted class names, then sorted walk; an
    unlabeled folder's images by name, label -1), and the class mapping."""
    from torchvision.datasets.folder import make_dataset

    mapping = class_mapping(directory, name, classes)
    if mapping.rule is LabelRule.unlabeled:
        return [(str(path), UNLABELED) for path in _loose_images(directory)], mapping
    try:
        samples = make_dataset(
            str(directory), mapping.labels, extensions=_image_extensions(), allow_empty=True
        )
    except OSError as error:
        raise DataError(f"cannot list images under {directory} ({error})") from error
    if not samples:
        raise _no_images(directory)
    return samples, mapping


def load_imagenet(root: Path, split: str, classes: Path | None) -> LoadedData:
    """Split ``split`` (canonical) of ImageNet: ``root/train`` or ``root/val``, resized to
    :data:`IMAGENET_RESIZE` (bilinear) and center-cropped to :data:`IMAGENET_CROP`. 8-bit
    images are resized as 8-bit and 16-bit ones as integers, so both stay on their grid; float
    images are resized in float."""
    from torchvision import transforms

    directory = _imagenet_split_dir(root, split)
    if not directory.is_dir():
        raise DataError(
            f"ImageNet {split} split not found: expected {directory}/<class>/<image files> "
            f"(ImageFolder layout under --data-root {root}, with train/ and val/)"
        )
    samples, mapping = _scan(directory, "imagenet", classes)
    geometry = transforms.Compose(
        [transforms.Resize(IMAGENET_RESIZE), transforms.CenterCrop(IMAGENET_CROP)]
    )
    survey = _survey(samples)
    dataset = ImageFiles(samples, sorted(mapping.labels), survey.grid_levels, geometry=geometry)
    info = info_for("imagenet", (3, IMAGENET_CROP, IMAGENET_CROP), mapping.num_classes)
    return LoadedData(
        dataset=dataset,
        info=info,
        split=split,
        classes=mapping,
        grid_levels=survey.grid_levels,
        grid_note=survey.note(directory),
    )


def _first_folder_split(root: Path) -> str:
    for split, folders in _SPLIT_FOLDERS.items():
        if any((root / folder).is_dir() for folder in folders):
            return split
    return "test"


def _folder_split_dir(root: Path, split: str, typed: str | None = None) -> Path:
    """``root/<split>`` when the tree has split folders, else ``root`` itself (both splits).

    A tree with any of ``train/``, ``test/``, ``val/`` is treated as split; a missing requested
    split is then an error rather than a silent fallback that would turn ``train`` into a class.
    """
    if not any((root / folder).is_dir() for folder in _ANY_SPLIT_FOLDER):
        return root
    preferred = (typed,) if typed in _ANY_SPLIT_FOLDER else ()
    for folder in preferred + _SPLIT_FOLDERS[split]:
        if (root / folder).is_dir():
            return root / folder
    present = [folder for folder in _ANY_SPLIT_FOLDER if (root / folder).is_dir()]
    raise DataError(
        f"folder dataset {root} has split folder(s) {', '.join(present)} but no "
        f"{' or '.join(_SPLIT_FOLDERS[split])}/ for split {split}; add it or choose --split "
        f"{'train' if 'train' in present else 'test'}"
    )


def load_folder(root: Path, split: str, typed: str, classes: Path | None) -> LoadedData:
    """Split ``split`` (canonical; ``typed`` as the user wrote it) of a folder dataset: images
    of one size, read as they are, on the grid their headers say (see
    :class:`~ancer_cli.data.images.PixelSurvey`)."""
    directory = _folder_split_dir(root, split, typed)
    samples, mapping = _scan(directory, "folder", classes)
    height, width = _image_hw(Path(samples[0][0]))
    survey = _survey(samples)
    dataset = ImageFiles(samples, sorted(mapping.labels), survey.grid_levels, size=(width, height))
    info = info_for("folder", (3, height, width), mapping.num_classes)
    return LoadedData(
        dataset=dataset,
        info=info,
        split=split,
        classes=mapping,
        grid_levels=survey.grid_levels,
        grid_note=survey.note(directory),
    )


def imagenet_info(root: Path, classes: Path | None) -> DatasetInfo:
    """ImageNet's shape (the crop) and its classes, counted under ``train/``, else ``val/``."""
    for split in ("train", "test"):
        directory = _imagenet_split_dir(root, split)
        if directory.is_dir():
            mapping = class_mapping(directory, "imagenet", classes)
            return info_for("imagenet", (3, IMAGENET_CROP, IMAGENET_CROP), mapping.num_classes)
    raise DataError(
        f"ImageNet not found: expected {root}/train or {root}/val with one sub-folder of "
        "images per class; pass the folder that holds them as --data-root"
    )


def folder_info(root: Path, classes: Path | None) -> DatasetInfo:
    """A folder dataset's classes and the shape of its first image."""
    directory = _folder_split_dir(root, _first_folder_split(root))
    mapping = class_mapping(directory, "folder", classes)
    first = _first_image(directory, mapping)
    return info_for("folder", (3, *_image_hw(first)), mapping.num_classes)
