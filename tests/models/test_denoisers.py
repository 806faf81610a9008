"""Denoisers: the DnCNN, the noise-level map, the checkpoint format and the denoised classifier
(an identity denoiser changes no vote, with packed or one-at-a-time sampling)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.certify import certify_dataset
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.optimize.config import AncerConfig, IsotropicSearchConfig
from ancer_cli.core.optimize.published import optimize_ancer
from ancer_cli.core.optimize.search import search_isotropic
from ancer_cli.data import load_dataset
from ancer_cli.errors import ModelError
from ancer_cli.inputs import in_memory_inputs
from ancer_cli.models import load_model
from ancer_cli.models.denoisers import (
    DenoisedClassifier,
    DnCNN,
    inputs_per_theta,
    load_denoiser,
    noise_level,
    read_denoiser,
    save_denoiser,
)
from ancer_cli.settings import CertifyConfig
from ancer_cli.theta_sources import fixed_theta, open_thetas

CONFIG = CertifyConfig(Sampling(20, 200, 0.001, 1000))


class Identity(nn.Module):
    """A denoiser that returns the noisy image unchanged."""

    def forward(self, z: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        assert level.shape == z.shape
        return z


class Shrinking(nn.Module):
    """A broken denoiser: its output has half the image's width."""

    def forward(self, z: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return z[..., ::2]


def save_random_denoiser(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_denoiser(
        path, model=DnCNN(1, 3, 4), depth=3, width=4, dataset="digits",
        input_shape=(1, 8, 8), norm="l2", sigma_max=1.0, epoch=1, optimizer_state=None,
    )  # fmt: skip
    return path


def test_dncnn_keeps_the_shape_and_the_unit_interval() -> None:
    z = torch.randn(5, 3, 6, 7) * 2
    with torch.no_grad():
        out = DnCNN(3, 4, 8)(z, torch.full_like(z, 0.5))
    assert out.shape == z.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_noise_level_is_the_standard_deviation_for_both_norms() -> None:
    assert noise_level(0.5, Norm.l2, (1, 2, 2)) == 0.5
    assert noise_level(math.sqrt(3.0) * 0.5, Norm.l1, (1, 2, 2)) == pytest.approx(0.5)
    level = noise_level(torch.tensor(0.3), Norm.l2, (1, 2, 2))
    assert isinstance(level, torch.Tensor) and level.shape == (1, 2, 2)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = save_random_denoiser(tmp_path / "d.pt", seed=1)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format"] == "ancer-denoiser/1"
    loaded = load_denoiser(path, torch.device("cpu"))
    assert loaded.input_shape == (1, 8, 8) and len(loaded.sha256) == 64
    z = torch.rand(2, 1, 8, 8)
    level = torch.full_like(z, 0.25)
    net = DnCNN(1, 3, 4)
    net.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.equal(loaded.module(z, level), net(z, level))


def test_a_model_file_is_not_a_denoiser(model_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a denoiser"):
        read_denoiser(model_path)


def test_a_denoiser_of_another_shape_is_a_one_line_error(model_path: Path) -> None:
    classifier = load_model(model_path, torch.device("cpu")).module
    model = DenoisedClassifier(classifier, Shrinking(), Norm.l2, theta=0.25, fixed=True)
    with pytest.raises(ModelError) as error:
        model(torch.rand(3, 1, 8, 8))
    message = str(error.value)
    assert "\n" not in message
    assert "(3, 1, 8, 4)" in message and "(3, 1, 8, 8)" in message


def rows(model: nn.Module, thetas, indices: list[int], classifier: nn.Module) -> list[tuple]:
    """Certify rows of ``model`` (float noise, seed 0); ``classifier`` is checked on the data."""
    data = load_dataset("digits", "test")
    inputs = in_memory_inputs(classifier, data, thetas, indices=indices, sound=False)
    inputs = dataclasses.replace(inputs, model=model)
    seeds = dict.fromkeys(indices, 0)
    found = certify_dataset(inputs, indices, CONFIG, seeds, torch.device("cpu"), None)
    return [(r.idx, r.predict, r.radius, r.radius_proxy, r.min_sigma) for r in found]


@pytest.mark.parametrize("per_input", [False, True])
def test_identity_denoiser_gives_the_rows_of_no_denoiser(
    model_path: Path, thetas_dir: Path, per_input: bool
) -> None:
    classifier = load_model(model_path, torch.device("cpu")).module
    data = load_dataset("digits", "test")
    if per_input:  # ANCER thetas: one input per forward pass with the denoiser
        thetas = open_thetas(
            thetas_dir, data, norm=Norm.l2, model_sha256=None, device=torch.device("cpu")
        ).theta
        indices = [0, 1, 2, 3]
    else:  # a fixed sigma: inputs keep sharing forward passes
        thetas = fixed_theta(0.25)
        indices = list(range(8))
    denoised = DenoisedClassifier(
        classifier, Identity(), Norm.l2, theta=None if per_input else 0.25, fixed=not per_input
    )
    assert inputs_per_theta(denoised, 8) == (1 if per_input else 8)
    assert rows(denoised, thetas, indices, classifier) == rows(
        classifier, thetas, indices, classifier
    )


class Recording(nn.Module):
    """An identity denoiser that keeps every noise-level map it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        assert level.shape == z.shape
        self.levels.append(level.detach().clone())
        return z


def test_each_input_of_a_pass_gets_its_own_noise_level() -> None:
    recorder = Recording()
    model = DenoisedClassifier(nn.Flatten(), recorder, Norm.l2)
    tell_thetas(model, [0.1, torch.full((1, 2, 2), 0.2), 0.3])  # input-major, 2 samples each
    model(torch.zeros(6, 1, 2, 2))
    assert recorder.levels[-1][:, 0, 0, 0].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    per_pixel = torch.arange(8.0).view(2, 1, 2, 2) / 10  # a tensor of thetas: per-pixel maps
    tell_thetas(model, per_pixel)
    model(torch.zeros(4, 1, 2, 2))
    assert torch.equal(recorder.levels[-1], per_pixel.repeat_interleave(2, dim=0))
    with pytest.raises(RuntimeError, match="cannot hold 2 inputs"):
        model(torch.zeros(3, 1, 2, 2))
    l1 = DenoisedClassifier(nn.Flatten(), recorder, Norm.l1)
    tell_thetas(l1, [math.sqrt(3.0) * 0.5])
    l1(torch.zeros(2, 1, 2, 2))
    assert torch.allclose(recorder.levels[-1], torch.full((2, 1, 2, 2), 0.5))
    fixed = DenoisedClassifier(nn.Flatten(), recorder, Norm.l2, theta=0.25, fixed=True)
    tell_thetas(fixed, [0.9, 0.1])  # a fixed sigma ignores announcements
    fixed(torch.zeros(2, 1, 2, 2))
    assert torch.equal(recorder.levels[-1], torch.full((2, 1, 2, 2), 0.25))


def test_the_map_carries_the_gradient_of_theta() -> None:
    class Scale(nn.Module):
        def forward(self, z: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            return z * level

    model = DenoisedClassifier(nn.Flatten(), Scale(), Norm.l2)
    theta = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1).requires_grad_(True)
    tell_thetas(model, theta)
    model(torch.ones(4, 1, 2, 2)).sum().backward()
    assert theta.grad is not None and theta.grad.flatten().tolist() == [8.0, 8.0]


def test_optimizers_tell_the_denoiser_the_theta_they_try(model_path: Path) -> None:
    """An identity denoiser changes no theta either optimizer finds, and it hears exactly the
    thetas being tried: the start first, one value per input, input-major."""
    classifier = load_model(model_path, torch.device("cpu")).module
    data = load_dataset("digits", "test")
    x = torch.stack([data.dataset[i][0] for i in range(3)])
    start = torch.tensor([0.2, 0.25, 0.3])

    def generators(stream: Stream) -> list[torch.Generator]:
        return [input_generator(0, i, torch.device("cpu"), stream) for i in range(3)]

    recorder = Recording()
    denoised = DenoisedClassifier(classifier, recorder, Norm.l2)
    config = IsotropicSearchConfig(samples=64)
    noise = Noise(Norm.l2)
    plain = search_isotropic(classifier, x, start, noise, config, generators(Stream.isotropic))
    heard = search_isotropic(denoised, x, start, noise, config, generators(Stream.isotropic))
    assert torch.equal(plain.theta, heard.theta)
    first = recorder.levels[0][:, 0, 0, 0].view(3, -1)
    assert torch.allclose(first, start.view(3, 1).expand_as(first))
    recorder.levels.clear()
    ancer = AncerConfig(iterations=3, samples=8)
    iso = heard.theta
    plain_a = optimize_ancer(classifier, x, iso, Norm.l2, ancer, generators(Stream.ancer))
    heard_a = optimize_ancer(denoised, x, iso, Norm.l2, ancer, generators(Stream.ancer))
    assert torch.equal(plain_a, heard_a)
    assert torch.allclose(recorder.levels[0][::8], iso.view(3, 1, 1, 1).expand(3, 1, 8, 8))
