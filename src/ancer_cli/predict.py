"""The dataset loop of ``ancer predict`` over :func:`ancer_cli.core.smoothing.predict_many`
(Cohen et al.'s PREDICT): a request becomes a plan through the input resolution certify uses
too (:func:`ancer_cli.inputs.resolve_inputs`), the plan's inputs become predictions, and the run
skeleton (:class:`ancer_cli.run.skeleton.Run`) writes them as rows ``idx label predict correct
time``. This module keeps predict's config, its row, its per-input loop and its totals."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.smoothing import ABSTAIN, inputs_per_group, predict_many
from ancer_cli.data import UNLABELED
from ancer_cli.distributed import Session, collective
from ancer_cli.inputs import (
    SmoothedInputs,
    input_groups,
    labels_record,
    resolve_inputs,
    sound_record,
)
from ancer_cli.models.denoisers import inputs_per_theta
from ancer_cli.results import PREDICTION_COLUMNS, format_prediction_row, parse_time
from ancer_cli.run.skeleton import Run
from ancer_cli.run.spec import InputsSpec
from ancer_cli.runtime import provenance
from ancer_cli.settings import PredictConfig


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

    @staticmethod
    def parse(line: str) -> PredictionRow:
        fields = line.rstrip("\n").split("\t")
        return PredictionRow(
            int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3]), parse_time(fields[4])
        )


def predict_dataset(
    inputs: SmoothedInputs,
    indices: Iterable[int],
    config: PredictConfig,
    seeds: Mapping[int, int],
    device: torch.device,
    committed: Mapping[int, str] | None,
) -> Iterator[PredictionRow]:
    """PREDICT each dataset index in order and yield its row.

    Every input draws its ``config.num`` samples from its own stream, seeded from ``(seeds[idx],
    idx)`` and separate from certify's (:attr:`Stream.predict`), so a row does not depend on the
    other inputs, their order or the number of processes. ``time`` is the wall time of sampling
    and testing, shared evenly by inputs that share forward passes.
    """
    model = inputs.model
    group = inputs_per_theta(model, inputs_per_group(0, config.num, config.batch_size))
    for chosen in input_groups(inputs, indices, group, device, committed):
        tell_thetas(model, chosen.thetas)
        generators = [
            input_generator(seeds[idx], idx, device, Stream.predict) for idx in chosen.indices
        ]
        began = time.perf_counter()
        predictions = predict_many(
            model, chosen.xs, chosen.laws, config.num, config.alpha, config.batch_size, generators
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

    def record(self) -> dict[str, object]:
        """The sidecar's ``totals``."""
        return {
            "inputs": self.predicted,
            "resumed_rows": self.resumed,
            "correct": self.correct,
            "abstained": self.abstained,
            "labeled": self.labeled,
            "accuracy": None if math.isnan(self.accuracy) else self.accuracy,
            "abstention_rate": self.abstained / max(self.predicted, 1),
            "seconds_this_run": self.seconds,
        }


@dataclass(frozen=True)
class PredictRequest:
    """What ``ancer predict`` is asked to do: ``inputs`` says what to smooth, with which thetas,
    on which inputs (see :class:`~ancer_cli.run.spec.InputsSpec`); the rest how to predict."""

    out: Path = Path("predictions.csv")
    inputs: InputsSpec = field(default_factory=InputsSpec)
    config: PredictConfig = PredictConfig()
    resume: bool = False
    force: bool = False


@dataclass
class PredictPlan:
    """Everything a predict run needs, loaded, checked and committed."""

    request: PredictRequest
    inputs: SmoothedInputs
    config: PredictConfig
    seeds: dict[int, int]
    run: Run

    @property
    def indices(self) -> list[int]:
        return self.inputs.indices

    def execute(
        self,
        session: Session,
        on_row: Callable[[PredictionRow], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> PredictSummary | None:
        """PREDICT the plan's inputs into its file and sidecar; the summary on rank 0, ``None``
        elsewhere. Rows are flushed one by one in index order; resuming (with any number of
        processes) and sharding work as for certify."""
        began, device, run = time.perf_counter(), session.device, self.run
        assert run.commitment is not None
        committed = run.commitment.inputs
        try:
            resumed = run.write(
                lambda share: predict_dataset(
                    self.inputs, share, self.config, self.seeds, device, committed
                ),
                self.indices,
                on_row=on_row,
                on_start=on_start,
            )
            if resumed is None:
                return None
            rows = run.rows(PredictionRow.parse)
            summary = PredictSummary(
                predicted=len(rows),
                resumed=resumed,
                correct=sum(row.correct for row in rows),
                abstained=sum(row.predict == ABSTAIN for row in rows),
                labeled=sum(row.label != UNLABELED for row in rows),
                seconds=time.perf_counter() - began,
            )
            run.finish(totals=summary.record())
            return summary
        finally:
            run.close()


def plan_predict(request: PredictRequest, session: Session) -> PredictPlan:
    """Load, check and commit everything ``request`` needs, on every rank (a collective), as
    :func:`~ancer_cli.certify.plan_certify` does."""
    return plan_predict_inputs(lambda: resolve_inputs(request.inputs, session), request, session)


def plan_predict_inputs(
    resolve: Callable[[], SmoothedInputs] | SmoothedInputs,
    request: PredictRequest,
    session: Session,
) -> PredictPlan:
    """:func:`plan_predict` for inputs resolved by the caller (see
    :func:`~ancer_cli.certify.plan_certify_inputs`)."""
    run = Run(request.out, session.ranks, resume=request.resume, force=request.force)

    def plan() -> PredictPlan:
        run.open()
        inputs = resolve() if callable(resolve) else resolve
        run.layout(PREDICTION_COLUMNS)
        config = request.config
        record = {
            "format": "ancer-predictions/1",
            "arguments": {
                **inputs.arguments,
                "N": config.num,
                "alpha": config.alpha,
                "batch_size": config.batch_size,
            },
            "labels": labels_record(inputs.data),
            **sound_record(inputs),
            "world_size": session.ranks.world_size,  # not an argument: resumes on any number
            **provenance(session.device),
        }
        segments = run.commit(record, inputs.commitment(), inputs.indices, request.inputs.seed)
        return PredictPlan(request, inputs, config, segments.seeds(), run)

    try:
        return collective(session.ranks, plan)
    except BaseException:
        run.close()
        raise
