"""Shared helpers of these tests."""

from __future__ import annotations

import torch
from torch import nn

from ancer_cli.data import DatasetInfo, dataset_info

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


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm statistic non-default values, so a load is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2 + 0.9)
    return model.eval()
