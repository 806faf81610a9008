"""The dataset loop of ``ancer optimize`` over :mod:`ancer_cli.core.optimize`: a request becomes a
plan (model, data, indices, job, record), fixed batches of inputs become thetas, the thetas theta
files and manifests."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import (
    check_new_output,
    check_resumable,
    remove_stale_temporaries,
    utc_now,
    write_json,
)
from ancer_cli.core.choices import theta_from_sigma
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import InputStreams, Stream
from ancer_cli.core.optimize.config import Progress
from ancer_cli.core.optimize.published import optimize_ancer, optimize_isotropic
from ancer_cli.core.optimize.search import optimize_ancer_guarded, search_isotropic
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.sound import to_grid
from ancer_cli.data import LoadedData
from ancer_cli.distributed import SINGLE, Ranks, Session, collective, total
from ancer_cli.errors import AncerError, OutputError
from ancer_cli.inputs import SmoothedInputs, labels_record, resolve_inputs
from ancer_cli.models.diffusion import is_diffusion_folder
from ancer_cli.run.spec import InputsSpec
from ancer_cli.runtime import provenance, versions
from ancer_cli.settings import OptimizeJob, ThetaMethod, ThetaObjective
from ancer_cli.theta_sources import open_thetas
from ancer_cli.thetas import (
    ISOTROPIC_SUBFOLDER,
    MANIFEST_NAME,
    THETA_FORMAT,
    load_theta,
    save_theta,
    theta_path,
)


@dataclass(frozen=True)
class OptimizeSummary:
    """``forward_equivalents``: noisy forward passes (a backward pass counting as two) spent per
    input optimized in this run, on average (0 when every input was kept)."""

    optimized: int
    kept: int
    seconds: float
    mean_min_theta: float
    mean_geomean_theta: float
    forward_equivalents: float = 0.0


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
    ranks: Ranks = SINGLE,
    on_start: Callable[[int, int], None] | None = None,
) -> OptimizeSummary | None:
    """Optimize theta for ``indices`` and write ``out/theta_{split}_{idx}.pt`` plus manifests.

    For ``ThetaMethod.ancer`` the isotropic stage goes to ``out/isotropic/`` unless
    ``isotropic_thetas`` supplies it. Inputs are optimized in fixed batches of
    ``job.batch_size`` consecutive indices, so a batch always holds the same inputs: resumed
    and distributed runs write exactly the files of one uninterrupted run. With ``resume``,
    batches whose theta files all exist are kept (files are written atomically, so an existing
    file is complete), and a batch whose isotropic stage is stored reuses it. The batches still
    to do are listed before any rank writes, and each rank takes every ``world_size``-th of
    them: a run resumes with any number of processes (``on_start(kept, mine)`` gets the inputs
    of complete batches and the inputs this rank takes on). Rank 0 writes the manifests and
    returns the summary (other ranks return ``None``). Model weights must already be frozen.
    """
    began = time.perf_counter()
    split = data.split
    iso_folder = out if job.method is ThetaMethod.isotropic else out / ISOTROPIC_SUBFOLDER
    run_iso_stage = job.method is ThetaMethod.isotropic or isotropic_thetas is None
    manifests = _manifests(out, record, job, run_iso_stage)

    batches = [indices[k : k + job.batch_size] for k in range(0, len(indices), job.batch_size)]
    todo: list[list[int]] = []

    def begin() -> None:
        if resume:
            check_optimize_resume(out, record, job, run_iso_stage)
        # before anyone writes (the collective's end), so every rank lists the same batches
        todo[:] = [b for b in batches if not (resume and _complete(out, data.split, b))]
        for folder in manifests:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"cannot create {folder}: {error.strerror or error}") from error
            if ranks.is_main:  # nobody writes before every rank has passed this point
                remove_stale_temporaries(folder, "theta_")
                remove_stale_temporaries(folder, MANIFEST_NAME)

    collective(ranks, begin)
    if ranks.is_main:
        for folder, manifest in manifests.items():
            write_json(folder / MANIFEST_NAME, {**manifest, "complete": False})

    def optimize_share() -> tuple[int, int, int]:
        optimized = kept = cost = 0
        if on_start is not None:
            complete = sum(map(len, batches)) - sum(map(len, todo))
            on_start(complete, sum(map(len, ranks.share(todo))))
        for batch in ranks.share(todo):
            written, spent = _optimize_batch(
                model,
                data,
                batch,
                job,
                device,
                out,
                iso_folder,
                run_iso_stage,
                isotropic_thetas,
                resume,
                progress,
                optimized + kept,
            )
            optimized += written
            kept += len(batch) - written
            cost += spent
            if progress is not None:
                progress("done", optimized + kept, 0, math.nan)
        return optimized, kept, cost

    optimized, kept, cost = collective(ranks, optimize_share)
    optimized, kept, cost = total(ranks, optimized), total(ranks, kept), total(ranks, cost)
    kept += sum(map(len, batches)) - sum(map(len, todo))
    if not ranks.is_main:
        return None
    seconds = time.perf_counter() - began
    thetas = [load_theta(theta_path(out, split, i), tuple(data.info.input_shape)) for i in indices]
    for folder, manifest in manifests.items():
        write_json(
            folder / MANIFEST_NAME,
            {
                **manifest,
                "complete": True,
                "finished": utc_now(),
                "wall_seconds": seconds,
                "forward_equivalents_per_input": cost / max(optimized, 1),
            },
        )
    return OptimizeSummary(
        optimized=optimized,
        kept=kept,
        seconds=seconds,
        mean_min_theta=sum(min_theta(t) for t in thetas) / max(len(thetas), 1),
        mean_geomean_theta=sum(geometric_mean(t) for t in thetas) / max(len(thetas), 1),
        forward_equivalents=cost / max(optimized, 1),
    )


def _optimize_batch(
    model: nn.Module,
    data: LoadedData,
    batch: list[int],
    job: OptimizeJob,
    device: torch.device,
    out: Path,
    iso_folder: Path,
    run_iso_stage: bool,
    isotropic_thetas: Callable[[int], torch.Tensor] | None,
    resume: bool,
    progress: OptimizeProgress | None,
    finished: int,
) -> tuple[int, int]:
    """Both stages for one whole batch (so its inputs always share a forward pass the same
    way); with ``resume`` only missing files are written. Returns the final files written and
    the forward-equivalents the batch cost (a backward pass counting as two forwards)."""
    split = data.split
    x = torch.stack([data.dataset[i][0] for i in batch]).to(device, torch.float32)
    if job.grid is not None and job.objective is ThetaObjective.certified:
        _check_on_grid(x, batch, job.grid)
    missing = sum(1 for i in batch if not (resume and theta_path(out, split, i).exists()))

    def report(stage: str) -> Progress | None:
        if progress is None:
            return None
        callback = progress
        return lambda it, _total, objective: callback(stage, finished, it, objective)

    # the certified objective decides under the law certify will draw (sound on the data's grid
    # by default); the reference objective's published steps draw float noise, as published
    noise = Noise(job.norm, job.grid)
    streams = InputStreams(job.seed, batch, device)
    cost = 0
    if not run_iso_stage:
        assert isotropic_thetas is not None
        theta_iso = torch.stack([isotropic_thetas(i).reshape(()) for i in batch]).to(device)
    elif resume and all(theta_path(iso_folder, split, i).exists() for i in batch):
        theta_iso = torch.stack(
            [load_theta(theta_path(iso_folder, split, i), None).reshape(()) for i in batch]
        ).to(device)
    else:
        start = torch.full((len(batch),), theta_from_sigma(job.sigma, job.norm), device=device)
        generators = streams.generators(Stream.isotropic)
        if job.objective is ThetaObjective.certified:
            found = search_isotropic(model, x, start, noise, job.search, generators)
            theta_iso, cost = found.theta, int(found.forward_equivalents.sum())
        else:
            theta_iso = optimize_isotropic(
                model, x, start, job.norm, job.isotropic, generators, report("isotropic")
            )
            cost = job.isotropic.forward_equivalents * len(batch)
        for i, value in zip(batch, theta_iso, strict=True):
            _save_missing(theta_path(iso_folder, split, i), value.reshape(()), resume)
    if job.method is ThetaMethod.isotropic:
        return missing, cost
    if job.objective is ThetaObjective.certified:
        guarded = optimize_ancer_guarded(
            model, x, theta_iso, noise, job.guarded, streams, report("ancer")
        )
        theta, cost = guarded.theta, cost + int(guarded.forward_equivalents.sum())
    else:
        generators = streams.generators(Stream.ancer)
        theta = optimize_ancer(
            model, x, theta_iso, job.norm, job.ancer, generators, report("ancer")
        )
        cost += job.ancer.forward_equivalents * len(batch)
    written = 0
    for i, value in zip(batch, theta, strict=True):
        written += _save_missing(theta_path(out, split, i), value, resume)
    return written, cost


def _check_on_grid(x: torch.Tensor, batch: list[int], levels: int) -> None:
    """Refuse an input off the data's grid: sound noise, which certify draws and the certified
    objective scores thetas under, is defined on the grid only."""
    for idx, image in zip(batch, x, strict=True):
        try:
            to_grid(image, levels)
        except ValueError as error:
            raise AncerError(
                f"input {idx}: {error}; sound noise, which thetas are scored under, needs it "
                "(--no-sound scores them under float noise)"
            ) from error


def _complete(out: Path, split: str, batch: list[int]) -> bool:
    """Whether every input of ``batch`` has its (atomically written, so complete) theta file."""
    return all(theta_path(out, split, i).exists() for i in batch)


def _save_missing(path: Path, theta: torch.Tensor, resume: bool) -> bool:
    """Save unless resuming and the (atomically written, so complete) file exists."""
    if resume and path.exists():
        return False
    save_theta(path, theta)
    return True


def _manifests(
    out: Path, record: dict[str, Any], job: OptimizeJob, run_iso_stage: bool
) -> dict[Path, dict[str, Any]]:
    """The manifest of each folder the run writes: ``out`` and, if run, its isotropic stage."""
    folders = [out]
    if run_iso_stage and job.method is ThetaMethod.ancer:
        folders.append(out / ISOTROPIC_SUBFOLDER)
    return {folder: _manifest(record, job, folder == out) for folder in folders}


def check_optimize_resume(
    out: Path, record: dict[str, Any], job: OptimizeJob, run_iso_stage: bool
) -> None:
    """Refuse to resume into folders whose manifests record other arguments (names the first)."""
    for folder, manifest in _manifests(out, record, job, run_iso_stage).items():
        if (folder / MANIFEST_NAME).exists():
            check_resumable(folder / MANIFEST_NAME, manifest["arguments"], str(folder))


def _manifest(record: dict[str, Any], job: OptimizeJob, final: bool) -> dict[str, Any]:
    """The manifest of the final folder, or of the isotropic stage's sub-folder."""
    method = job.method if final else ThetaMethod.isotropic
    hyper = job.hyperparameters(method)
    arguments = {**record["arguments"], "method": method.value, "hyperparameters": hyper}
    return {**record, "format": THETA_FORMAT, "method": method.value, "arguments": arguments}


# ---------------------------------------------------------------------------------------------
# an optimize run: request -> plan -> theta files


@dataclass(frozen=True)
class OptimizeRequest:
    """What ``ancer optimize`` is asked to do: ``inputs`` says which model (and denoiser), data
    and inputs (see :class:`~ancer_cli.run.spec.InputsSpec`; ``sigma`` the start, by default the
    model's training sigma; ``thetas`` unused), ``job`` how to optimize (its ``norm`` and
    ``sigma`` are resolved from ``inputs`` and the model)."""

    inputs: InputsSpec
    out: Path
    job: OptimizeJob = OptimizeJob()
    isotropic_thetas: Path | None = None
    resume: bool = False
    force: bool = False


@dataclass(frozen=True)
class OptimizePlan:
    """Everything an optimize run needs, loaded and checked."""

    request: OptimizeRequest
    inputs: SmoothedInputs
    job: OptimizeJob
    record: dict[str, Any]
    isotropic_thetas: Callable[[int], torch.Tensor] | None

    @property
    def indices(self) -> list[int]:
        return self.inputs.indices

    def batches(self) -> list[list[int]]:
        """The fixed batches of consecutive indices the run optimizes together."""
        size = self.job.batch_size
        return [self.indices[k : k + size] for k in range(0, len(self.indices), size)]

    def execute(
        self,
        session: Session,
        progress: OptimizeProgress | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> OptimizeSummary | None:
        """:func:`run_optimize` of this plan (with ``force``, rank 0 first empties the output
        folder); ``None`` on ranks other than 0."""
        out = self.request.out
        if self.request.force and session.ranks.is_main and out.exists():
            shutil.rmtree(out)
        return run_optimize(
            self.inputs.model,
            self.inputs.data,
            self.indices,
            self.job,
            session.device,
            out,
            self.record,
            resume=self.request.resume,
            isotropic_thetas=self.isotropic_thetas,
            progress=progress,
            ranks=session.ranks,
            on_start=on_start,
        )


def plan_optimize(request: OptimizeRequest, session: Session) -> OptimizePlan:
    """Load and check everything ``request`` needs, on every rank (a collective)."""
    return collective(session.ranks, lambda: _plan(request, session))


def _plan(request: OptimizeRequest, session: Session) -> OptimizePlan:
    check_new_output(request.out, force=request.force, resume=request.resume, folder=True)
    spec = replace(request.inputs, thetas=None, seed=request.job.seed)
    if request.job.method is ThetaMethod.ancer and spec.denoiser is not None:
        if is_diffusion_folder(spec.denoiser):
            raise AncerError(
                f"{spec.denoiser} is a diffusion model: it takes one noise level per input; "
                "optimize --method isotropic with it"
            )
    inputs = resolve_inputs(spec, session, optimizing=True)
    sigma = inputs.arguments["sigma"]
    job = replace(request.job, norm=inputs.norm, sigma=sigma, grid=inputs.noise.grid)
    isotropic_thetas = None
    if request.isotropic_thetas is not None:
        isotropic_thetas = open_thetas(
            request.isotropic_thetas,
            inputs.data,
            norm=inputs.norm,
            model_sha256=inputs.model_sha256,
            denoiser_sha256=inputs.denoiser_sha256,
            device=session.device,
            selected=inputs.indices,
        ).theta
    arguments = {
        **inputs.arguments,
        "isotropic_thetas": str(request.isotropic_thetas.resolve())
        if request.isotropic_thetas
        else None,
    }
    record = {
        "arguments": arguments,
        "indices": inputs.indices,
        "labels": labels_record(inputs.data),
        "world_size": session.ranks.world_size,  # not an argument: a run resumes on any number
        "package_version": versions()["ancer"],
        **provenance(session.device),
    }
    if request.resume:
        check_optimize_resume(request.out, record, job, run_iso_stage=isotropic_thetas is None)
    return OptimizePlan(request, inputs, job, record, isotropic_thetas)
