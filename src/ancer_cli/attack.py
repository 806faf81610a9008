"""The dataset loop of ``ancer attack`` over :func:`ancer_cli.core.attack.smoothadv_attack`: an
empirical robust accuracy of the smoothed classifier a results file describes (or a model with a
sigma or thetas), one row per input and eps.

Each input is attacked with its own noise law -- its own theta for per-input thetas, the
classifier its certificate speaks of -- at every radius ``eps`` of the attacker's ball, and the
attacked point is judged by PREDICT (Cohen et al.) on fresh draws: the attack draws from
``Stream.attack``, PREDICT from ``Stream.predict`` (:class:`~ancer_cli.core.noise.Stream`: the
draws ``ancer predict`` with the same seed makes), so the attack never sees the draws that
judge it. A row is ``correct`` iff PREDICT returns the label; an abstention counts as an error.
Every (input, eps) has its own attack stream (:func:`~ancer_cli.core.noise.part_generator`), so
a row does not depend on the other rows, their order, a resume or the number of processes.

The start and end of the run (lock, commitment, seeds, resume, sidecar) are
:class:`~ancer_cli.run.skeleton.Run`'s; the rows are keyed by ``(idx, eps)``. This module keeps
attack's config, its row, its per-input loop and its totals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ancer_cli.core.attack import (
    Ball,
    perturbation_norms,
    random_perturbation,
    smoothadv_attack,
)
from ancer_cli.core.attack_settings import AttackConfig, Threat
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.noise import Stream, float_part, input_generator, part_generator
from ancer_cli.core.smoothing import ABSTAIN, MAX_INPUTS_PER_GROUP, predict_many
from ancer_cli.data import UNLABELED
from ancer_cli.distributed import Session, collective
from ancer_cli.errors import AncerError
from ancer_cli.inputs import (
    SmoothedInputs,
    input_groups,
    labels_record,
    resolve_inputs,
    rows_of,
    sound_record,
)
from ancer_cli.models.denoisers import inputs_per_theta
from ancer_cli.results import (
    ATTACK_COLUMNS,
    format_attack_row,
    parse_time,
    read_results,
    read_results_record,
    rows_digest,
)
from ancer_cli.run.skeleton import Run
from ancer_cli.run.spec import InputsSpec, results_spec
from ancer_cli.runtime import provenance
from ancer_cli.settings import AttackJob, PredictConfig

# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class AttackRow:
    """One line of the attack file: input ``idx`` attacked in the ball of radius ``eps``;
    ``predict`` is PREDICT's answer at the attacked point (-1: abstained), ``correct`` whether it
    is the label, the norms those of the perturbation (l2, l1, l-infinity)."""

    idx: int
    label: int
    eps: float
    predict: int
    correct: int
    norm_l2: float
    norm_l1: float
    norm_linf: float
    seconds: float

    @property
    def key(self) -> tuple[int, float]:
        return self.idx, self.eps

    def line(self) -> str:
        norms = (self.norm_l2, self.norm_l1, self.norm_linf)
        return format_attack_row(
            self.idx, self.label, self.eps, self.predict, self.correct, norms, self.seconds
        )

    @staticmethod
    def parse(line: str) -> AttackRow:
        fields = line.rstrip("\n").split("\t")
        return AttackRow(
            int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3]), int(fields[4]),
            float(fields[5]), float(fields[6]), float(fields[7]), parse_time(fields[8]),
        )  # fmt: skip


def attack_key(fields: Sequence[str]) -> tuple[int, float]:
    """The key of an attack row: ``(idx, eps)``."""
    return int(fields[0]), float(fields[2])


# ---------------------------------------------------------------------------------------------
# the per-input loop


@dataclass(frozen=True)
class AttackSettings:
    """How a run attacks: the ball's norm and radii (sorted), the attack (or, ``random``, a
    random point on the ball's boundary) and the judge."""

    threat: Threat
    eps: tuple[float, ...]
    attack: AttackConfig
    judge: PredictConfig
    random: bool = False

    @property
    def perturbation(self) -> str:
        """What moves the inputs: ``smoothadv`` (the attack) or ``random``."""
        return "random" if self.random else "smoothadv"

    def record(self) -> dict[str, Any]:
        """What the sidecar's arguments record about the attack."""
        return {
            "threat": self.threat.value,
            "eps": list(self.eps),
            "perturbation": self.perturbation,
            "attack": None if self.random else asdict(self.attack),
            "N": self.judge.num,
            "alpha": self.judge.alpha,
            "batch_size": self.judge.batch_size,
        }


def attack_generator(seed: int, idx: int, eps: float, device: torch.device) -> torch.Generator:
    """The attack's stream of input ``idx`` at radius ``eps``."""
    return part_generator(seed, idx, float_part(eps), device, Stream.attack)


def attack_dataset(
    inputs: SmoothedInputs,
    keys: Sequence[tuple[int, float]],
    settings: AttackSettings,
    seeds: Mapping[int, int],
    device: torch.device,
    committed: Mapping[int, str] | None,
) -> Iterator[AttackRow]:
    """Attack each ``(idx, eps)`` of ``keys`` (in order) and yield its row.

    Consecutive inputs are attacked together (one forward pass holds ``samples`` draws of each),
    one eps at a time. At eps 0 the point is the input itself (no attack): the row is PREDICT's
    at the input, the row ``ancer predict`` writes with the same seed. ``time`` is the wall time
    of the attack and of PREDICT, shared evenly by the inputs attacked together.
    """
    wanted: dict[int, list[float]] = {}
    for idx, eps in keys:
        wanted.setdefault(idx, []).append(eps)
    model, attack, judge = inputs.model, settings.attack, settings.judge
    group = max(1, min(MAX_INPUTS_PER_GROUP, judge.batch_size // attack.samples))
    group = inputs_per_theta(model, group)  # a denoiser sees one input's theta per pass
    for chosen in input_groups(inputs, list(wanted), group, device, committed):
        if UNLABELED in chosen.labels:
            unlabeled = chosen.indices[chosen.labels.index(UNLABELED)]
            raise AncerError(
                f"input {unlabeled} has no label (-1): an attack lowers the probability of "
                "the true class, and robust accuracy needs one; attack labeled images"
            )
        rows: dict[tuple[int, float], AttackRow] = {}
        for eps in sorted({e for idx in chosen.indices for e in wanted[idx]}):
            members = [k for k, idx in enumerate(chosen.indices) if eps in wanted[idx]]
            indices = [chosen.indices[k] for k in members]
            labels = [chosen.labels[k] for k in members]
            laws = [chosen.laws[k] for k in members]
            xs = chosen.xs[members]
            tell_thetas(model, [chosen.thetas[k] for k in members])
            began = time.perf_counter()
            generators = [attack_generator(seeds[i], i, eps, device) for i in indices]
            ball = Ball(settings.threat, eps)
            if eps == 0:
                points = xs
            elif settings.random:
                points = random_perturbation(xs, ball, generators, laws[0].grid)
            else:
                points = smoothadv_attack(model, xs, labels, laws, ball, generators, attack).points
                tell_thetas(model, [chosen.thetas[k] for k in members])
            norms = torch.stack(perturbation_norms(xs, points, laws[0].grid)).cpu()
            judges = [input_generator(seeds[i], i, device, Stream.predict) for i in indices]
            predictions = predict_many(
                model, points, laws, judge.num, judge.alpha, judge.batch_size, judges
            )
            seconds = (time.perf_counter() - began) / len(members)
            for j, (idx, label, prediction) in enumerate(
                zip(indices, labels, predictions, strict=True)
            ):
                rows[idx, eps] = AttackRow(
                    idx=idx, label=label, eps=eps, predict=prediction,
                    correct=int(prediction == label and prediction != ABSTAIN),
                    norm_l2=float(norms[0, j]), norm_l1=float(norms[1, j]),
                    norm_linf=float(norms[2, j]), seconds=seconds,
                )  # fmt: skip
        for idx in chosen.indices:
            for eps in wanted[idx]:
                yield rows[idx, eps]


# ---------------------------------------------------------------------------------------------
# totals


@dataclass(frozen=True)
class EpsSummary:
    """The rows of one eps: inputs, those PREDICT still labels correctly, abstentions."""

    eps: float
    inputs: int
    correct: int
    abstained: int

    @property
    def accuracy(self) -> float:
        """The empirical robust accuracy at ``eps`` (NaN without rows)."""
        return self.correct / self.inputs if self.inputs else math.nan

    def record(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "inputs": self.inputs,
            "correct": self.correct,
            "abstained": self.abstained,
            "empirical_accuracy": None if math.isnan(self.accuracy) else self.accuracy,
        }


@dataclass(frozen=True)
class AttackSummary:
    """Totals of an attack run: per eps, and what one input's attack costs."""

    rows: int
    resumed: int
    per_eps: list[EpsSummary]
    forward_equivalents: int
    """per row: the attack's (0 at eps 0) and PREDICT's samples"""
    seconds: float
    seconds_per_row: float

    def record(self) -> dict[str, Any]:
        """The sidecar's ``totals``."""
        return {
            "rows": self.rows,
            "resumed_rows": self.resumed,
            "per_eps": [summary.record() for summary in self.per_eps],
            "forward_equivalents_per_row": self.forward_equivalents,
            "seconds_per_row": self.seconds_per_row,
            "seconds_this_run": self.seconds,
        }

    @staticmethod
    def of(
        rows: Sequence[AttackRow], settings: AttackSettings, resumed: int, seconds: float
    ) -> AttackSummary:
        per_eps = [
            EpsSummary(
                eps=eps,
                inputs=sum(row.eps == eps for row in rows),
                correct=sum(row.correct for row in rows if row.eps == eps),
                abstained=sum(row.predict == ABSTAIN for row in rows if row.eps == eps),
            )
            for eps in settings.eps
        ]
        attacked = 0 if settings.random else sum(eps > 0 for eps in settings.eps)
        cost = settings.judge.num + settings.attack.forward_equivalents * attacked / max(
            len(settings.eps), 1
        )
        return AttackSummary(
            rows=len(rows),
            resumed=resumed,
            per_eps=per_eps,
            forward_equivalents=round(cost),
            seconds=seconds,
            seconds_per_row=sum(row.seconds for row in rows) / len(rows) if rows else math.nan,
        )


# ---------------------------------------------------------------------------------------------
# an attack run: request -> plan -> rows


@dataclass(frozen=True)
class AttackRequest:
    """What ``ancer attack`` is asked to do. With ``results``, the classifier, its noise and
    the inputs are those of that results file (its sidecar, read with
    :func:`~ancer_cli.run.spec.results_spec`; ``inputs`` then gives the seed, ``--skip``,
    ``--max`` and the data root, or, for a file without a sidecar, the model and the noise);
    without, ``inputs`` says what to smooth, as for predict."""

    job: AttackJob
    out: Path = Path("attack.csv")
    results: Path | None = None
    inputs: InputsSpec = field(default_factory=InputsSpec)
    resume: bool = False
    force: bool = False


@dataclass
class AttackPlan:
    """Everything an attack run needs, loaded, checked and committed."""

    request: AttackRequest
    inputs: SmoothedInputs
    settings: AttackSettings
    seeds: dict[int, int]
    run: Run

    @property
    def indices(self) -> list[int]:
        return self.inputs.indices

    @property
    def keys(self) -> list[tuple[int, float]]:
        """The rows the run writes, in file order: every input, every eps."""
        return [(idx, eps) for idx in self.indices for eps in self.settings.eps]

    def execute(
        self,
        session: Session,
        on_row: Callable[[AttackRow], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> AttackSummary | None:
        """Attack the plan's inputs into its file and sidecar; the summary on rank 0, ``None``
        elsewhere. Rows are flushed one by one in index then eps order; resuming (with any
        number of processes) and sharding work as for certify."""
        began, device, run = time.perf_counter(), session.device, self.run
        assert run.commitment is not None
        committed = run.commitment.inputs
        try:
            resumed = run.write(
                lambda share: attack_dataset(
                    self.inputs, share, self.settings, self.seeds, device, committed
                ),
                self.keys,
                on_row=on_row,
                on_start=on_start,
            )
            if resumed is None:
                return None
            rows = run.rows(AttackRow.parse)
            summary = AttackSummary.of(rows, self.settings, resumed, time.perf_counter() - began)
            run.finish(totals=summary.record())
            return summary
        finally:
            run.close()


def plan_attack(request: AttackRequest, session: Session) -> AttackPlan:
    """Load, check and commit everything ``request`` needs, on every rank (a collective), as
    :func:`~ancer_cli.certify.plan_certify` does."""
    return plan_attack_inputs(None, request, session)


def plan_attack_inputs(
    resolved: SmoothedInputs | None,
    request: AttackRequest,
    session: Session,
) -> AttackPlan:
    """:func:`plan_attack` for inputs resolved by the caller (``None``: from the request), e.g.
    :func:`~ancer_cli.inputs.in_memory_inputs`; ``request.inputs`` then gives only the seed."""
    job = request.job
    if not job.eps:
        raise AncerError("give at least one --eps (the attacker's radius)")
    for eps in job.eps:
        if not (math.isfinite(eps) and eps >= 0):
            raise AncerError(f"--eps must be a finite number >= 0, got {eps}")
    run = Run(request.out, session.ranks, resume=request.resume, force=request.force)

    def plan() -> AttackPlan:
        run.open()
        source: dict[str, Any] = {}
        record = None
        if request.results is not None:
            if not Path(request.results).is_file():
                raise AncerError(f"results file {request.results} does not exist")
            record = read_results_record(request.results)
            source = {
                "results": str(Path(request.results).resolve()),
                "results_sha256": rows_digest(request.results),
            }
        if resolved is not None:
            inputs = resolved
        elif request.results is not None:
            spec = results_spec(request.results, record, request.inputs)
            inputs = _results_inputs(request.results, spec, session)
        else:
            inputs = resolve_inputs(request.inputs, session)
        settings = _settings(job, inputs, record)
        run.layout(ATTACK_COLUMNS, key=attack_key)
        recorded = {
            "format": "ancer-attack/1",
            "arguments": {**inputs.arguments, **source, **settings.record()},
            "labels": labels_record(inputs.data),
            **sound_record(inputs),
            "world_size": session.ranks.world_size,  # not an argument: resumes on any number
            **provenance(session.device),
        }
        segments = run.commit(recorded, inputs.commitment(), inputs.indices, request.inputs.seed)
        return AttackPlan(request, inputs, settings, segments.seeds(), run)

    try:
        return collective(session.ranks, plan)
    except BaseException:
        run.close()
        raise


def _results_inputs(results: Path, spec: InputsSpec, session: Session) -> SmoothedInputs:
    """The inputs of ``spec`` restricted to the rows of ``results`` (and to ``--skip``/``--max``
    among them)."""
    rows = sorted(set(read_results(results)["idx"].tolist()))
    inputs = resolve_inputs(replace(spec, skip=1, max_index=None), session)
    return rows_of(inputs, rows, spec, results)


def _settings(
    job: AttackJob, inputs: SmoothedInputs, record: Mapping[str, Any] | None
) -> AttackSettings:
    """The job's settings made concrete: the threat (default: the noise's norm), the eps sorted,
    PREDICT's ``N`` and ``alpha`` (default: the results file's, else predict's defaults)."""
    arguments = (record or {}).get("arguments") or {}
    recorded_n, recorded_alpha = arguments.get("N"), arguments.get("alpha")
    default = PredictConfig()
    num = job.num or (recorded_n if isinstance(recorded_n, int) else default.num)
    alpha = job.alpha or (
        float(recorded_alpha) if isinstance(recorded_alpha, (int, float)) else default.alpha
    )
    threat = job.threat if job.threat is not None else Threat(inputs.norm.value)
    eps = tuple(sorted({float(e) + 0.0 for e in job.eps}))
    judge = PredictConfig(num, alpha, job.batch_size)
    return AttackSettings(threat, eps, job.attack, judge, job.random)
