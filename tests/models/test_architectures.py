"""Built-in architectures: shapes, parameter names, normalization."""

from __future__ import annotations

import pytest
import torch

from ancer_cli.data import DatasetInfo
from ancer_cli.errors import ModelError
from ancer_cli.models import (
    ARCHITECTURES,
    Normalize,
    build_model,
)
from tests.models.fakes import CIFAR, DIGITS, MNIST, TINY_RGB

# ---------------------------------------------------------------------------------------------
# architectures


@pytest.mark.parametrize(
    ("arch", "info", "batch"),
    [
        ("cnn", DIGITS, 2),
        ("cnn", MNIST, 2),
        ("resnet18", CIFAR, 2),
        ("resnet20", CIFAR, 2),
        ("resnet110", CIFAR, 1),
        ("wideresnet40", CIFAR, 1),
        ("resnet50", TINY_RGB, 1),
        ("resnet20", MNIST, 1),
    ],
)
def test_every_architecture_runs(arch: str, info: DatasetInfo, batch: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, info).eval()
    assert isinstance(model[0], Normalize)
    with torch.no_grad():
        logits = model(torch.rand(batch, *info.input_shape))
    assert logits.shape == (batch, info.num_classes)
    assert torch.isfinite(logits).all()


def test_architecture_list() -> None:
    assert ARCHITECTURES == ("cnn", "resnet18", "resnet20", "resnet110", "wideresnet40", "resnet50")


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(
        ModelError, match="unknown architecture 'vgg16'; choose one of cnn, resnet18"
    ):
        build_model("vgg16", CIFAR)


@pytest.mark.parametrize(("arch", "blocks", "parameters"), [("resnet20", 3, 272_474)])
def test_cohen_resnet_parameter_names(arch: str, blocks: int, parameters: int) -> None:
    state = build_model(arch, CIFAR).state_dict()
    for key in (
        "1.conv1.weight",
        "1.bn1.weight",
        "1.bn1.running_var",
        "1.layer1.0.conv1.weight",
        "1.layer1.0.bn2.bias",
        "1.layer2.0.downsample.0.weight",
        "1.layer2.0.downsample.1.running_mean",
        "1.layer3.0.downsample.0.weight",
        f"1.layer3.{blocks - 1}.conv2.weight",
        "1.fc.weight",
        "1.fc.bias",
    ):
        assert key in state, key
    assert not any(key.startswith("1.layer1.0.downsample") for key in state)
    assert f"1.layer1.{blocks}.conv1.weight" not in state
    assert not any("conv" in key and key.endswith(".bias") for key in state)
    assert not any(key.startswith("1.layer2.0.downsample.0.bias") for key in state)
    assert state["1.layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert state["1.fc.weight"].shape == (10, 64)
    model = build_model(arch, CIFAR)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_resnet110_depth_and_names() -> None:
    state = build_model("resnet110", CIFAR).state_dict()
    assert "1.layer3.17.bn2.weight" in state and "1.layer3.18.conv1.weight" not in state
    assert "1.layer2.0.downsample.0.weight" in state
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_b" not in k) == (
        1_730_714
    )


def test_first_convolution_takes_the_dataset_channels() -> None:
    grey = DatasetInfo("mnist", (1, 32, 32), 10, (0.5,), (0.5,), "resnet50")
    assert build_model("resnet50", grey).state_dict()["1.conv1.weight"].shape[1] == 1
    assert build_model("wideresnet40", grey).state_dict()["1.conv1.weight"].shape[1] == 1
    assert build_model("resnet18", TINY_RGB).state_dict()["1.fc.weight"].shape == (7, 512)


def test_normalize_is_not_in_the_state_dict() -> None:
    model = build_model("cnn", DIGITS)
    keys = list(model.state_dict())
    assert keys and all(key.startswith("1.") for key in keys)
    normalize = model[0]
    x = torch.rand(2, 1, 8, 8)
    expected = (x - DIGITS.mean[0]) / DIGITS.std[0]
    assert torch.allclose(normalize(x), expected)
    three = Normalize((0.1, 0.2, 0.3), (0.5, 0.5, 0.25))
    assert torch.allclose(three(torch.ones(3, 2, 2))[2], torch.full((2, 2), 2.8))
    assert dict(three.state_dict()) == {}


def test_normalize_rejects_bad_constants() -> None:
    with pytest.raises(ModelError, match="std must be positive"):
        Normalize((0.5,), (0.0,))
    with pytest.raises(ModelError, match="one mean and one std per channel"):
        Normalize((0.5, 0.5), (0.2,))
