"""Off-the-shelf diffusion models as denoisers (Carlini et al., ICLR 2023): a local folder of a
``diffusers`` DDPM model -- a ``UNet2DModel`` and its scheduler configuration, as
``save_pretrained`` writes them -- denoises a noisy image in one step.

Images in ``[0, 1]`` map to ``[-1, 1]``, so noise of standard deviation ``sigma`` becomes noise of
``s = 2 sigma``. The forward process at timestep ``t`` is ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
eps``; scaling the noisy image ``x0 + s eps`` by ``sqrt(abar_t)`` matches it when
``sqrt(abar_t) s = sqrt(1 - abar_t)``, i.e. ``sqrt(abar_t) = 1 / sqrt(1 + s^2)``. The timestep
``t*`` whose ``sqrt(abar_t)`` is closest to that (ties to the smaller ``t``) is used; the UNet's
prediction at ``t*`` gives ``x0`` (epsilon, sample or v prediction), clipped to ``[-1, 1]`` and
mapped back. ``t*`` and the mismatch ``sqrt(abar_t*) - 1 / sqrt(1 + s^2)`` are recorded.

The noise level must be the same for every pixel of an input (fixed sigma or isotropic thetas);
``diffusers`` is an optional extra and nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.errors import ModelError

INSTALL_HINT = 'pip install -e ".[diffusion]"'
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def matching_timestep(alphas_cumprod: torch.Tensor, s: float) -> tuple[int, float]:
    """``(t*, mismatch)`` for noise std ``s`` in ``[-1, 1]`` units: ``t*`` minimizes
    ``|sqrt(abar_t) - 1 / sqrt(1 + s^2)|`` (the smallest such ``t``), the mismatch is
    ``sqrt(abar_t*) - 1 / sqrt(1 + s^2)``."""
    roots = alphas_cumprod.double().sqrt()
    target = 1.0 / math.sqrt(1.0 + float(s) ** 2)
    t = int(torch.argmin((roots - target).abs()))
    return t, float(roots[t]) - target


class DiffusionDenoiser(nn.Module):
    """``(z, noise_level) -> image``: one-step DDPM denoising at the matching timestep.

    ``noise_level`` ``(B, C, H, W)`` is the noise std of every pixel, constant within a sample;
    each sample gets its own ``t*``."""

    def __init__(
        self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ModelError(
                f"diffusion scheduler prediction_type {prediction_type!r} is not supported "
                f"(one of {', '.join(PREDICTION_TYPES)})"
            )
        self.unet = unet
        self.prediction_type = prediction_type
        self.alphas_cumprod: torch.Tensor
        self.register_buffer("alphas_cumprod", alphas_cumprod.double().clone())

    def timesteps(self, std: torch.Tensor) -> torch.Tensor:
        """``t*`` for each noise std (pixel units, ``(B,)``)."""
        roots = self.alphas_cumprod.sqrt()
        target = 1.0 / torch.sqrt(1.0 + (2.0 * std.double()) ** 2)
        values, inverse = torch.unique(target, return_inverse=True)
        best = torch.argmin((roots.unsqueeze(0) - values.unsqueeze(1)).abs(), dim=1)
        return best[inverse]

    def forward(self, z: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        flat = noise_level.detach().flatten(1)
        std = flat[:, 0]
        if not torch.equal(flat.amax(dim=1), flat.amin(dim=1)):
            raise ModelError(
                "a diffusion denoiser takes the same noise level for every pixel (fixed sigma "
                "or isotropic thetas), not per-pixel (ANCER) thetas"
            )
        t = self.timesteps(std)
        abar = self.alphas_cumprod[t].to(z.dtype).view(-1, 1, 1, 1)
        x_t = abar.sqrt() * (2.0 * z - 1.0)
        output = self.unet(x_t, t.to(z.device)).sample
        if output.shape[1] == 2 * z.shape[1]:  # a learned variance in the second half
            output = output[:, : z.shape[1]]
        if self.prediction_type == "epsilon":
            x0 = (x_t - (1.0 - abar).sqrt() * output) / abar.sqrt()
        elif self.prediction_type == "sample":
            x0 = output
        else:  # v_prediction
            x0 = abar.sqrt() * x_t - (1.0 - abar).sqrt() * output
        return ((x0.clamp(-1.0, 1.0) + 1.0) / 2.0).to(z.dtype)


def is_diffusion_folder(path: Path) -> bool:
    return Path(path).is_dir()


def sha256_folder(path: Path) -> str:
    """SHA-256 over every file of the folder: relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _locate(path: Path) -> tuple[Path, Path]:
    """The UNet folder and the scheduler configuration file of a diffusers model folder."""
    candidates = [
        (path / "unet", path / "scheduler" / "scheduler_config.json"),
        (path, path / "scheduler_config.json"),
        (path, path / "scheduler" / "scheduler_config.json"),
    ]
    for unet, scheduler in candidates:
        if (unet / "config.json").is_file() and scheduler.is_file():
            return unet, scheduler
    raise ModelError(
        f"{path} is not a diffusers DDPM folder: expected unet/config.json and "
        "scheduler/scheduler_config.json (as DDPMPipeline.save_pretrained writes them)"
    )


def load_diffusion(path: Path, device: torch.device) -> tuple[DiffusionDenoiser, dict[str, Any]]:
    """The one-step denoiser of the diffusers folder ``path`` and what it is (``in_channels``,
    ``sample_size``, ``timesteps``, ``prediction_type``); one-line ModelErrors."""
    path = Path(path)
    unet_folder, scheduler_file = _locate(path)
    try:
        import diffusers
        from diffusers.utils import logging as diffusers_logging
    except ImportError as error:
        raise ModelError(
            f"{path} is a diffusers model folder; reading it needs the diffusion extra: "
            f"{INSTALL_HINT}"
        ) from error
    diffusers_logging.set_verbosity_error()
    try:
        config = json.loads(scheduler_file.read_text())
        scheduler = diffusers.DDPMScheduler.from_config(config)
        unet = diffusers.UNet2DModel.from_pretrained(
            str(unet_folder), local_files_only=True, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot load the diffusion model in {path}: {first}") from error
    prediction = str(config.get("prediction_type", "epsilon"))
    module = DiffusionDenoiser(unet, scheduler.alphas_cumprod, prediction).to(device).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    info = {
        "in_channels": int(unet.config.in_channels),
        "sample_size": unet.config.sample_size,
        "timesteps": len(scheduler.alphas_cumprod),
        "prediction_type": prediction,
    }
    return module, info


def timestep_record(module: DiffusionDenoiser, stds: Iterable[float]) -> dict[str, Any]:
    """What the sidecar records of the timesteps used for the noise stds ``stds`` (pixel
    units): ``t*``, ``sqrt(abar_t*)``, the target ``1 / sqrt(1 + s^2)``, the mismatch and the
    noise std ``t*`` stands for for one std; the range of ``t*`` and the largest mismatch for several."""
    table = {float(std): matching_timestep(module.alphas_cumprod, 2.0 * float(std)) for std in stds}
    if len(table) == 1:
        ((std, (t, mismatch)),) = table.items()
        target = 1.0 / math.sqrt(1.0 + (2.0 * std) ** 2)
        abar = float(module.alphas_cumprod[t])
        return {
            "sigma": std,
            "t_star": t,
            "sqrt_alpha_bar": target + mismatch,
            "target": target,
            "mismatch": mismatch,
            # the noise std t* is trained for, in pixel units: sqrt((1 - abar) / abar) / 2
            "sigma_at_t_star": math.sqrt((1.0 - abar) / abar) / 2.0,
            "prediction_type": module.prediction_type,
        }
    steps = [t for t, _ in table.values()]
    return {
        "sigmas": len(table),
        "t_star_min": min(steps),
        "t_star_max": max(steps),
        "max_abs_mismatch": max((abs(m) for _, m in table.values()), default=0.0),
        "prediction_type": module.prediction_type,
    }
