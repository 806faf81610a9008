"""Checkpoint formats: ancer's, plain state dicts and Cohen et al.'s published checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.artifacts import sha256_file
from ancer_cli.data import DatasetInfo
from ancer_cli.errors import ModelError
from ancer_cli.models import (
    CHECKPOINT_FORMAT,
    build_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from tests.models.fakes import CIFAR, CPU, DIGITS, TINY_RGB, trained_like

# ---------------------------------------------------------------------------------------------
# ancer checkpoints


def test_checkpoint_round_trip(checkpoint_path: Path, digits_batch: torch.Tensor) -> None:
    raw = torch.load(checkpoint_path, weights_only=True, map_location="cpu")
    assert raw["format"] == CHECKPOINT_FORMAT
    assert raw["input_shape"] == [1, 8, 8] and raw["num_classes"] == 10
    assert (raw["arch"], raw["dataset"], raw["norm"], raw["sigma"], raw["epoch"]) == (
        "cnn",
        "digits",
        "l2",
        0.25,
        3,
    )
    assert raw["optimizer_state"] is None
    reference = build_model("cnn", DIGITS)
    reference.load_state_dict(raw["state_dict"])
    with torch.no_grad():
        expected = reference.eval()(digits_batch)

    loaded = load_model(checkpoint_path, CPU)
    assert loaded.kind == "checkpoint"
    assert loaded.sha256 == sha256_file(checkpoint_path)
    assert (loaded.arch, loaded.dataset, loaded.num_classes) == ("cnn", "digits", 10)
    assert (loaded.input_shape, loaded.norm, loaded.sigma) == ((1, 8, 8), "l2", 0.25)
    assert loaded.checkpoint is not None and loaded.checkpoint["epoch"] == 3
    assert not loaded.module.training
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), expected)
    assert read_checkpoint(checkpoint_path)["arch"] == "cnn"


def test_checkpoint_keeps_optimizer_state(tmp_path: Path) -> None:
    model = build_model("cnn", DIGITS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    path = tmp_path / "with_optimizer.pt"
    save_checkpoint(
        path,
        model=model,
        arch="cnn",
        info=DIGITS,
        norm="l1",
        sigma=0.5,
        epoch=1,
        optimizer_state=optimizer.state_dict(),
    )
    restored = torch.optim.SGD(build_model("cnn", DIGITS).parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(read_checkpoint(path)["optimizer_state"])
    assert restored.state_dict()["param_groups"][0]["momentum"] == 0.9
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_checkpoint_must_match_the_dataset(checkpoint_path: Path) -> None:
    with pytest.raises(ModelError, match="trained on digits with 10 classes .* folder has 7"):
        load_model(checkpoint_path, CPU, info=TINY_RGB)
    assert load_model(checkpoint_path, CPU, info=DIGITS).num_classes == 10
    with pytest.raises(ModelError, match="holds arch cnn, but --arch resnet20 was given"):
        load_model(checkpoint_path, CPU, arch="resnet20")


def test_read_checkpoint_validates(tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "cnn"}, path)
    with pytest.raises(ModelError, match=r"partial\.pt lacks key\(s\) num_classes, dataset"):
        read_checkpoint(path)
    with pytest.raises(ModelError, match="lacks key"):
        load_model(path, CPU)
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="is not an ancer checkpoint"):
        read_checkpoint(path)


def test_malformed_checkpoint_fields(checkpoint_path: Path) -> None:
    raw = torch.load(checkpoint_path, weights_only=True)
    raw["norm"] = "linf"
    raw["input_shape"] = [1, 8]
    torch.save(raw, checkpoint_path)
    with pytest.raises(ModelError, match="malformed: input_shape must be .*; norm must be one of"):
        read_checkpoint(checkpoint_path)


# ---------------------------------------------------------------------------------------------
# plain state dicts


def test_plain_state_dict_needs_arch_and_dataset(
    tmp_path: Path, digits_batch: torch.Tensor
) -> None:
    model = trained_like(build_model("cnn", DIGITS))
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match="plain state dict without an architecture; pass --arch"):
        load_model(path, CPU)
    with pytest.raises(ModelError, match="pass --dataset"):
        load_model(path, CPU, arch="cnn")
    loaded = load_model(path, CPU, arch="cnn", info=DIGITS)
    assert loaded.kind == "checkpoint" and loaded.checkpoint is None
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))


@pytest.mark.parametrize("layout", ["bare_net", "data_parallel", "nested_state_dict"])
def test_plain_state_dict_layouts(tmp_path: Path, digits_batch: torch.Tensor, layout: str) -> None:
    model = trained_like(build_model("cnn", DIGITS))
    if layout == "bare_net":
        payload: object = model[1].state_dict()
    elif layout == "data_parallel":
        payload = {f"module.{key}": value for key, value in model.state_dict().items()}
    else:
        payload = {"arch": "cnn", "epoch": 9, "state_dict": model.state_dict()}
    path = tmp_path / f"{layout}.pt"
    torch.save(payload, path)
    loaded = load_model(path, CPU, arch="cnn", info=DIGITS)
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))


def test_wrong_state_dict_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "cifar_weights.pt"
    torch.save(build_model("resnet20", CIFAR).state_dict(), path)
    with pytest.raises(
        ModelError, match=r"cifar_weights\.pt does not fit arch resnet110: .*missing"
    ):
        load_model(path, CPU, arch="resnet110", info=CIFAR)
    with pytest.raises(
        ModelError, match=r"1\.fc\.weight has shape \(10, 64\) in the file but \(7, 64\)"
    ):
        load_model(path, CPU, arch="resnet20", info=TINY_RGB)
    torch.save({"not": "a state dict"}, path)
    with pytest.raises(ModelError, match="not a state dict"):
        load_model(path, CPU, arch="resnet20", info=CIFAR)


# ---------------------------------------------------------------------------------------------
# Cohen et al.'s published checkpoints (locuslab/smoothing): {"arch", "state_dict", "epoch",
# "optimizer"}, the state dict of Sequential(NormalizeLayer, net); ImageNet's net in DataParallel


def cohen_resnet_names(n: int) -> set[str]:
    """Every state-dict key of Cohen et al.'s depth-(6n+2) CIFAR ResNet, written out from their
    ``cifar_resnet.py`` (no convolution biases, downsample = 1x1 conv + BN in layers 2 and 3)."""

    def bn(prefix: str) -> list[str]:
        return [
            f"{prefix}.{name}"
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]

    names = ["conv1.weight", *bn("bn1"), "fc.weight", "fc.bias"]
    for stage in (1, 2, 3):
        for block in range(n):
            prefix = f"layer{stage}.{block}"
            names += [f"{prefix}.conv1.weight", *bn(f"{prefix}.bn1")]
            names += [f"{prefix}.conv2.weight", *bn(f"{prefix}.bn2")]
        if stage > 1:
            names += [f"layer{stage}.0.downsample.0.weight", *bn(f"layer{stage}.0.downsample.1")]
    return set(names)


@pytest.mark.parametrize(("arch", "n"), [("resnet20", 3), ("resnet110", 18)])
def test_our_cifar_resnets_have_exactly_cohens_names(arch: str, n: int) -> None:
    net = build_model(arch, CIFAR)[1]
    assert set(net.state_dict()) == cohen_resnet_names(n)
    downsample = net.layer2[0].downsample
    assert downsample[0].stride == (2, 2) and downsample[0].kernel_size == (1, 1)
    assert downsample[0].bias is None


def distinct_weights(model: nn.Module, seed: int) -> nn.Module:
    """Non-default values everywhere (BN statistics included) that keep a deep ResNet's logits
    finite and input-dependent, so that a load that lost or mixed up a tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(1.0 + 0.5 * noise.abs())
            elif tensor.ndim == 1 and ".bn" in name or "downsample.1" in name:
                # BN scale (damped, so 54 residual blocks stay finite), shift and mean
                tensor.copy_(0.3 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                tensor.copy_(noise * (2.0 / max(1, tensor[0].numel())) ** 0.5)
    return model.eval()


def save_cohen(path: Path, cohen_arch: str, net: nn.Module, prefix: str) -> None:
    """A checkpoint in Cohen et al.'s layout, with a real SGD optimizer state."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for parameter in net.parameters():
        optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    torch.save(
        {
            "epoch": 90,
            "arch": cohen_arch,
            "state_dict": {prefix + key: value for key, value in net.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        },
        path,
    )


@pytest.mark.parametrize(
    ("cohen_arch", "ours", "prefix"),
    [
        ("cifar_resnet20", "resnet20", "1."),
        ("cifar_resnet110", "resnet110", "1."),
        ("cifar_resnet20", "resnet20", "module.1."),  # the whole Sequential in DataParallel
    ],
)
def test_cohen_cifar_checkpoint_gives_identical_logits(
    tmp_path: Path, cohen_arch: str, ours: str, prefix: str
) -> None:
    model = distinct_weights(build_model(ours, CIFAR), seed=3)
    path = tmp_path / "checkpoint.pth.tar"
    save_cohen(path, cohen_arch, model[1], prefix)
    loaded = load_model(path, CPU)
    assert (loaded.arch, loaded.dataset, loaded.num_classes) == (ours, "cifar10", 10)
    assert (loaded.input_shape, loaded.norm, loaded.sigma) == ((3, 32, 32), "l2", None)
    assert loaded.kind == "checkpoint" and loaded.sha256 == sha256_file(path)
    normalize = loaded.module[0]
    assert normalize.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert normalize.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = loaded.module(x)
        assert torch.isfinite(logits).all() and logits.std() > 1e-3
        assert not torch.equal(logits[0], logits[1])
        assert torch.equal(logits, model(x))
        # a freshly built model (other weights) gives other logits: the load did something
        assert not torch.allclose(build_model(ours, CIFAR).eval()(x), logits)
    assert load_model(path, CPU, arch=ours, info=CIFAR).arch == ours  # consistent --arch/--dataset


@pytest.mark.slow
def test_cohen_imagenet_checkpoint_gives_identical_logits(tmp_path: Path) -> None:
    info = DatasetInfo("imagenet", (3, 224, 224), 1000, (0.485, 0.456, 0.406),
                       (0.229, 0.224, 0.225), "resnet50")  # fmt: skip
    model = distinct_weights(build_model("resnet50", info), seed=5)
    path = tmp_path / "imagenet.pth.tar"
    save_cohen(path, "resnet50", model[1], "1.module.")
    loaded = load_model(path, CPU)
    assert (loaded.arch, loaded.dataset, loaded.num_classes) == ("resnet50", "imagenet", 1000)
    assert loaded.input_shape == (3, 224, 224)
    normalize = loaded.module[0]
    assert normalize.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert normalize.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # small: fast
    with torch.no_grad():
        logits = loaded.module(x)
        assert torch.isfinite(logits).all() and logits.std() > 1e-3
        assert not torch.equal(logits[0], logits[1])
        assert torch.equal(logits, model(x))


def test_cohen_checkpoint_mismatches(tmp_path: Path) -> None:
    path = tmp_path / "c.pth.tar"
    save_cohen(path, "cifar_resnet20", build_model("resnet20", CIFAR)[1], "1.")
    with pytest.raises(ModelError, match="Cohen et al.'s cifar_resnet20 checkpoint .* drop --arch"):
        load_model(path, CPU, arch="resnet110")
    with pytest.raises(ModelError, match="10 classes .* dataset digits has 10 classes"):
        load_model(path, CPU, info=DIGITS)
    # resnet20 weights labelled cifar_resnet110: the state dict does not fit
    wrong = tmp_path / "wrong.pth.tar"
    save_cohen(wrong, "cifar_resnet110", build_model("resnet20", CIFAR)[1], "1.")
    with pytest.raises(ModelError, match=r"does not fit arch resnet110 .*missing key"):
        load_model(wrong, CPU)


def test_other_arch_dicts_are_not_taken_for_cohens(tmp_path: Path) -> None:
    """A dict with an arch outside Cohen's names stays a plain state dict that needs --arch."""
    path = tmp_path / "nested.pt"
    torch.save({"arch": "cnn", "state_dict": build_model("cnn", DIGITS).state_dict()}, path)
    with pytest.raises(ModelError, match="pass --arch"):
        load_model(path, CPU)
