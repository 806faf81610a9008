"""Built-in architectures: ``Sequential(Normalize(mean, std), net)`` for each dataset, as Cohen et al. lay them out.

Every model maps a batch ``(B, C, H, W)`` with values in ``[0, 1]`` to logits ``(B, K)``. The
normalization constants are non-persistent buffers, so a built-in model's state dict keys are
``1.*``, the keys of Cohen et al.'s checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ancer_cli.data import DatasetInfo
from ancer_cli.errors import ModelError
from ancer_cli.models.factory import build_factory

ARCHITECTURES: tuple[str, ...] = (
    "cnn",
    "resnet18",
    "resnet20",
    "resnet110",
    "wideresnet40",
    "resnet50",
)


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


def build_for(
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
        return build_factory(arch, info.num_classes)
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
