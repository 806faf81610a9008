"""Off-the-shelf diffusion denoisers: ``t*`` against the formula on a published DDPM schedule, the
one-step ``x0`` for each prediction type, and the one-line refusals (not a diffusers folder,
per-pixel noise levels, ``diffusers`` missing)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ancer_cli.errors import ModelError
from ancer_cli.models.diffusion import (
    DiffusionDenoiser,
    load_diffusion,
    matching_timestep,
    sha256_folder,
)

# The scheduler configuration of Ho et al.'s CIFAR-10 DDPM (google/ddpm-cifar10-32) as
# diffusers saves it: 1000 steps, betas linear from 1e-4 to 0.02.
DDPM_CIFAR10 = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}
SIGMAS = (0.12, 0.25, 0.5, 1.0)


def published_abar() -> np.ndarray:
    """``abar_t = prod_{s <= t} (1 - beta_s)`` of the schedule above, in float64."""
    betas = np.linspace(DDPM_CIFAR10["beta_start"], DDPM_CIFAR10["beta_end"], 1000)
    return np.cumprod(1.0 - betas)


def expected_t_star(abar: np.ndarray, sigma: float) -> int:
    """The formula: images in [-1, 1] carry noise s = 2 sigma; t* makes sqrt(abar_t) closest to
    1 / sqrt(1 + s^2)."""
    return int(np.argmin(np.abs(np.sqrt(abar) - 1.0 / math.sqrt(1.0 + (2.0 * sigma) ** 2))))


class ZeroNet(nn.Module):
    """A stand-in UNet whose prediction is zero (``diffusers``' output has ``.sample``)."""

    class Out:
        def __init__(self, sample: torch.Tensor) -> None:
            self.sample = sample

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> ZeroNet.Out:
        self.seen.append(t.clone())
        return ZeroNet.Out(torch.zeros_like(x))


def test_t_star_follows_the_formula_on_the_published_schedule() -> None:
    abar = published_abar()
    table = torch.tensor(abar)
    denoiser = DiffusionDenoiser(ZeroNet(), table)
    for sigma in SIGMAS:
        t, mismatch = matching_timestep(table, 2.0 * sigma)
        assert t == expected_t_star(abar, sigma)
        target = 1.0 / math.sqrt(1.0 + 4.0 * sigma**2)
        assert mismatch == pytest.approx(math.sqrt(abar[t]) - target, abs=1e-15)
        # no other timestep is closer
        assert abs(mismatch) <= np.min(np.abs(np.sqrt(abar) - target)) + 1e-15
        assert int(denoiser.timesteps(torch.tensor([sigma]))[0]) == t
    # more noise, a later timestep
    steps = [matching_timestep(table, 2.0 * s)[0] for s in SIGMAS]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_t_star_on_the_scheduler_diffusers_builds_from_the_configuration() -> None:
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler.from_config(DDPM_CIFAR10)
    abar = published_abar()
    for sigma in SIGMAS:
        assert matching_timestep(scheduler.alphas_cumprod, 2.0 * sigma)[0] == expected_t_star(
            abar, sigma
        )


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_one_step_x0_for_each_prediction_type(prediction: str) -> None:
    abar = torch.tensor(published_abar())
    net = ZeroNet()
    denoiser = DiffusionDenoiser(net, abar, prediction)
    z = torch.rand(4, 1, 8, 8)
    sigma = torch.tensor([0.12, 0.25, 0.5, 1.0]).view(4, 1, 1, 1)
    out = denoiser(z, sigma.expand_as(z).contiguous())
    steps = [matching_timestep(abar, 2.0 * float(s))[0] for s in sigma.flatten()]
    assert net.seen[0].tolist() == steps  # each sample its own t*
    a = abar[steps].float().view(4, 1, 1, 1)
    if prediction == "epsilon":  # x0 = x_t / sqrt(abar) = 2 z - 1: the image unchanged
        expected = z
    elif prediction == "sample":  # x0 = 0: mid-grey
        expected = torch.full_like(z, 0.5)
    else:  # x0 = sqrt(abar) x_t = abar (2 z - 1)
        expected = (a * (2 * z - 1) + 1) / 2
    assert torch.allclose(out, expected, atol=1e-6)


def test_per_pixel_noise_levels_are_refused() -> None:
    denoiser = DiffusionDenoiser(ZeroNet(), torch.tensor(published_abar()))
    z = torch.rand(2, 1, 8, 8)
    level = torch.full_like(z, 0.25)
    level[:, :, 0, 0] = 0.5
    with pytest.raises(ModelError, match="per-pixel") as error:
        denoiser(z, level)
    assert "\n" not in str(error.value)


def test_a_folder_without_a_diffusers_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelError, match="not a diffusers DDPM folder"):
        load_diffusion(tmp_path, torch.device("cpu"))


def test_without_diffusers_one_line_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(DDPM_CIFAR10))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ModelError) as error:
        load_diffusion(tmp_path, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and 'pip install -e ".[diffusion]"' in message


def test_the_folder_hash_covers_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    first = sha256_folder(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    second = sha256_folder(tmp_path)
    (tmp_path / "a").rename(tmp_path / "b")
    assert len({first, second, sha256_folder(tmp_path)}) == 3
