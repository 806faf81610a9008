"""Per-input optimization of the smoothing parameter theta (SPEC section 1).

* Isotropic data-dependent smoothing (Alfarra et al. 2022): scalar theta per input, plain
  gradient ascent on ``theta/2 (Phi^-1(p1) - Phi^-1(p2))`` (l2) or ``theta (p1 - p2)`` (l1).
* ANCER (Eiras et al. 2022): theta of the input's shape, Adam on
  ``G geomean(theta) + kappa G min(theta)`` with ``G = Phi^-1(p1) - Phi^-1(p2)`` (l2) or ``p1 - p2``
  (l1), projecting ``theta >= theta_iso`` after every step.

``p1 >= p2`` are the two largest entries of the Monte Carlo estimate of the smoothed soft
classifier, ``mean_j softmax(f(x + theta * eps_j))``, with fresh noise every iteration
(reparameterization). Many inputs are optimized together; each input draws its noise from its own
generator, so its theta does not depend on which inputs share its batch.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import (
    ISOTROPIC_SUBFOLDER,
    MANIFEST_NAME,
    THETA_FORMAT,
    check_resumable,
    load_theta,
    save_theta,
    theta_path,
    utc_now,
    write_json,
)
from ancer_cli.core.noise import Norm, Stream, draw_base_noise_, input_generator, theta_from_sigma
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.data import LoadedData

P_CLAMP = (1e-3, 1 - 1e-3)
THETA_FLOOR = 1e-4

Progress = Callable[[int, int, float], None]
"""``progress(iteration, iterations, mean_objective)`` after every step."""


@dataclass(frozen=True)
class IsotropicConfig:
    """Isotropic data-dependent optimization; the defaults are the command's defaults."""

    iterations: int = 900
    lr: float = 0.04
    samples: int = 100


@dataclass(frozen=True)
class AncerConfig:
    """ANCER anisotropic optimization; the defaults are the command's defaults."""

    iterations: int = 100
    lr: float = 0.04
    samples: int = 100
    kappa: float = 2.0


def _phi_inv(p: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)


def smoothed_top_two(
    model: nn.Module,
    x: torch.Tensor,
    theta: torch.Tensor,
    norm: Norm | str,
    samples: int,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two largest entries ``p1 >= p2`` of the smoothed soft classifier, differentiable in theta.

    Args:
        x: inputs ``(B, C, H, W)``; theta: ``(B, 1, 1, 1)`` (isotropic) or ``(B, C, H, W)``.
        generators: one per input, on ``x``'s device.

    Returns:
        ``p1, p2``, each of shape ``(B,)``.
    """
    batch = x.shape[0]
    eps = torch.empty((batch, samples, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for i, generator in enumerate(generators):
        draw_base_noise_(eps[i], norm, generator)
    noisy = (x.unsqueeze(1) + theta.unsqueeze(1) * eps).flatten(0, 1)
    probabilities = torch.softmax(model(noisy), dim=1).view(batch, samples, -1).mean(dim=1)
    top = probabilities.topk(2, dim=1).values
    return top[:, 0], top[:, 1]


def margin_gap(p1: torch.Tensor, p2: torch.Tensor, norm: Norm | str) -> torch.Tensor:
    """``G``: ``Phi^-1(p1) - Phi^-1(p2)`` with p clamped to [0.001, 0.999] (l2), or ``p1 - p2`` (l1)."""
    if Norm(norm) is Norm.l2:
        low, high = P_CLAMP
        return _phi_inv(p1.clamp(low, high)) - _phi_inv(p2.clamp(low, high))
    return p1 - p2


def isotropic_objective(
    theta: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, norm: Norm | str
) -> torch.Tensor:
    """Certified radius proxy of isotropic smoothing: ``theta/2 G`` (l2), ``theta G`` (l1); ``(B,)``."""
    gap = margin_gap(p1, p2, norm)
    return theta.flatten() * gap / 2 if Norm(norm) is Norm.l2 else theta.flatten() * gap


def ancer_objective(
    theta: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, norm: Norm | str, kappa: float
) -> torch.Tensor:
    """``G geomean(theta) + kappa G min(theta)`` per input, ``(B,)``; geomean in log space."""
    gap = margin_gap(p1, p2, norm)
    flat = theta.flatten(1)
    geomean = torch.exp(torch.log(flat).mean(dim=1))
    return gap * geomean + kappa * gap * flat.min(dim=1).values


def optimize_isotropic(
    model: nn.Module,
    x: torch.Tensor,
    theta0: torch.Tensor,
    norm: Norm | str,
    config: IsotropicConfig,
    generators: Sequence[torch.Generator],
    progress: Progress | None = None,
) -> torch.Tensor:
    """Per-input scalar theta by gradient ascent (Alfarra et al. 2022, Algorithm 1).

    Args:
        x: ``(B, C, H, W)``; theta0: ``(B,)`` starting values.

    Returns:
        ``(B,)`` optimized theta, every entry ``>= THETA_FLOOR``.
    """
    theta = theta0.detach().clone().to(x.device, x.dtype).view(-1, 1, 1, 1)
    for iteration in range(1, config.iterations + 1):
        theta.requires_grad_(True)
        p1, p2 = smoothed_top_two(model, x, theta, norm, config.samples, generators)
        objective = isotropic_objective(theta, p1, p2, norm)
        (gradient,) = torch.autograd.grad(objective.sum(), theta)
        with torch.no_grad():
            # the reference let theta go negative; a floor keeps the noise meaningful
            theta = (theta + config.lr * gradient).clamp_min(THETA_FLOOR)
        if progress is not None:
            progress(iteration, config.iterations, float(objective.detach().mean()))
    return theta.detach().flatten()


def optimize_ancer(
    model: nn.Module,
    x: torch.Tensor,
    theta_iso: torch.Tensor,
    norm: Norm | str,
    config: AncerConfig,
    generators: Sequence[torch.Generator],
    progress: Progress | None = None,
) -> torch.Tensor:
    """Per-input, per-pixel theta by projected Adam ascent (ANCER, Eiras et al. 2022, Eq. 4).

    Args:
        x: ``(B, C, H, W)``; theta_iso: ``(B,)`` isotropic thetas, the start and the lower bound.

    Returns:
        ``(B, C, H, W)`` anisotropic thetas, every entry ``>= theta_iso`` of its input.
    """
    floor = theta_iso.detach().to(x.device, x.dtype).view(-1, 1, 1, 1).expand_as(x).contiguous()
    theta = floor.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    for iteration in range(1, config.iterations + 1):
        optimizer.zero_grad(set_to_none=True)
        p1, p2 = smoothed_top_two(model, x, theta, norm, config.samples, generators)
        objective = ancer_objective(theta, p1, p2, norm, config.kappa)
        (-objective.sum()).backward()
        optimizer.step()
        with torch.no_grad():
            torch.maximum(theta, floor, out=theta)
        if progress is not None:
            progress(iteration, config.iterations, float(objective.detach().mean()))
    return theta.detach()


class Method(str, enum.Enum):
    isotropic = "isotropic"
    ancer = "ancer"


@dataclass(frozen=True)
class OptimizeJob:
    """Everything that decides the thetas an optimize run writes."""

    method: Method
    norm: Norm
    sigma: float
    isotropic: IsotropicConfig = IsotropicConfig()
    ancer: AncerConfig = AncerConfig()
    batch_size: int = 50
    seed: int = 0


@dataclass(frozen=True)
class OptimizeSummary:
    optimized: int
    kept: int
    seconds: float
    mean_min_theta: float
    mean_geomean_theta: float


OptimizeProgress = Callable[[str, int, int, float], None]
"""``progress(stage, inputs_done, iteration, mean_objective)``; stage is isotropic or ancer."""


def run_optimize(
    model: nn.Module,
    data: LoadedData,
    indices: list[int],
    job: OptimizeJob,
    device: torch.device,
    out: Path,
    record: dict[str, Any],
    resume: bool = False,
    isotropic_thetas: Callable[[int], torch.Tensor] | None = None,
    progress: OptimizeProgress | None = None,
) -> OptimizeSummary:
    """Optimize theta for ``indices`` and write ``out/theta_{split}_{idx}.pt`` plus manifests.

    For ``Method.ancer`` the isotropic stage goes to ``out/isotropic/`` unless
    ``isotropic_thetas`` supplies it. With ``resume``, inputs whose theta file exists are kept
    (files are written atomically, so an existing file is complete); a stored isotropic stage is
    reused. Model weights must already be frozen.
    """
    began = time.perf_counter()
    split = data.split
    out.mkdir(parents=True, exist_ok=True)
    iso_folder = out if job.method is Method.isotropic else out / ISOTROPIC_SUBFOLDER
    run_iso_stage = job.method is Method.isotropic or isotropic_thetas is None
    folders = [out] + ([iso_folder] if run_iso_stage and iso_folder != out else [])
    manifests = {folder: _manifest(record, job, folder == out) for folder in folders}
    for folder, manifest in manifests.items():
        folder.mkdir(exist_ok=True)
        if resume and (folder / MANIFEST_NAME).exists():
            check_resumable(folder / MANIFEST_NAME, manifest["arguments"], str(folder))
        write_json(folder / MANIFEST_NAME, {**manifest, "complete": False})
    todo = [i for i in indices if not (resume and theta_path(out, split, i).exists())]
    kept = len(indices) - len(todo)
    done = 0
    for start in range(0, len(todo), job.batch_size):
        batch = todo[start : start + job.batch_size]
        x = torch.stack([data.dataset[i][0] for i in batch]).to(device, torch.float32)

        def report(stage: str, finished: int = kept + done) -> Progress | None:
            if progress is None:
                return None
            callback = progress
            return lambda it, _total, objective: callback(stage, finished, it, objective)

        if run_iso_stage:
            theta_iso = _isotropic_stage(
                model, x, batch, job, device, iso_folder, split, resume, report("isotropic")
            )
        else:
            assert isotropic_thetas is not None
            theta_iso = torch.stack([isotropic_thetas(i).reshape(()) for i in batch]).to(device)
        if job.method is Method.isotropic:
            theta = theta_iso
        else:
            generators = [input_generator(job.seed, i, device, Stream.ancer) for i in batch]
            theta = optimize_ancer(
                model, x, theta_iso, job.norm, job.ancer, generators, report("ancer")
            )
            for i, value in zip(batch, theta, strict=True):
                save_theta(theta_path(out, split, i), value)
        done += len(batch)
        if progress is not None:
            progress("done", kept + done, 0, math.nan)
    seconds = time.perf_counter() - began
    thetas = [load_theta(theta_path(out, split, i), tuple(data.info.input_shape)) for i in indices]
    for folder, manifest in manifests.items():
        write_json(
            folder / MANIFEST_NAME,
            {**manifest, "complete": True, "finished": utc_now(), "wall_seconds": seconds},
        )
    return OptimizeSummary(
        optimized=len(todo),
        kept=kept,
        seconds=seconds,
        mean_min_theta=sum(min_theta(t) for t in thetas) / max(len(thetas), 1),
        mean_geomean_theta=sum(geometric_mean(t) for t in thetas) / max(len(thetas), 1),
    )


def _isotropic_stage(
    model: nn.Module,
    x: torch.Tensor,
    batch: list[int],
    job: OptimizeJob,
    device: torch.device,
    folder: Path,
    split: str,
    resume: bool,
    progress: Progress | None,
) -> torch.Tensor:
    """Isotropic thetas ``(B,)`` of a batch, reusing stored ones on resume, saving new ones."""
    theta = torch.full((len(batch),), theta_from_sigma(job.sigma, job.norm), device=device)
    stored = [resume and theta_path(folder, split, i).exists() for i in batch]
    for k, i in enumerate(batch):
        if stored[k]:
            theta[k] = load_theta(theta_path(folder, split, i), None).reshape(())
    missing = [k for k, have in enumerate(stored) if not have]
    if missing:
        generators = [
            input_generator(job.seed, batch[k], device, Stream.isotropic) for k in missing
        ]
        found = optimize_isotropic(
            model, x[missing], theta[missing], job.norm, job.isotropic, generators, progress
        )
        for k, value in zip(missing, found, strict=True):
            theta[k] = value
            save_theta(theta_path(folder, split, batch[k]), value.reshape(()))
    return theta


def _manifest(record: dict[str, Any], job: OptimizeJob, final: bool) -> dict[str, Any]:
    """The manifest of the final folder, or of the isotropic stage's sub-folder."""
    method = job.method.value if final else Method.isotropic.value
    hyper: dict[str, Any] = {"batch_size": job.batch_size, "isotropic": asdict(job.isotropic)}
    if method == Method.ancer.value:
        hyper["ancer"] = asdict(job.ancer)
    arguments = {**record["arguments"], "method": method, "hyperparameters": hyper}
    return {**record, "format": THETA_FORMAT, "method": method, "arguments": arguments}
