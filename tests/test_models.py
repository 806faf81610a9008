"""Architectures, checkpoints and model files of every kind, including hostile ones."""

from __future__ import annotations

import os
import pickle
import random
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.artifacts import sha256_file
from ancer_cli.data import DatasetInfo, dataset_info
from ancer_cli.errors import ModelError
from ancer_cli.models import (
    ARCHITECTURES,
    CHECKPOINT_FORMAT,
    Normalize,
    build_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

CPU = torch.device("cpu")
DIGITS = dataset_info("digits")
CIFAR = dataset_info("cifar10")
MNIST = dataset_info("mnist")
TINY_RGB = DatasetInfo(
    name="folder",
    input_shape=(3, 32, 32),
    num_classes=7,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    default_arch="resnet18",
)


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run these tiny models on one thread: on small shared CPUs intra-op threading of batch-1
    convolutions costs seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm statistic non-default values, so a load is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2 + 0.9)
    return model.eval()


@pytest.fixture
def digits_batch() -> torch.Tensor:
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def checkpoint_path(tmp_path: Path) -> Path:
    model = trained_like(build_model("cnn", DIGITS))
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model=model,
        arch="cnn",
        info=DIGITS,
        norm="l2",
        sigma=0.25,
        epoch=3,
        optimizer_state=None,
    )
    return path


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
# TorchScript and torch.export


class TinyClassifier(nn.Module):
    """(B, 1, 8, 8) in [0, 1] -> (B, 4) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x - 0.5)))
        return self.fc(out.mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")
def test_torchscript_model(tmp_path: Path, digits_batch: torch.Tensor) -> None:
    model = trained_like(TinyClassifier())
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path, CPU)
    assert loaded.kind == "torchscript" and loaded.arch is None and loaded.checkpoint is None
    assert loaded.sha256 == sha256_file(path)
    assert not loaded.module.training
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))
    with pytest.raises(ModelError, match="TorchScript archive, which carries its own architecture"):
        load_model(path, CPU, arch="cnn")
    with pytest.raises(ModelError, match="is a TorchScript archive, not an ancer checkpoint"):
        read_checkpoint(path)


def test_torch_export_model(tmp_path: Path, digits_batch: torch.Tensor) -> None:
    model = trained_like(TinyClassifier())
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (digits_batch,), dynamic_shapes=({0: batch},))
    path = tmp_path / "exported.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(path, CPU)
    assert loaded.kind == "export" and loaded.input_shape == (1, 8, 8)
    loaded.module.eval()  # exported graphs refuse eval(); the wrapper must not
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))
        assert loaded.module(digits_batch[:1]).shape == (1, 4)


def test_torch_export_with_fixed_batch_is_refused(tmp_path: Path) -> None:
    program = torch.export.export(TinyClassifier().eval(), (torch.rand(2, 1, 8, 8),))
    path = tmp_path / "static.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(ModelError, match="fixed batch size of 2; .*re-export with dynamic_shapes"):
        load_model(path, CPU)


# ---------------------------------------------------------------------------------------------
# user factories


USER_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def make(num_classes=3):
    return Net(num_classes)


def make_fixed():
    return Net(5)


def not_a_module():
    return 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "ancer_test_user_arch"
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


def test_factory_architecture(tmp_path: Path, user_module: str, digits_batch: torch.Tensor) -> None:
    arch = f"{user_module}:make"
    model = trained_like(build_model(arch, DIGITS))
    assert not isinstance(model, nn.Sequential)  # the user's module normalizes by itself
    assert model.state_dict()["linear.weight"].shape == (10, 64)

    plain = tmp_path / "user_weights.pt"
    torch.save(model.state_dict(), plain)
    loaded = load_model(plain, CPU, arch=arch, info=DIGITS)
    assert loaded.kind == "factory" and loaded.arch == arch
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))

    checkpoint = tmp_path / "user_checkpoint.pt"
    save_checkpoint(
        checkpoint,
        model=model,
        arch=arch,
        info=DIGITS,
        norm="l2",
        sigma=0.5,
        epoch=0,
        optimizer_state=None,
    )
    from_checkpoint = load_model(checkpoint, CPU)
    assert from_checkpoint.kind == "checkpoint" and from_checkpoint.arch == arch
    with torch.no_grad():
        assert torch.equal(from_checkpoint.module(digits_batch), model(digits_batch))


def test_factory_without_num_classes(tmp_path: Path, user_module: str) -> None:
    model = build_model(f"{user_module}:make_fixed", DIGITS)
    assert model.state_dict()["linear.weight"].shape == (5, 64)
    path = tmp_path / "fixed.pt"
    torch.save(model.state_dict(), path)
    assert load_model(path, CPU, arch=f"{user_module}:make_fixed").kind == "factory"


def test_factory_errors(user_module: str) -> None:
    with pytest.raises(
        ModelError, match=r"cannot import module no_such_pkg_xyz\.models \(ModuleNotFoundError"
    ):
        build_model("no_such_pkg_xyz.models:make", DIGITS)
    with pytest.raises(ModelError, match="has no attribute missing"):
        build_model(f"{user_module}:missing", DIGITS)
    with pytest.raises(ModelError, match="returned a int, expected a torch.nn.Module"):
        build_model(f"{user_module}:not_a_module", DIGITS)
    with pytest.raises(ModelError, match="must look like package.module:factory"):
        build_model(":make", DIGITS)


# ---------------------------------------------------------------------------------------------
# bad files


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file .*absent\.pt does not exist"):
        load_model(tmp_path / "absent.pt", CPU)
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path, CPU)
    with pytest.raises(ModelError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


def test_empty_truncated_and_random_files(tmp_path: Path, checkpoint_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.pt is empty"):
        load_model(empty, CPU)
    data = checkpoint_path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"truncated\.pt is corrupt or not a PyTorch file"):
        load_model(truncated, CPU)
    garbage = tmp_path / "random.pt"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ModelError, match=r"random\.pt is corrupt or not a PyTorch file") as bad:
        load_model(garbage, CPU)
    assert "\n" not in str(bad.value)
    with pytest.raises(ModelError, match="corrupt or not a PyTorch file"):
        read_checkpoint(garbage)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_save", "pickle_protocol_2", "pickle_protocol_5"])
def test_code_executing_pickle_is_refused(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": _Evil(marker)}
    if container == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=int(container[-1]))
    with pytest.raises(
        ModelError, match=r"evil\.pt was refused: loading it would run code \(it references "
    ) as refused:
        load_model(path, CPU)
    assert "system" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ModelError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


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
