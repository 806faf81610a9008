"""The model and data of a run are checked against each other once: a built-in dataset needs one
logit per class, an image folder at least as many logits as its labels need."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from ancer_cli.data import load_dataset
from ancer_cli.errors import ModelError
from ancer_cli.inputs import check_compatible, select_indices
from tests.toys import ZeroLogits

CPU = torch.device("cpu")


def folder(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(root / name / "a.png")
    return root


def test_an_image_folder_may_hold_any_subset_of_the_models_classes(tmp_path: Path) -> None:
    one_class = load_dataset("folder", "test", folder(tmp_path / "one", "3"))
    assert check_compatible(ZeroLogits(10), one_class, CPU, "m.pt") == 10
    thousand = load_dataset("folder", "test", folder(tmp_path / "some", "0", "417", "999"))
    assert check_compatible(ZeroLogits(1000), thousand, CPU, "m.pt") == 1000


def test_fewer_logits_than_the_labels_need_names_both_numbers(tmp_path: Path) -> None:
    data = load_dataset("folder", "test", folder(tmp_path / "idx", "2", "12"))
    with pytest.raises(ModelError, match=r"returns 10 logits but the folder labels need 13: .*12"):
        check_compatible(ZeroLogits(10), data, CPU, "m.pt")
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"c{k}\n" for k in range(20)))
    listed = load_dataset("folder", "test", folder(tmp_path / "named", "c1"), classes=names)
    with pytest.raises(ModelError, match=r"need 20: --classes .*classes\.txt lists 20 classes"):
        check_compatible(ZeroLogits(10), listed, CPU, "m.pt")


def test_unlabeled_images_fit_any_classifier(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert check_compatible(ZeroLogits(3), load_dataset("folder", "test", tmp_path), CPU, "m") == 3


def test_built_in_datasets_still_need_exactly_their_classes() -> None:
    data = load_dataset("digits", "test")
    assert check_compatible(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, CPU, "m") == 10
    with pytest.raises(ModelError, match=r"logits of shape \(1, 12\) .* expected \(1, 10\)"):
        check_compatible(nn.Sequential(nn.Flatten(), nn.Linear(64, 12)), data, CPU, "m")


def test_select_indices() -> None:
    assert select_indices(10, 3) == [0, 3, 6, 9]
    assert select_indices(10, 2, 5) == [0, 2, 4]
