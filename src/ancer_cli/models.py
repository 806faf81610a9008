"""Architectures and model files: build a classifier, save and load ancer checkpoints.

Every model maps a batch ``x`` of shape ``(B, C, H, W)`` with values in ``[0, 1]`` to logits of
shape ``(B, K)``. Built-in architectures are ``nn.Sequential(Normalize(mean, std), net)``, the
layout of Cohen et al.'s checkpoints, so their state dict keys are ``1.*`` and the normalization
constants (non-persistent buffers) never enter a file.

Model files are read with ``torch.load(weights_only=True)``: loading a model never runs Python code
from the file. TorchScript archives and ``torch.export`` programs are accepted as black boxes.
Cohen et al.'s published checkpoints (``{"arch": "cifar_resnet110", "state_dict", "epoch",
"optimizer"}``) are recognised by their ``arch`` and mapped to ours (:data:`COHEN_ARCHITECTURES`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import atomic_writer, sha256_file
from ancer_cli.data import DATASETS, DatasetInfo, normalization
from ancer_cli.errors import ModelError

ARCHITECTURES: tuple[str, ...] = (
    "cnn",
    "resnet18",
    "resnet20",
    "resnet110",
    "wideresnet40",
    "resnet50",
)
CHECKPOINT_FORMAT = "ancer-model/1"
CHECKPOINT_KEYS: tuple[str, ...] = (
    "format",
    "arch",
    "num_classes",
    "dataset",
    "input_shape",
    "norm",
    "sigma",
    "epoch",
    "state_dict",
    "optimizer_state",
)
NORMS: tuple[str, ...] = ("l2", "l1")

# Cohen et al.'s (locuslab/smoothing) ``arch`` names -> (our architecture, training dataset,
# default number of classes). Their files hold ``Sequential(NormalizeLayer, net)`` (ImageNet: net
# wrapped in DataParallel, keys ``1.module.*``); NormalizeLayer keeps no state.
COHEN_ARCHITECTURES: dict[str, tuple[str, str, int]] = {
    "cifar_resnet20": ("resnet20", "cifar10", 10),
    "cifar_resnet110": ("resnet110", "cifar10", 10),
    "resnet50": ("resnet50", "imagenet", 1000),
}
_COHEN_INPUT_SHAPES = {"cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}
MODEL_KINDS: tuple[str, ...] = ("checkpoint", "torchscript", "export", "factory")

_ACCEPTED_FILES = (
    "expected an ancer checkpoint, a state dict saved with torch.save, a TorchScript archive "
    "(torch.jit.save) or a torch.export program (torch.export.save)"
)


# ---------------------------------------------------------------------------------------------
# layers and architectures


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``x`` is ``(B, C, H, W)`` or ``(C, H, W)``.

    ``mean`` and ``std`` are non-persistent buffers: they follow the module across devices but are
    not saved, so ``Sequential(Normalize, net)`` has exactly the state dict keys ``1.*``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ModelError(
                f"Normalize needs one mean and one std per channel, got {len(mean)} mean(s) and "
                f"{len(std)} std(s)"
            )
        if any(not value > 0 for value in std):
            raise ModelError(f"Normalize std must be positive, got {tuple(std)}")
        shape = (len(mean), 1, 1)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return (
            f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"
        )


class SmallCNN(nn.Module):
    """conv32-conv64-maxpool-fc128 for small grey images (digits 8x8, MNIST 28x28).

    Adaptive pooling to 4x4 makes the classifier head independent of the input size.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Residual basic block: two 3x3 convolutions (no bias) with batch norm, optional 1x1 shortcut.

    Parameter names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.{0,1}``) are those of
    Cohen et al.'s ``cifar_resnet.py`` so their published checkpoints load by name.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (no max-pool), stages of basic blocks, global average pool.

    ``widths=(16, 32, 64)`` with ``n`` blocks per stage is the depth-``6n+2`` ResNet of He et al.
    used by Cohen et al. (resnet20: n=3, resnet110: n=18); ``widths=(64, 128, 256, 512)`` with two
    blocks per stage is the usual CIFAR ResNet-18. Input ``(B, C, H, W)``, output ``(B, K)``; the
    adaptive pool equals Cohen's 8x8 average pool on 32x32 inputs and lets other sizes run.
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int], blocks_per_stage: int
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for stage, planes in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(blocks_per_stage - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            in_planes = planes
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He initialization as in Cohen et al.: N(0, 2 / (k * k * out_channels)).
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{stage}")(out)
        return self.fc(torch.flatten(self.avgpool(out), 1))


class WideBasicBlock(nn.Module):
    """Pre-activation wide residual block (Zagoruyko & Komodakis), 1x1 ``convShortcut`` on shape
    change. Names follow the widely used PyTorch WRN port (RS4A's l1 baselines use it)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.equal_in_out = in_planes == planes and stride == 1
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(
                in_planes, planes, kernel_size=1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        # On a shape change the shortcut starts from the pre-activated input, as in the paper.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return out + shortcut


class _WideGroup(nn.Module):
    def __init__(self, blocks: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                for i in range(blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs: widths 16, 16k, 32k, 64k; ``(depth - 4) / 6`` blocks per group.

    ``WideResNet(in_channels, K, depth=40, widen_factor=2)`` is WRN-40-2. Input ``(B, C, H, W)``,
    output ``(B, K)``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, depth: int = 40, widen_factor: int = 2
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ModelError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = _WideGroup(blocks, widths[0], widths[1], 1)
        self.block2 = _WideGroup(blocks, widths[1], widths[2], 2)
        self.block3 = _WideGroup(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _resnet50(in_channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    net = resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn": SmallCNN,
    "resnet18": lambda c, k: CifarResNet(c, k, (64, 128, 256, 512), 2),
    "resnet20": lambda c, k: CifarResNet(c, k, (16, 32, 64), 3),
    "resnet110": lambda c, k: CifarResNet(c, k, (16, 32, 64), 18),
    "wideresnet40": lambda c, k: WideResNet(c, k, depth=40, widen_factor=2),
    "resnet50": _resnet50,
}


def is_factory_arch(arch: str) -> bool:
    """True for a user architecture ``package.module:factory``."""
    return ":" in arch


def _build_for(
    arch: str,
    dataset: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> nn.Module:
    """A fresh built-in ``arch`` for a model file's recorded dataset, shape and classes."""
    info = DatasetInfo(dataset, input_shape, num_classes, tuple(mean), tuple(std), arch)
    return build_model(arch, info)


def check_architecture(arch: str) -> None:
    """Raise a :class:`ModelError` unless ``arch`` is built in or a ``module:factory`` spec."""
    if not is_factory_arch(arch) and arch not in _BUILDERS:
        raise ModelError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)} "
            "or give package.module:factory"
        )


def build_model(arch: str, info: DatasetInfo) -> nn.Module:
    """A freshly initialised classifier for ``info``: ``(B, *info.input_shape)`` -> ``(B, K)``.

    Built-in ``arch``: ``nn.Sequential(Normalize(info.mean, info.std), net)``. ``package.module:
    factory``: the user's module as returned by ``factory(num_classes=K)`` (or ``factory()``); it
    maps [0, 1] inputs to logits itself, so no normalization is added.
    """
    if is_factory_arch(arch):
        return _build_factory(arch, info.num_classes)
    check_architecture(arch)
    channels = info.input_shape[0]
    if len(info.mean) != channels or len(info.std) != channels:
        raise ModelError(
            f"dataset {info.name} has {channels} channel(s) but {len(info.mean)} mean and "
            f"{len(info.std)} std value(s); give one per channel"
        )
    if info.num_classes < 1:
        raise ModelError(f"dataset {info.name} has {info.num_classes} classes; need at least 1")
    net = _BUILDERS[arch](channels, info.num_classes)
    return nn.Sequential(Normalize(info.mean, info.std), net)


def _build_factory(spec: str, num_classes: int | None) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"--arch {spec!r} must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a user module can fail to import in any way
        raise ModelError(
            f"--arch {spec}: cannot import module {module_name} ({type(error).__name__}: "
            f"{_first_line(error)}); make sure it is importable (PYTHONPATH or an installed package)"
        ) from error
    try:
        factory = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError as error:
        raise ModelError(
            f"--arch {spec}: module {module_name} ({getattr(module, '__file__', '?')}) has no "
            f"attribute {attribute}"
        ) from error
    if not callable(factory):
        raise ModelError(f"--arch {spec}: {attribute} is a {type(factory).__name__}, not callable")
    try:
        if num_classes is not None and _accepts_num_classes(factory):
            built = factory(num_classes=num_classes)
        else:
            built = factory()
    except Exception as error:  # noqa: BLE001 - user code
        raise ModelError(
            f"--arch {spec}: calling the factory failed ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from error
    if not isinstance(built, nn.Module):
        raise ModelError(
            f"--arch {spec}: the factory returned a {type(built).__name__}, expected a "
            "torch.nn.Module"
        )
    return built


def _accepts_num_classes(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "num_classes" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    arch: str,
    info: DatasetInfo,
    norm: str,
    sigma: float,
    epoch: int,
    optimizer_state: dict[str, Any] | None,
) -> None:
    """Write an ``ancer-model/1`` checkpoint atomically (loadable with ``weights_only=True``).

    ``model`` is what :func:`build_model` returned; its whole state dict is stored (keys ``1.*``
    for built-in architectures). ``sigma`` is the training noise standard deviation.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "num_classes": int(info.num_classes),
        "dataset": info.name,
        "input_shape": [int(size) for size in info.input_shape],
        "norm": norm,
        "sigma": float(sigma),
        "epoch": int(epoch),
        "state_dict": model.state_dict(),
        "optimizer_state": optimizer_state,
    }
    with atomic_writer(Path(path), mode="wb") as handle:
        torch.save(payload, handle)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and validate an ``ancer-model/1`` checkpoint onto the CPU (``weights_only=True``)."""
    path = Path(path)
    _check_model_file(path)
    kind = _detect_file_kind(path)
    if kind in ("torchscript", "export"):
        raise ModelError(
            f"{path} is a {_KIND_NAMES[kind]}, not an ancer checkpoint; give a file written by "
            "ancer train"
        )
    loaded = _torch_load(path)
    if not _is_ancer_checkpoint(loaded):
        raise ModelError(
            f"{path} is not an ancer checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}); give a file written by ancer train"
        )
    _validate_checkpoint(loaded, path)
    return loaded


def _is_ancer_checkpoint(loaded: object) -> bool:
    return isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT


def _validate_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ModelError(
            f"checkpoint {path} lacks key(s) {', '.join(missing)}; expected "
            f"{', '.join(CHECKPOINT_KEYS)}; re-create it with ancer train"
        )
    problems: list[str] = []
    if not isinstance(checkpoint["arch"], str) or not checkpoint["arch"]:
        problems.append(f"arch must be a non-empty string, got {checkpoint['arch']!r}")
    num_classes = checkpoint["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        problems.append(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(checkpoint["dataset"], str):
        problems.append(f"dataset must be a string, got {checkpoint['dataset']!r}")
    shape = checkpoint["input_shape"]
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(size, int) and size > 0 for size in shape)
    ):
        problems.append(f"input_shape must be [C, H, W] of positive integers, got {shape!r}")
    if checkpoint["norm"] not in NORMS:
        problems.append(f"norm must be one of {', '.join(NORMS)}, got {checkpoint['norm']!r}")
    sigma = checkpoint["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        problems.append(f"sigma must be a non-negative number, got {sigma!r}")
    if isinstance(checkpoint["epoch"], bool) or not isinstance(checkpoint["epoch"], int):
        problems.append(f"epoch must be an integer, got {checkpoint['epoch']!r}")
    if not _is_state_dict(checkpoint["state_dict"]):
        problems.append("state_dict must map parameter names to tensors")
    optimizer_state = checkpoint["optimizer_state"]
    if optimizer_state is not None and not isinstance(optimizer_state, dict):
        problems.append(
            f"optimizer_state must be a dict or None, got {type(optimizer_state).__name__}"
        )
    if problems:
        raise ModelError(
            f"checkpoint {path} is malformed: {'; '.join(problems)}; re-create it with ancer train"
        )


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()
    )


# ---------------------------------------------------------------------------------------------
# loading any model file


@dataclass
class LoadedModel:
    """A classifier ready for inference: ``module`` maps ``(B, C, H, W)`` in [0, 1] to ``(B, K)``.

    ``module`` is in eval mode on the requested device with every parameter frozen. ``kind`` is
    one of :data:`MODEL_KINDS`; the metadata fields are ``None`` where the file does not say.
    """

    module: nn.Module
    kind: str
    path: Path
    sha256: str
    arch: str | None
    dataset: str | None
    num_classes: int | None
    input_shape: tuple[int, int, int] | None
    norm: str | None
    sigma: float | None
    checkpoint: dict[str, Any] | None


def load_model(
    path: Path,
    device: torch.device,
    arch: str | None = None,
    info: DatasetInfo | None = None,
) -> LoadedModel:
    """Load any supported model file for inference on ``device``.

    - an ancer checkpoint: rebuilt from its own ``arch`` (``arch``, if given, must agree); if
      ``info`` is given its classes and input shape must match the checkpoint's;
    - a checkpoint of Cohen et al. (``arch`` in :data:`COHEN_ARCHITECTURES` and a
      ``state_dict``): rebuilt as our equivalent architecture with the normalization of their
      training dataset (CIFAR-10 or ImageNet), l2 norm, unknown sigma;
    - a TorchScript archive or a ``torch.export`` program: used as a black box (no ``arch``);
    - a plain state dict (or a dict holding one under ``"state_dict"``): needs ``arch``, and
      ``info`` for built-in architectures; kind ``"checkpoint"`` (with ``checkpoint=None``) for a
      built-in ``arch``, ``"factory"`` for ``package.module:factory``.

    The kind is decided from the zip member names, never by trying loaders in turn. Every
    problem (missing, corrupt or code-running file, unknown arch, state dict that does not fit)
    raises :class:`~ancer_cli.errors.ModelError` with one line naming ``path``.
    """
    path = Path(path)
    _check_model_file(path)
    digest = sha256_file(path)
    file_kind = _detect_file_kind(path)
    if file_kind in ("torchscript", "export"):
        if arch is not None:
            raise ModelError(
                f"{path} is a {_KIND_NAMES[file_kind]}, which carries its own architecture; "
                f"drop --arch {arch}"
            )
        if file_kind == "torchscript":
            module, input_shape = _load_torchscript(path, device), None
        else:
            module, input_shape = _load_export(path, device)
        return LoadedModel(
            module=_freeze(module),
            kind=file_kind,
            path=path,
            sha256=digest,
            arch=None,
            dataset=None,
            num_classes=None,
            input_shape=input_shape,
            norm=None,
            sigma=None,
            checkpoint=None,
        )

    loaded = _torch_load(path)
    if _is_ancer_checkpoint(loaded):
        return _from_checkpoint(loaded, path, digest, device, arch, info)
    if _is_cohen_checkpoint(loaded):
        return _from_cohen_checkpoint(loaded, path, digest, device, arch, info)
    if arch is None:
        raise ModelError(
            f"{path} holds a plain state dict without an architecture; pass --arch (one of "
            f"{', '.join(ARCHITECTURES)}, or package.module:factory)"
        )
    state = _plain_state_dict(loaded, path)
    if is_factory_arch(arch):
        module = _build_factory(arch, info.num_classes if info is not None else None)
    else:
        if info is None:
            raise ModelError(
                f"{path} holds a plain state dict for --arch {arch}; pass --dataset so the "
                "model's input shape, classes and normalization are known"
            )
        module = build_model(arch, info)
    _load_state(module, state, path, arch)
    return LoadedModel(
        module=_freeze(module.to(device)),
        kind="factory" if is_factory_arch(arch) else "checkpoint",
        path=path,
        sha256=digest,
        arch=arch,
        dataset=info.name if info is not None else None,
        num_classes=info.num_classes if info is not None else None,
        input_shape=info.input_shape if info is not None else None,
        norm=None,
        sigma=None,
        checkpoint=None,
    )


def _from_checkpoint(
    checkpoint: dict[str, Any],
    path: Path,
    digest: str,
    device: torch.device,
    arch: str | None,
    info: DatasetInfo | None,
) -> LoadedModel:
    _validate_checkpoint(checkpoint, path)
    saved_arch: str = checkpoint["arch"]
    if arch is not None and arch != saved_arch:
        raise ModelError(
            f"checkpoint {path} holds arch {saved_arch}, but --arch {arch} was given; drop --arch"
        )
    num_classes: int = checkpoint["num_classes"]
    input_shape = (
        int(checkpoint["input_shape"][0]),
        int(checkpoint["input_shape"][1]),
        int(checkpoint["input_shape"][2]),
    )
    dataset: str = checkpoint["dataset"]
    if info is not None and (info.num_classes, info.input_shape) != (num_classes, input_shape):
        raise ModelError(
            f"checkpoint {path} was trained on {dataset} with {num_classes} classes and inputs "
            f"{input_shape}, but dataset {info.name} has {info.num_classes} classes and inputs "
            f"{info.input_shape}; use the matching dataset or model"
        )
    if is_factory_arch(saved_arch):
        module = _build_factory(saved_arch, num_classes)
    else:
        # The normalization layer is not in the file: it is the training dataset's, by name.
        if dataset in DATASETS:
            mean, std = normalization(dataset)
        elif info is not None:
            mean, std = info.mean, info.std
        else:
            raise ModelError(
                f"checkpoint {path} names dataset {dataset!r}, which ancer does not know; "
                f"expected one of {', '.join(DATASETS)}"
            )
        module = _build_for(saved_arch, dataset, input_shape, num_classes, mean, std)
    _load_state(module, checkpoint["state_dict"], path, saved_arch)
    return LoadedModel(
        module=_freeze(module.to(device)),
        kind="checkpoint",
        path=path,
        sha256=digest,
        arch=saved_arch,
        dataset=dataset,
        num_classes=num_classes,
        input_shape=input_shape,
        norm=checkpoint["norm"],
        sigma=float(checkpoint["sigma"]),
        checkpoint=checkpoint,
    )


def _is_cohen_checkpoint(loaded: object) -> bool:
    return (
        isinstance(loaded, Mapping)
        and loaded.get("arch") in COHEN_ARCHITECTURES
        and _is_state_dict(loaded.get("state_dict"))
    )


def _from_cohen_checkpoint(
    checkpoint: Mapping[str, Any],
    path: Path,
    digest: str,
    device: torch.device,
    arch: str | None,
    info: DatasetInfo | None,
) -> LoadedModel:
    """Our model for a checkpoint of Cohen et al. (locuslab/smoothing ``train.py``).

    ``cifar_resnet20``/``cifar_resnet110`` become ``resnet20``/``resnet110`` (the same parameter
    names; our adaptive average pool equals their 8x8 pool on 32x32 inputs) with CIFAR-10's
    normalization; ``resnet50`` is torchvision's ResNet-50 with ImageNet's. The number of
    classes is read from the ``fc`` layer. ``1.``, ``1.module.`` and ``module.`` key prefixes
    are handled by :func:`_load_state`.
    """
    cohen_arch: str = checkpoint["arch"]
    ours, dataset, default_classes = COHEN_ARCHITECTURES[cohen_arch]
    if arch is not None and arch not in (ours, cohen_arch):
        raise ModelError(
            f"{path} is Cohen et al.'s {cohen_arch} checkpoint (our {ours}), but --arch {arch} "
            "was given; drop --arch"
        )
    state: Mapping[str, torch.Tensor] = checkpoint["state_dict"]
    fc = next(
        (tensor for key, tensor in state.items() if key.endswith("fc.weight") and tensor.ndim == 2),
        None,
    )
    num_classes = int(fc.shape[0]) if fc is not None else default_classes
    input_shape = info.input_shape if info is not None else _COHEN_INPUT_SHAPES[dataset]
    if info is not None and (info.num_classes != num_classes or info.input_shape[0] != 3):
        raise ModelError(
            f"{path} is Cohen et al.'s {cohen_arch} for {dataset} with {num_classes} classes "
            f"and 3 colour channels, but dataset {info.name} has {info.num_classes} classes and "
            f"inputs {info.input_shape}; use the matching dataset or model"
        )
    mean, std = normalization(dataset)
    module = _build_for(ours, dataset, input_shape, num_classes, mean, std)
    _load_state(module, state, path, f"{ours} (Cohen et al.'s {cohen_arch})")
    return LoadedModel(
        module=_freeze(module.to(device)),
        kind="checkpoint",
        path=path,
        sha256=digest,
        arch=ours,
        dataset=dataset,
        num_classes=num_classes,
        input_shape=input_shape,
        norm="l2",
        sigma=None,
        checkpoint=None,
    )


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


_KIND_NAMES = {
    "torchscript": "TorchScript archive",
    "export": "torch.export program",
}


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; check --model")
    if path.is_dir():
        raise ModelError(f"model file {path} is a directory; give the .pt file inside it")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ModelError(f"cannot read model file {path} ({error.strerror or error})") from error
    if size == 0:
        raise ModelError(f"model file {path} is empty (0 bytes); {_ACCEPTED_FILES}")


def _detect_file_kind(path: Path) -> str:
    """``torchscript``, ``export``, ``zip`` (torch.save) or ``other`` from the zip member names.

    Looking inside the archive avoids ``torch.load``, which would silently hand a TorchScript
    archive to ``torch.jit.load``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "other"
    # Members are "<archive name>/<member>"; drop the first component.
    members = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if any(
        member in ("archive_format", "serialized_exported_program.json")
        or (member.startswith("models/") and member.endswith(".json"))
        for member in members
    ):
        return "export"
    if "constants.pkl" in members or any(member.startswith("code/") for member in members):
        return "torchscript"
    return "zip"


_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")
_REFUSED_PHRASES = (
    "reduce for unrecognized function",
    "Can only create new object",
    "Can only build Tensor",
)


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with one-line ModelErrors."""
    try:
        with warnings.catch_warnings():
            # Legacy (non-zip) files pickled with protocol > 2 warn; the restricted unpickler
            # still guards them, so the warning only adds noise.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = _REFUSED_GLOBAL.search(text)
        # torch's unpickler stops at the first opcode it cannot handle (e.g. a protocol-4 FRAME)
        # before it meets the global, so look for foreign globals ourselves, without executing.
        foreign = found.group(1).rstrip(".") if found else _foreign_global(path)
        if foreign or any(phrase in text for phrase in _REFUSED_PHRASES):
            culprit = f" (it references {foreign})" if foreign else ""
            raise ModelError(
                f"model file {path} was refused: loading it would run code{culprit}; ancer loads "
                "models with torch.load(weights_only=True); if you trust the file, re-save just "
                "its state_dict (tensors) and load that"
            ) from error
        raise ModelError(
            f"model file {path} is corrupt or not a PyTorch file ({_torch_reason(error)}); "
            f"{_ACCEPTED_FILES}"
        ) from error
    except Exception as error:  # noqa: BLE001 - torch.load raises many types on bad bytes
        raise ModelError(
            f"model file {path} is corrupt or not a PyTorch file ({_torch_reason(error)}); "
            f"{_ACCEPTED_FILES}"
        ) from error


# Globals a weights-only file may legitimately name (tensor rebuilding, containers).
_TENSOR_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")
_PICKLE_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _foreign_global(path: Path) -> str | None:
    """The first global outside torch a pickle stream names, read with ``pickletools`` only.

    Scans the consecutive pickles of a legacy ``torch.save`` file; returns ``None`` for bytes
    that are not a pickle at all.
    """
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            while handle.read(1):
                handle.seek(-1, 1)
                for opcode, argument, _ in pickletools.genops(handle):
                    if opcode.name in _PICKLE_STRINGS:
                        strings.append(str(argument))
                        continue
                    if opcode.name in ("GLOBAL", "INST"):
                        name = str(argument).replace(" ", ".")
                    elif opcode.name == "STACK_GLOBAL":
                        name = ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
                    else:
                        continue
                    if not name.startswith(_TENSOR_GLOBAL_PREFIXES):
                        return name
    except Exception:  # noqa: BLE001 - garbage bytes end the scan
        return None
    return None


def _torch_reason(error: BaseException) -> str:
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(error).__name__}: unexpected end of file or bad data"
    reason = lines[0]
    # torch appends a long paragraph after the first sentence of a zip error.
    if "This is an internal miniz error" in reason:
        reason = reason.split("This is an internal miniz error")[0].strip().rstrip(".")
    return reason[:200]


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def _plain_state_dict(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    if _is_state_dict(loaded):
        return loaded  # type: ignore[return-value]
    if isinstance(loaded, Mapping) and _is_state_dict(loaded.get("state_dict")):
        return loaded["state_dict"]  # type: ignore[no-any-return]
    found = type(loaded).__name__
    if isinstance(loaded, Mapping):
        keys = ", ".join(str(key) for key in list(loaded)[:5])
        found = f"a dict with keys {keys}"
    raise ModelError(
        f"{path} holds {found}, not a state dict (names -> tensors); {_ACCEPTED_FILES}"
    )


def _state_candidates(
    state: Mapping[str, torch.Tensor],
) -> Iterator[dict[str, torch.Tensor]]:
    """The state dict as saved, then with DataParallel's ``module.`` prefix removed."""
    yield dict(state)
    for prefix, replacement in (("module.", ""), ("1.module.", "1.")):
        if state and all(key.startswith(prefix) for key in state):
            yield {replacement + key[len(prefix) :]: value for key, value in state.items()}


def _load_state(
    module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Load ``state`` strictly into ``module`` (or into its ``net`` when the keys lack ``1.``)."""
    targets = [module]
    if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], Normalize):
        targets.append(module[1])  # a state dict of the bare network, saved without the wrapper
    best: tuple[nn.Module, dict[str, torch.Tensor]] | None = None
    for target in targets:
        expected = target.state_dict()
        for candidate in _state_candidates(state):
            # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's counters; they are unused in
            # eval mode, so fill them rather than reject an otherwise exact match.
            for key, value in expected.items():
                if key.endswith("num_batches_tracked") and key not in candidate:
                    candidate[key] = torch.zeros_like(value)
            if set(candidate) == set(expected):
                best = (target, candidate)
                break
        if best is not None:
            break
    target, candidate = best if best is not None else (module, dict(state))
    problem = _state_mismatch(target.state_dict(), candidate)
    if problem is None:
        try:
            target.load_state_dict(candidate, strict=True)
            return
        except RuntimeError as error:
            problem = _first_line(error)
    raise ModelError(
        f"state dict in {path} does not fit arch {arch}: {problem}; check --arch and --dataset "
        "(or the checkpoint)"
    )


def _state_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> str | None:
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    parts: list[str] = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    for key, tensor in expected.items():
        if key in given and tuple(given[key].shape) != tuple(tensor.shape):
            parts.append(
                f"{key} has shape {tuple(given[key].shape)} in the file but "
                f"{tuple(tensor.shape)} in the model"
            )
            break
    return "; ".join(parts) if parts else None


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but remains a supported input format here.
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
            module = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # noqa: BLE001 - the TorchScript loader raises RuntimeError et al.
        raise ModelError(
            f"cannot load TorchScript archive {path} ({_torch_reason(error)}); re-save it with "
            "torch.jit.save"
        ) from error
    return module


class ExportedModule(nn.Module):
    """Wraps ``torch.export.load(path).module()``: ``(B, C, H, W)`` -> ``(B, K)``.

    An exported graph has its train/eval behaviour baked in and refuses ``.eval()``; this wrapper
    makes ``train``/``eval`` flip only its own flag so callers can treat it like any module.
    """

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)  # type: ignore[no-any-return]

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def _load_export(path: Path, device: torch.device) -> tuple[nn.Module, tuple[int, int, int] | None]:
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as error:  # noqa: BLE001 - deserialization raises many types
        raise ModelError(
            f"cannot load torch.export program {path} ({_torch_reason(error)}); re-save it with "
            "torch.export.save"
        ) from error
    input_shape = _exported_input_shape(program, path)
    try:
        module = module.to(device)
    except Exception as error:  # noqa: BLE001
        raise ModelError(
            f"cannot move torch.export program {path} to {device} ({_first_line(error)}); "
            "export it on that device"
        ) from error
    return ExportedModule(module), input_shape


def _exported_input_shape(program: Any, path: Path) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a single-image-batch exported program; its batch size must be dynamic."""
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        return None
    nodes = [node for node in program.graph.nodes if node.op == "placeholder"]
    value = next((n.meta.get("val") for n in nodes if n.name == user_inputs[0]), None)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 4:
        return None
    if isinstance(shape[0], int):
        raise ModelError(
            f"torch.export program {path} was exported with a fixed batch size of {shape[0]}; "
            "ancer feeds batches of any size: re-export with dynamic_shapes="
            "({0: torch.export.Dim('batch', min=1)},)"
        )
    if not all(isinstance(size, int) for size in shape[1:]):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])
