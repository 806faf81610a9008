"""The dataset loop of ``ancer certify`` over :mod:`ancer_cli.core.smoothing`: a request becomes a
plan (model, data, thetas, indices, record), the plan's inputs become certificates, the
certificates rows of the results file (then, for per-input thetas, the memory pass).

The inputs come from :func:`ancer_cli.inputs.resolve_inputs`, the rows are written by
:func:`ancer_cli.results.write_rows` (resumable, sharded across processes)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm as normal
from torch import nn

from ancer_cli.artifacts import atomic_writer, check_new_output, utc_now, write_json
from ancer_cli.core.bounds import DEFAULT_ALPHA
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.memory import Claim, memory_pass
from ancer_cli.core.noise import Norm, Stream, Theta, input_generator
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.sequential import SequentialPlan
from ancer_cli.core.smoothing import (
    ABSTAIN,
    MAX_INPUTS_PER_GROUP,
    certify_many,
    certify_sequential_many,
    inputs_per_group,
)
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
    RESULT_COLUMNS,
    SEQUENTIAL_COLUMNS,
    check_resume,
    format_result_row,
    pre_memory_path,
    read_results,
    results_sidecar_path,
    run_seed,
    write_rows,
)
from ancer_cli.runtime import provenance
from ancer_cli.thetas import CertifyMethod, ThetaSource


@dataclass(frozen=True)
class Sequential:
    """Sequential (anytime-valid) certification instead of a fixed ``N``.

    With ``radii``, *radius mode*: decide for each input whether it is certified at each radius
    (in the unit of ``metric``: ``radius`` = ``min(theta) * gap``, ``proxy`` = ``geomean(theta)
    * gap``) and stop as soon as every radius is decided. Without, *adaptive mode*: stop early
    for inputs that will abstain and once the cap could raise the gap by at most ``tolerance``
    (relative). ``N`` is the cap. See :class:`ancer_cli.core.sequential.SequentialPlan`.
    """

    radii: tuple[float, ...] = ()
    metric: str = "radius"
    tolerance: float = SequentialPlan.tol
    first: int = SequentialPlan.first
    growth: float = SequentialPlan.growth
    cap_share: float = SequentialPlan.cap_share

    @property
    def mode(self) -> str:
        return "radius" if self.radii else "adaptive"

    def plan(self, cap: int, alpha: float, norm: Norm) -> SequentialPlan:
        """The stopping plan; in radius mode its thresholds come per input
        (:meth:`thresholds`), the plan's own ``(1/2,)`` only selects the mode."""
        return SequentialPlan(
            cap=cap,
            alpha=alpha,
            p_needed=(0.5,) if self.radii else None,
            norm=norm,
            tol=self.tolerance,
            cap_share=self.cap_share,
            first=self.first,
            growth=self.growth,
        )

    def thresholds(self, theta: Theta, norm: Norm) -> np.ndarray:
        """The probabilities ``pA`` must exceed for each radius (sorted, with 1/2 first):
        l2 ``Phi(R / s)``, l1 ``(1 + R / s)/2`` with ``s = min(theta)`` (``geomean`` for
        ``proxy``); ``inf`` where no ``pA < 1`` reaches the radius."""
        scale = geometric_mean(theta) if self.metric == "proxy" else min_theta(theta)
        ratio = np.asarray(sorted(self.radii), dtype=np.float64) / scale
        needed = normal.cdf(ratio) if norm is Norm.l2 else (1.0 + ratio) / 2.0
        needed = np.where(needed < 1.0, needed, np.inf)
        return np.concatenate([[0.5], np.maximum(needed, 0.5)])

    def record(self) -> dict[str, Any]:
        """What the sidecar records about the mode."""
        return {"mode": self.mode, **asdict(self), "radii": sorted(self.radii)}


@dataclass(frozen=True)
class CertifyConfig:
    """Sampling and confidence settings; the defaults are the command's defaults.

    ``sequential`` switches from Cohen et al.'s fixed ``N`` (the default) to sequential
    certification with ``n_estimation`` as the cap."""

    norm: Norm = Norm.l2
    n_selection: int = 100
    n_estimation: int = 100_000
    alpha: float = DEFAULT_ALPHA
    batch_size: int = 1000
    seed: int = 0
    sequential: Sequential | None = None
    sound: int | None = None
    """the data's grid levels ``s`` for sound sampling (:mod:`ancer_cli.core.sound`)"""

    @property
    def columns(self) -> tuple[str, ...]:
        """The results file's columns: the eight, plus samples and stop when sequential."""
        extra = SEQUENTIAL_COLUMNS if self.sequential is not None else ()
        return (*RESULT_COLUMNS, *extra)


@dataclass(frozen=True)
class ResultRow:
    """One line of the results file."""

    idx: int
    label: int
    predict: int
    radius: float
    radius_proxy: float
    correct: int
    min_sigma: float
    seconds: float
    samples: int | None = None
    stop: str | None = None

    def extra(self) -> tuple[str, ...]:
        """The fields after the eight: samples used and why sampling stopped (sequential)."""
        if self.samples is None:
            return ()
        return (str(self.samples), str(self.stop))

    def line(self) -> str:
        return format_result_row(
            self.idx,
            self.label,
            self.predict,
            self.radius,
            self.radius_proxy,
            self.correct,
            self.min_sigma,
            self.seconds,
            self.extra(),
        )


def certify_dataset(
    model: nn.Module,
    data: LoadedData,
    indices: Iterable[int],
    thetas: ThetaSource,
    config: CertifyConfig,
    device: torch.device,
) -> Iterator[ResultRow]:
    """Certify each dataset index in order and yield its row.

    Every input has its own random stream seeded from ``(config.seed, idx)``, so a row depends
    only on the seed, the model, the input and its theta -- not on which inputs come before.
    When a forward pass would otherwise be short (small ``N`` against ``batch_size``), a few
    consecutive inputs share forward passes (:func:`certify_many`), which changes no vote.
    ``time`` is the wall time of sampling and bounding (theta loading excluded), shared evenly
    by the inputs of a group.
    """
    sequential = config.sequential
    if sequential is None:
        group = inputs_per_group(config.n_selection, config.n_estimation, config.batch_size)
    else:
        plan = sequential.plan(config.n_estimation, config.alpha, config.norm)
        # the first looks are short: enough inputs to fill a forward pass with them
        group = max(1, min(MAX_INPUTS_PER_GROUP, config.batch_size // plan.first))
    group = inputs_per_theta(model, group)  # a denoiser sees one input's theta per pass
    for chosen in input_groups(data, indices, thetas, group, device, config.sound):
        tell_thetas(model, chosen.thetas)
        generators = [
            input_generator(config.seed, idx, device, Stream.certify) for idx in chosen.indices
        ]
        began = time.perf_counter()
        if sequential is None:
            certificates = certify_many(
                model,
                chosen.xs,
                chosen.thetas,
                config.norm,
                config.n_selection,
                config.n_estimation,
                config.alpha,
                config.batch_size,
                generators,
                sound=config.sound,
            )
        else:
            needed = None
            if sequential.radii:
                needed = np.stack([sequential.thresholds(th, config.norm) for th in chosen.thetas])
            certificates = certify_sequential_many(
                model,
                chosen.xs,
                chosen.thetas,
                config.norm,
                config.n_selection,
                plan,
                config.batch_size,
                generators,
                needed,
                sound=config.sound,
            )
        seconds = (time.perf_counter() - began) / len(chosen.indices)
        for idx, label, certificate in zip(
            chosen.indices, chosen.labels, certificates, strict=True
        ):
            yield ResultRow(
                idx=idx,
                label=label,
                predict=certificate.prediction,
                radius=certificate.radius,
                radius_proxy=certificate.radius_proxy,
                correct=int(certificate.prediction == label and certificate.prediction != ABSTAIN),
                min_sigma=certificate.min_theta,
                seconds=seconds,
                samples=None
                if sequential is None
                else config.n_selection + certificate.n_estimation,
                stop=certificate.stop,
            )


@dataclass(frozen=True)
class MemorySummary:
    """What the memory pass changed: inputs inside an earlier region, inputs whose gap shrank."""

    reassigned: list[int]
    shrunk: list[int]
    changed_predictions: list[int]


@dataclass(frozen=True)
class CertifySummary:
    """Totals of a certify run; ``labeled`` counts the rows with a label (an unlabeled image
    folder has none: then accuracy and ``mean_radius``, the average certified radius, are NaN)."""

    certified: int
    resumed: int
    correct: int
    abstained: int
    mean_radius: float
    seconds: float
    memory: MemorySummary | None
    labeled: int = 0
    samples: SampleSummary | None = None

    @property
    def accuracy(self) -> float:
        """Certified accuracy at radius 0 of the labeled rows (NaN without labels)."""
        return self.correct / self.labeled if self.labeled else math.nan


@dataclass(frozen=True)
class SampleSummary:
    """Samples per input (selection and estimation) of a sequential run, and why it stopped."""

    mean: float
    median: float
    cap: int
    stops: dict[str, int]

    @staticmethod
    def of(frame: pd.DataFrame, cap: int) -> SampleSummary | None:
        if "samples" not in frame.columns or not len(frame):
            return None
        stops = frame["stop"].value_counts().sort_index()
        return SampleSummary(
            mean=float(frame["samples"].mean()),
            median=float(frame["samples"].median()),
            cap=cap,
            stops={str(k): int(v) for k, v in stops.items()},
        )

    def record(self) -> dict[str, Any]:
        return {
            "mean_samples_per_input": self.mean,
            "median_samples_per_input": self.median,
            "samples_cap_per_input": self.cap,
            "stops": self.stops,
        }


def apply_memory(
    rows: pd.DataFrame,
    lines: list[str],
    data: LoadedData,
    thetas: ThetaSource,
    norm: Norm,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], MemorySummary]:
    """Run the memory pass over certified rows (index order) and return the final TSV lines.

    ``lines`` are the rows as written; a row the pass does not change is kept verbatim, a
    changed one keeps its fields after the eight columns. The gap of each row is recovered as
    ``radius / min(theta)`` from the written radius (rounded toward zero) and the exact theta,
    so it never exceeds the certified gap.
    """
    claims = []
    for idx, predict, radius in zip(rows["idx"], rows["predict"], rows["radius"], strict=True):
        idx = int(idx)
        gap = 0.0 if predict == ABSTAIN else float(radius) / min_theta(thetas(idx))
        claims.append(Claim(idx=idx, predict=int(predict), gap=gap))
    decisions = memory_pass(
        claims, lambda i: data.dataset[i][0], thetas, norm, device, progress=progress
    )
    final = []
    for decision, line, label, seconds in zip(
        decisions, lines, rows["label"], rows["time"], strict=True
    ):
        if not (decision.reassigned or decision.shrunk):
            final.append(line)
            continue
        theta = thetas(decision.theta_idx)
        abstained = decision.predict == ABSTAIN
        gap = 0.0 if abstained else decision.gap
        final.append(
            format_result_row(
                decision.idx,
                int(label),
                decision.predict,
                min_theta(theta) * gap,
                geometric_mean(theta) * gap,
                int(not abstained and decision.predict == int(label)),
                min_theta(theta),
                float(seconds),
                line.rstrip("\n").split("\t")[len(RESULT_COLUMNS) :],  # samples, stop
            )
        )
    before = dict(zip(rows["idx"].astype(int), rows["predict"].astype(int), strict=True))
    summary = MemorySummary(
        reassigned=[d.idx for d in decisions if d.reassigned],
        shrunk=[d.idx for d in decisions if d.shrunk],
        changed_predictions=[d.idx for d in decisions if d.predict != before[d.idx]],
    )
    return final, summary


def run_certify(
    model: nn.Module,
    data: LoadedData,
    indices: list[int],
    thetas: ThetaSource,
    config: CertifyConfig,
    device: torch.device,
    out: Path,
    record: dict[str, Any],
    resume: bool = False,
    memory: bool = False,
    on_row: Callable[[ResultRow], None] | None = None,
    on_memory: Callable[[int, int], None] | None = None,
    ranks: Ranks = SINGLE,
    on_start: Callable[[int, int], None] | None = None,
) -> CertifySummary | None:
    """Certify ``indices`` into the results file ``out`` and its JSON sidecar.

    Rows are appended and flushed one by one, in index order -- into ``out`` itself, or, with
    ``memory``, into ``out.pre-memory``, from which the memory pass then writes ``out``
    atomically once every input is certified. With ``resume``, rows already written are kept
    (the sidecar must record the same ``record["arguments"]``) and only the remaining indices
    are certified, by any number of processes (see :func:`write_rows`). The sidecar says
    ``"complete": false`` until the end.

    In a distributed run each rank certifies its share into its own shard file; rank 0 merges
    the shards in index order, runs the memory pass, writes the sidecar and returns the
    summary (other ranks return ``None``).
    """
    sidecar = results_sidecar_path(out)
    working = pre_memory_path(out) if memory else out
    began = time.perf_counter()
    started = utc_now()
    resumed = write_rows(
        lambda share: certify_dataset(model, data, share, thetas, config, device),
        indices,
        out,
        working,
        record,
        columns=config.columns,
        resume=resume,
        on_row=on_row,
        on_start=on_start,
        ranks=ranks,
    )
    if resumed is None:
        return None
    memory_summary = None
    if memory:
        lines = working.read_text().splitlines(keepends=True)[1:]
        lines, memory_summary = apply_memory(
            read_results(working), lines, data, thetas, config.norm, device, on_memory
        )
        with atomic_writer(out) as handle:
            handle.write("\t".join(config.columns) + "\n")
            handle.writelines(lines)
    frame = read_results(out)
    scored = frame[frame["label"] != UNLABELED]
    summary = CertifySummary(
        certified=len(frame),
        resumed=resumed,
        correct=int(frame["correct"].sum()),
        abstained=int((frame["predict"] == ABSTAIN).sum()),
        mean_radius=float((scored["radius"] * scored["correct"]).mean())
        if len(scored)
        else math.nan,
        seconds=time.perf_counter() - began,
        memory=memory_summary,
        labeled=len(scored),
        samples=SampleSummary.of(frame, config.n_selection + config.n_estimation),
    )
    memory_record: dict[str, Any] = {"enabled": memory}
    if memory_summary is not None:
        memory_record.update(
            before_pass=str(working),
            reassigned=len(memory_summary.reassigned),
            shrunk=len(memory_summary.shrunk),
            changed_predictions=len(memory_summary.changed_predictions),
            reassigned_indices=memory_summary.reassigned,
            shrunk_indices=memory_summary.shrunk,
        )
    write_json(
        sidecar,
        {
            **record,
            "complete": True,
            "started": started,
            "finished": utc_now(),
            "memory": memory_record,
            "totals": {
                "inputs": summary.certified,
                "resumed_rows": summary.resumed,
                "correct": summary.correct,
                "abstained": summary.abstained,
                "labeled": summary.labeled,
                "certified_accuracy_at_0": _finite(summary.accuracy),
                "average_certified_radius": _finite(summary.mean_radius),
                "seconds_this_run": summary.seconds,
                **(summary.samples.record() if summary.samples is not None else {}),
            },
        },
    )
    return summary


# ---------------------------------------------------------------------------------------------
# a certify run: request -> plan -> rows


@dataclass(frozen=True)
class CertifyRequest:
    """What ``ancer certify`` is asked to do: ``inputs`` says what to smooth, with which thetas,
    on which inputs (see :class:`~ancer_cli.inputs.InputsSpec`); the rest how to certify."""

    out: Path = Path("results.csv")
    inputs: InputsSpec = field(default_factory=InputsSpec)
    n_selection: int = CertifyConfig.n_selection
    n_estimation: int = CertifyConfig.n_estimation
    alpha: float = CertifyConfig.alpha
    batch_size: int = CertifyConfig.batch_size
    memory: bool | None = None
    sequential: Sequential | None = None
    resume: bool = False
    force: bool = False


@dataclass(frozen=True)
class CertifyPlan:
    """Everything a certify run needs, loaded and checked: the base classifier with its speed
    options, the data, each input's theta, the indices to certify and the run's record."""

    request: CertifyRequest
    model: nn.Module
    data: LoadedData
    method: CertifyMethod
    thetas: ThetaSource
    theta_description: str
    indices: list[int]
    config: CertifyConfig
    memory: bool
    record: dict[str, Any]
    logits: int = 0

    def run(
        self,
        session: Session,
        on_row: Callable[[ResultRow], None] | None = None,
        on_memory: Callable[[int, int], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> CertifySummary | None:
        """:func:`run_certify` of this plan (``None`` on ranks other than 0)."""
        return run_certify(
            self.model,
            self.data,
            self.indices,
            self.thetas,
            self.config,
            session.device,
            self.request.out,
            self.record,
            resume=self.request.resume,
            memory=self.memory,
            on_row=on_row,
            on_memory=on_memory,
            ranks=session.ranks,
            on_start=on_start,
        )


def plan_certify(request: CertifyRequest, session: Session) -> CertifyPlan:
    """Load and check everything ``request`` needs, on every rank (a collective: if one rank
    fails, all raise). Defaults come from the thetas' manifest, then from the model file; the
    seed from :func:`~ancer_cli.results.run_seed` (fresh OS entropy unless given or resumed)."""
    seed = run_seed(request.inputs.seed, request.out, request.resume, session.ranks)
    request = replace(request, inputs=replace(request.inputs, seed=seed))
    return collective(session.ranks, lambda: _plan(request, session))


def _plan(request: CertifyRequest, session: Session) -> CertifyPlan:
    check_new_output(request.out, force=request.force, resume=request.resume)
    inputs = resolve_inputs(request.inputs, session)
    method = inputs.method
    memory = method is not CertifyMethod.fixed if request.memory is None else request.memory
    config = CertifyConfig(
        norm=inputs.norm,
        n_selection=request.n_selection,
        n_estimation=request.n_estimation,
        alpha=request.alpha,
        batch_size=request.batch_size,
        seed=request.inputs.seed,
        sequential=request.sequential,
        sound=inputs.grid_levels,
    )
    record = {
        "format": "ancer-results/1",
        "arguments": {
            **inputs.arguments,
            "N0": request.n_selection,
            "N": request.n_estimation,
            "alpha": request.alpha,
            "batch_size": request.batch_size,
            "memory": memory,
            **({"sequential": request.sequential.record()} if request.sequential else {}),
        },
        "labels": labels_record(inputs.data),
        **sound_record(inputs),
        "world_size": session.ranks.world_size,  # not an argument: a run resumes on any number
        **provenance(session.device),
    }
    if request.resume:
        check_resume(request.out, record["arguments"], memory)
    return CertifyPlan(
        request=request,
        model=inputs.model,
        data=inputs.data,
        method=method,
        thetas=inputs.thetas,
        theta_description=inputs.description,
        indices=inputs.indices,
        config=config,
        memory=memory,
        record=record,
        logits=inputs.logits,
    )


def _finite(value: float) -> float | None:
    """``value``, or ``None`` (JSON null) where it is NaN: a quantity without labels."""
    return None if math.isnan(value) else value
