"""Speed options of the base classifier (core/precision.py)."""

import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from ancer_cli.core.choices import Norm, Precision, Sampling
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import input_generator
from ancer_cli.core.precision import (
    AutocastClassifier,
    precision_dtype,
    prepare_model,
    speed_options_record,
)
from ancer_cli.core.smoothing import certify
from ancer_cli.data import dataset_info
from ancer_cli.models import build_model


class InputDtype(nn.Module):
    """Records the dtype of the batch it receives and of its first convolution's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.dtype)
        hidden = self.conv(x)
        self.seen.append(hidden.dtype)
        return self.fc(hidden.flatten(1))


def _digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn", dataset_info("digits")).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_defaults_return_the_model_itself():
    model = _digits_cnn()
    assert prepare_model(model) is model
    assert prepare_model(model, "fp32", channels_last=False) is model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_computes_in_low_precision_and_returns_fp32(precision):
    inner = InputDtype()
    model = prepare_model(inner, precision)
    assert isinstance(model, AutocastClassifier)
    logits = model(torch.rand(5, 1, 8, 8))
    # the noisy batch arrives untouched in fp32; the convolution runs in low precision
    assert inner.seen == [torch.float32, precision_dtype(precision)]
    assert logits.dtype == torch.float32 and logits.shape == (5, 3)


def test_bf16_logits_are_close_and_certificates_are_exact_counts():
    model = _digits_cnn()
    low = prepare_model(_digits_cnn(), Precision.bf16)
    x = torch.rand(64, 1, 8, 8)
    assert torch.allclose(low(x), model(x), atol=0.05, rtol=0.05)
    law, sampling = NoiseLaw(Norm.l2, 0.25), Sampling(50, 500, 0.001, 128)
    cert = certify(low, x[0], law, sampling, input_generator(0, 0, "cpu"))
    assert 0 <= cert.n_a <= 500 and cert.n_estimation == 500
    reference = certify(model, x[0], law, sampling, input_generator(0, 0, "cpu"))
    # same noise, a slightly different base classifier: nearly the same votes
    assert abs(cert.n_a - reference.n_a) <= 25


def test_low_precision_keeps_gradients_for_optimization():
    model = prepare_model(_digits_cnn(), "bf16")
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    (gradient,) = torch.autograd.grad(torch.softmax(model(x), 1)[:, 0].sum(), x)
    assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all()


def test_channels_last_converts_weights_in_place_and_keeps_the_function():
    model = _digits_cnn()
    x = torch.rand(32, 1, 8, 8)
    expected = model(x)
    converted = prepare_model(model, "fp32", channels_last=True)
    assert converted is model
    conv = model[1].features[2]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(converted(x), expected, atol=1e-5, rtol=1e-5)


def test_records_and_choices():
    assert speed_options_record() == {"precision": "fp32", "channels_last": False}
    assert speed_options_record("bf16", True) == {"precision": "bf16", "channels_last": True}
    assert precision_dtype("fp16") is torch.float16
    with pytest.raises(ValueError):
        Precision("fp8")


_FAULTS = """
import resource, sys, torch
from ancer_cli.runtime import retain_freed_memory
import ancer_cli.core.smoothing  # the kernel, as a run loads it (its libraries start threads)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if sys.argv[1] == "retain":
    assert retain_freed_memory()
for _ in range(2):
    torch.ones(2**24).sum()  # 64 MiB: served by mmap and given back, unless retained
before = faults()
torch.ones(2**24).sum()
print(faults() - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_retain_freed_memory_stops_page_faults_on_reuse():
    def reuse_faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
        )
        return int(done.stdout.split()[-1])

    # 16,384 pages of 4 KiB are faulted in again by default; the kernel's own proactive reclaim
    # (DAMON on some hosts) may occasionally take retained pages back, so allow three tries
    assert max(reuse_faults("default") for _ in range(2)) > 10_000
    assert min(reuse_faults("retain") for _ in range(3)) < 1_000
