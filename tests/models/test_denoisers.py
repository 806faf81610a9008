"""Denoisers: the DnCNN, the noise-level map, the checkpoint format and the denoised classifier
(an identity denoiser changes no vote, with packed or one-at-a-time sampling)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.certify import CertifyConfig, certify_dataset
from ancer_cli.core.noise import Norm
from ancer_cli.data import load_dataset
from ancer_cli.errors import ModelError
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
from ancer_cli.thetas import fixed_theta, open_thetas

CONFIG = CertifyConfig(n_selection=20, n_estimation=200, batch_size=1000, seed=0)


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


def rows(model: nn.Module, thetas, indices: list[int]) -> list[tuple]:
    data = load_dataset("digits", "test")
    found = certify_dataset(model, data, indices, thetas, CONFIG, torch.device("cpu"))
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
    assert rows(denoised, thetas, indices) == rows(classifier, thetas, indices)
