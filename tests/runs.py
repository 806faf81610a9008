"""Runs of the library on in-memory toys: certify, predict, attack and audit on a model and data
held in memory (:func:`ancer_cli.inputs.in_memory_inputs`), through the same run skeleton the
commands use, with no file but the outputs. Imported as ``from tests.runs import certify_toy, ...``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ancer_cli.attack import AttackRequest, AttackSummary, plan_attack_inputs
from ancer_cli.audit import AuditRequest, AuditSummary, plan_audit_inputs
from ancer_cli.certify import CertifyOutcome, CertifyRequest, plan_certify_inputs
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.noise import Theta
from ancer_cli.data import DatasetInfo, LoadedData
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.inputs import SmoothedInputs, in_memory_inputs
from ancer_cli.predict import PredictRequest, PredictSummary, plan_predict_inputs
from ancer_cli.run.spec import InputsSpec
from ancer_cli.settings import AttackJob, AuditJob, CertifyConfig, PredictConfig, Sequential

CPU = Session(SINGLE, torch.device("cpu"))
POINTS_INFO = DatasetInfo("points", (1, 1, 2), 2, (0.0,), (1.0,), "cnn")


def points(xy: Sequence[tuple[float, float]], labels: Sequence[int]) -> LoadedData:
    """Two-pixel inputs ``(1, 1, 2)`` at the given points, with no pixel grid (float noise)."""
    xs = torch.tensor(list(xy), dtype=torch.float32).view(-1, 1, 1, 2)
    return LoadedData(TensorDataset(xs, torch.tensor(list(labels))), POINTS_INFO, "test")


def toy_inputs(
    model: nn.Module,
    data: LoadedData,
    thetas: Callable[[int], Theta] | float,
    norm: str | Norm = Norm.l2,
    **options: Any,
) -> SmoothedInputs:
    """What a run smooths: ``model`` on ``data`` with ``thetas`` (see ``in_memory_inputs``)."""
    return in_memory_inputs(model, data, thetas, norm=Norm(norm), **options)


def certify_toy(
    inputs: SmoothedInputs,
    out: Path,
    *,
    sampling: Sampling = Sampling(50, 500, 0.001, 500),
    sequential: Sequential | None = None,
    memory: bool | None = None,
    seed: int | None = 0,
    resume: bool = False,
    force: bool = False,
    session: Session = CPU,
    **callbacks: Any,
) -> CertifyOutcome | None:
    """``ancer certify`` of ``inputs`` into ``out``: plan, commit and run."""
    request = CertifyRequest(
        out=out, inputs=InputsSpec(seed=seed), config=CertifyConfig(sampling, sequential),
        memory=memory, resume=resume, force=force,
    )  # fmt: skip
    return plan_certify_inputs(inputs, request, session).execute(session, **callbacks)


def predict_toy(
    inputs: SmoothedInputs,
    out: Path,
    *,
    config: PredictConfig = PredictConfig(400, 0.01, 1000),
    seed: int | None = 0,
    resume: bool = False,
    session: Session = CPU,
    **callbacks: Any,
) -> PredictSummary | None:
    """``ancer predict`` of ``inputs`` into ``out``."""
    request = PredictRequest(out=out, inputs=InputsSpec(seed=seed), config=config, resume=resume)
    return plan_predict_inputs(inputs, request, session).execute(session, **callbacks)


def attack_toy(
    inputs: SmoothedInputs,
    out: Path,
    job: AttackJob,
    *,
    seed: int | None = 0,
    resume: bool = False,
    session: Session = CPU,
    **callbacks: Any,
) -> AttackSummary | None:
    """``ancer attack`` of ``inputs`` into ``out``."""
    request = AttackRequest(job=job, out=out, inputs=InputsSpec(seed=seed), resume=resume)
    return plan_attack_inputs(inputs, request, session).execute(session, **callbacks)


def audit_toy(
    inputs: SmoothedInputs,
    results: Path,
    out: Path,
    job: AuditJob,
    *,
    seed: int | None = 0,
    resume: bool = False,
    session: Session = CPU,
    **callbacks: Any,
) -> AuditSummary | None:
    """``ancer audit results`` of a run of ``inputs`` into ``out``."""
    request = AuditRequest(results, out, job, InputsSpec(seed=seed), resume=resume)
    return plan_audit_inputs(inputs, request, session).execute(session, **callbacks)
