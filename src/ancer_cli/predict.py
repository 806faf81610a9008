"""The dataset loop of ``ancer predict`` over :func:`ancer_cli.core.smoothing.predict_many`
(Cohen et al.'s PREDICT): a request becomes a plan through the input resolution certify uses
too (:func:`ancer_cli.inputs.resolve_inputs`), the plan's inputs become predictions, and the
sharded, resumable results loop (:func:`ancer_cli.results.write_rows`) writes them as rows
``idx label predict correct time``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import check_new_output, utc_now, write_json
from ancer_cli.core.bounds import DEFAULT_ALPHA
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.noise import Norm, Stream, input_generator
from ancer_cli.core.smoothing import ABSTAIN, inputs_per_group, predict_many
from ancer_cli.data import UNLABELED, LoadedData
from ancer_cli.distributed import SINGLE, Ranks, Session, collective
from ancer_cli.inputs import (
    InputsSpec,
    input_groups,
    labels_record,
    resolve_inputs,
    sound_record,
)
from ancer_cli.models.denoisers import inputs_per_theta
from ancer_cli.results import (
    PREDICTION_COLUMNS,
    check_resume,
    complete_rows,
    format_prediction_row,
    results_sidecar_path,
    run_seed,
    write_rows,
)
from ancer_cli.runtime import provenance
from ancer_cli.thetas import CertifyMethod, ThetaSource


@dataclass(frozen=True)
class PredictConfig:
    """Sampling and confidence settings of PREDICT; the defaults are the command's defaults
    (those of Cohen et al.'s ``predict.py``)."""

    norm: Norm = Norm.l2
    num: int = 100_000
    alpha: float = DEFAULT_ALPHA
    batch_size: int = 1000
    seed: int = 0
    sound: int | None = None
    """the data's grid levels ``s`` for sound sampling (:mod:`ancer_cli.core.sound`)"""


@dataclass(frozen=True)
class PredictionRow:
    """One line of the predictions file; ``predict`` is -1 for an abstention."""

    idx: int
    label: int
    predict: int
    correct: int
    seconds: float

    def line(self) -> str:
        return format_prediction_row(self.idx, self.label, self.predict, self.correct, self.seconds)


def predict_dataset(
    model: nn.Module,
    data: LoadedData,
    indices: Iterable[int],
    thetas: ThetaSource,
    config: PredictConfig,
    device: torch.device,
) -> Iterator[PredictionRow]:
    """PREDICT each dataset index in order and yield its row.

    Every input draws its ``config.num`` samples from its own stream, seeded from
    ``(config.seed, idx)`` and separate from certify's (:attr:`Stream.predict`), so a row does
    not depend on the other inputs, their order or the number of processes. ``time`` is the
    wall time of sampling and testing, shared evenly by inputs that share forward passes.
    """
    group = inputs_per_theta(model, inputs_per_group(0, config.num, config.batch_size))
    for chosen in input_groups(data, indices, thetas, group, device, config.sound):
        tell_thetas(model, chosen.thetas)
        generators = [
            input_generator(config.seed, idx, device, Stream.predict) for idx in chosen.indices
        ]
        began = time.perf_counter()
        predictions = predict_many(
            model,
            chosen.xs,
            chosen.thetas,
            config.norm,
            config.num,
            config.alpha,
            config.batch_size,
            generators,
            sound=config.sound,
        )
        seconds = (time.perf_counter() - began) / len(chosen.indices)
        for idx, label, prediction in zip(chosen.indices, chosen.labels, predictions, strict=True):
            correct = int(prediction == label and prediction != ABSTAIN)
            yield PredictionRow(idx, label, prediction, correct, seconds)


@dataclass(frozen=True)
class PredictSummary:
    """Totals of a predict run; accuracy counts the ``labeled`` rows (NaN without any)."""

    predicted: int
    resumed: int
    correct: int
    abstained: int
    labeled: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.labeled if self.labeled else math.nan


def run_predict(
    model: nn.Module,
    data: LoadedData,
    indices: list[int],
    thetas: ThetaSource,
    config: PredictConfig,
    device: torch.device,
    out: Path,
    record: dict[str, Any],
    resume: bool = False,
    on_row: Callable[[PredictionRow], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    ranks: Ranks = SINGLE,
) -> PredictSummary | None:
    """PREDICT ``indices`` into the predictions file ``out`` and its JSON sidecar.

    Rows are flushed one by one in index order; resuming (with any number of processes) and
    sharding work as for certify (:func:`ancer_cli.results.write_rows`). Rank 0 returns the
    summary, the other ranks ``None``.
    """
    began = time.perf_counter()
    started = utc_now()
    resumed = write_rows(
        lambda share: predict_dataset(model, data, share, thetas, config, device),
        indices,
        out,
        out,
        record,
        columns=PREDICTION_COLUMNS,
        resume=resume,
        on_row=on_row,
        on_start=on_start,
        ranks=ranks,
    )
    if resumed is None:
        return None
    rows = [line.rstrip("\n").split("\t") for _, line in complete_rows(out, PREDICTION_COLUMNS)]
    labels = [int(fields[1]) for fields in rows]
    summary = PredictSummary(
        predicted=len(rows),
        resumed=resumed,
        correct=sum(int(fields[3]) for fields in rows),
        abstained=sum(int(fields[2]) == ABSTAIN for fields in rows),
        labeled=sum(label != UNLABELED for label in labels),
        seconds=time.perf_counter() - began,
    )
    write_json(
        results_sidecar_path(out),
        {
            **record,
            "complete": True,
            "started": started,
            "finished": utc_now(),
            "totals": {
                "inputs": summary.predicted,
                "resumed_rows": summary.resumed,
                "correct": summary.correct,
                "abstained": summary.abstained,
                "labeled": summary.labeled,
                "accuracy": None if math.isnan(summary.accuracy) else summary.accuracy,
                "abstention_rate": summary.abstained / max(summary.predicted, 1),
                "seconds_this_run": summary.seconds,
            },
        },
    )
    return summary


# ---------------------------------------------------------------------------------------------
# a predict run: request -> plan -> rows


@dataclass(frozen=True)
class PredictRequest:
    """What ``ancer predict`` is asked to do: ``inputs`` says what to smooth, with which thetas,
    on which inputs (see :class:`~ancer_cli.inputs.InputsSpec`); the rest how to predict."""

    out: Path = Path("predictions.csv")
    inputs: InputsSpec = field(default_factory=InputsSpec)
    num: int = PredictConfig.num
    alpha: float = PredictConfig.alpha
    batch_size: int = PredictConfig.batch_size
    resume: bool = False
    force: bool = False


@dataclass(frozen=True)
class PredictPlan:
    """Everything a predict run needs, loaded and checked (see
    :class:`~ancer_cli.certify.CertifyPlan`)."""

    request: PredictRequest
    model: nn.Module
    data: LoadedData
    method: CertifyMethod
    thetas: ThetaSource
    theta_description: str
    indices: list[int]
    config: PredictConfig
    record: dict[str, Any]
    logits: int

    def run(
        self,
        session: Session,
        on_row: Callable[[PredictionRow], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> PredictSummary | None:
        """:func:`run_predict` of this plan (``None`` on ranks other than 0)."""
        return run_predict(
            self.model,
            self.data,
            self.indices,
            self.thetas,
            self.config,
            session.device,
            self.request.out,
            self.record,
            resume=self.request.resume,
            on_row=on_row,
            on_start=on_start,
            ranks=session.ranks,
        )


def plan_predict(request: PredictRequest, session: Session) -> PredictPlan:
    """Load and check everything ``request`` needs, on every rank (a collective); the seed as
    :func:`~ancer_cli.certify.plan_certify` chooses it."""
    seed = run_seed(request.inputs.seed, request.out, request.resume, session.ranks)
    request = replace(request, inputs=replace(request.inputs, seed=seed))
    return collective(session.ranks, lambda: _plan(request, session))


def _plan(request: PredictRequest, session: Session) -> PredictPlan:
    check_new_output(request.out, force=request.force, resume=request.resume)
    inputs = resolve_inputs(request.inputs, session)
    config = PredictConfig(
        norm=inputs.norm,
        num=request.num,
        alpha=request.alpha,
        batch_size=request.batch_size,
        seed=request.inputs.seed,
        sound=inputs.grid_levels,
    )
    record = {
        "format": "ancer-predictions/1",
        "arguments": {
            **inputs.arguments,
            "N": request.num,
            "alpha": request.alpha,
            "batch_size": request.batch_size,
        },
        "labels": labels_record(inputs.data),
        **sound_record(inputs),
        "world_size": session.ranks.world_size,  # not an argument: a run resumes on any number
        **provenance(session.device),
    }
    if request.resume:
        check_resume(request.out, record["arguments"], memory=False)
    return PredictPlan(
        request=request,
        model=inputs.model,
        data=inputs.data,
        method=inputs.method,
        thetas=inputs.thetas,
        theta_description=inputs.description,
        indices=inputs.indices,
        config=config,
        record=record,
        logits=inputs.logits,
    )
