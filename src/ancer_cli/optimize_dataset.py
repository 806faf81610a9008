"""The dataset loop of ``ancer optimize``: batches of inputs -> thetas -> theta files + manifests."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
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
from ancer_cli.core.noise import Norm, Stream, input_generator, theta_from_sigma
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.data import LoadedData
from ancer_cli.optimize import (
    AncerConfig,
    IsotropicConfig,
    Progress,
    optimize_ancer,
    optimize_isotropic,
)


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
