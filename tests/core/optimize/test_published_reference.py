"""ANCER optimization against the original (``benchmarks/reference.py``): the same thetas when
both are fed the same noise, up to the float rounding of the geometric mean."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.optimize import AncerConfig, optimize_ancer
from ancer_cli.data import dataset_info
from ancer_cli.models import build_model

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.fixture(scope="module")
def reference():
    """``benchmarks/reference.py``, loaded from its file (the benchmarks are no package)."""
    spec = importlib.util.spec_from_file_location("reference", BENCHMARKS / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_and_package_find_the_same_thetas_with_the_same_noise(reference):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    soft = nn.Sequential(model, nn.Softmax(dim=1))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    theta_iso = torch.tensor([0.2, 0.3])
    config = AncerConfig(iterations=6, samples=8)
    # the model's weights still require gradients: the package computes none and keeps .grad
    package = optimize_ancer(
        model,
        x,
        theta_iso,
        "l2",
        config,
        [input_generator(0, i, "cpu", Stream.ancer) for i in range(2)],
    )
    assert all(parameter.grad is None for parameter in model.parameters())
    streams = [input_generator(0, i, "cpu", Stream.ancer) for i in range(2)]

    def same_noise(new_batch, theta_repeated):
        eps = torch.cat([torch.randn((8, 1, 8, 8), generator=stream) for stream in streams])
        return eps * theta_repeated

    ref = reference.optimize_ancer(
        soft,
        x,
        "l2",
        config.lr,
        theta_iso.view(-1, 1, 1, 1).expand_as(x).contiguous(),
        config.iterations,
        config.samples,
        config.kappa,
        same_noise,
    )
    assert torch.allclose(package, ref, rtol=1e-5, atol=0)
    start = theta_iso.view(-1, 1, 1, 1)
    assert (package >= start).all() and (package > start).any()  # projected, and it moved


@pytest.mark.parametrize("device_name", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_same_thetas_as_the_reference_on_the_benchmarked_cnn(reference, device_name):
    """The benchmark's digits cnn (random weights): the package's model frozen, the reference's
    soft classifier (the same weights) still requiring gradients, as the reference runs it.
    On CUDA in float64, where convolutions may otherwise run in TF32."""
    device = torch.device(device_name)
    dtype = torch.float64 if device.type == "cuda" else torch.float32
    info = dataset_info("digits")
    shape = tuple(info.input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = build_model("cnn", info).to(device=device, dtype=dtype).eval()
    soft_model = nn.Sequential(copy.deepcopy(base), nn.Softmax(dim=1)).eval()
    model = base.requires_grad_(False)
    batch, samples = 2, 8
    generator = torch.Generator(device=device).manual_seed(2)
    x = torch.rand((batch, *shape), device=device, generator=generator, dtype=dtype)
    theta_iso = torch.full((batch,), 0.25, device=device, dtype=dtype)
    config = AncerConfig(iterations=5, samples=samples)
    package = optimize_ancer(
        model,
        x,
        theta_iso,
        "l2",
        config,
        [input_generator(0, i, device, Stream.ancer) for i in range(batch)],
    )
    streams = [input_generator(0, i, device, Stream.ancer) for i in range(batch)]

    def same_noise(new_batch: torch.Tensor, theta_repeated: torch.Tensor) -> torch.Tensor:
        eps = torch.cat(
            [
                torch.randn((samples, *shape), device=device, generator=stream, dtype=dtype)
                for stream in streams
            ]
        )
        return eps * theta_repeated

    ref = reference.optimize_ancer(
        soft_model,
        x,
        "l2",
        config.lr,
        theta_iso.view(-1, 1, 1, 1).expand_as(x).contiguous(),
        config.iterations,
        samples,
        config.kappa,
        same_noise,
    )
    assert float(((package - ref).abs() / ref.abs()).max()) < 1e-4
