"""The dataset loop of ``ancer certify`` over :mod:`ancer_cli.core.smoothing`: a request becomes a
plan (what is smoothed, how it is sampled, the run), the plan's inputs become certificates, the
certificates rows of the results file (then, for per-input thetas, the memory pass).

What is smoothed comes from :func:`ancer_cli.inputs.resolve_inputs`; the start and end of the run
(lock, commitment, seeds, resume, sidecar) are :class:`ancer_cli.run.skeleton.Run`'s. This module
keeps certify's config, its row, its per-input loop and its totals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm as normal

from ancer_cli.core.choices import Norm
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.noise import Stream, Theta, input_generator
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.sequential import SequentialPlan
from ancer_cli.core.smoothing import (
    ABSTAIN,
    MAX_INPUTS_PER_GROUP,
    certify_many,
    certify_sequential_many,
    inputs_per_group,
)
from ancer_cli.distributed import Session, collective
from ancer_cli.inputs import (
    SmoothedInputs,
    input_groups,
    labels_record,
    resolve_inputs,
    sound_record,
)
from ancer_cli.models.denoisers import inputs_per_theta
from ancer_cli.results import CERTIFICATE_COLUMNS, SEQUENTIAL_COLUMNS
from ancer_cli.run.certificates import (
    CertificateRow,
    CertifySummary,
    apply_memory,
    row_linf_half_width,
)
from ancer_cli.run.skeleton import Run
from ancer_cli.run.spec import InputsSpec
from ancer_cli.runtime import provenance
from ancer_cli.settings import CertifyConfig, CertifyMethod, Sequential

# ---------------------------------------------------------------------------------------------
# rows


def certify_columns(config: CertifyConfig) -> tuple[str, ...]:
    """The results file's columns: the eight and radius_linf, plus samples and stop when
    sequential."""
    extra = SEQUENTIAL_COLUMNS if config.sequential is not None else ()
    return (*CERTIFICATE_COLUMNS, *extra)


# ---------------------------------------------------------------------------------------------
# sequential settings -> the kernel's plan


def sequential_plan(settings: Sequential, cap: int, alpha: float, norm: Norm) -> SequentialPlan:
    """The stopping plan of sequential ``settings``; in radius mode its thresholds come per
    input (:func:`radius_thresholds`), the plan's own ``(1/2,)`` only selects the mode."""
    return SequentialPlan(
        cap=cap,
        alpha=alpha,
        p_needed=(0.5,) if settings.radii else None,
        norm=norm,
        tol=settings.tolerance,
        cap_share=settings.cap_share,
        first=settings.first,
        growth=settings.growth,
    )


def radius_thresholds(settings: Sequential, theta: Theta, norm: Norm) -> np.ndarray:
    """The probabilities ``pA`` must exceed for each radius (sorted, with 1/2 first): l2
    ``Phi(R / s)``, l1 ``(1 + R / s)/2`` with ``s = min(theta)`` (``geomean`` for ``proxy``);
    ``inf`` where no ``pA < 1`` reaches the radius."""
    scale = geometric_mean(theta) if settings.metric == "proxy" else min_theta(theta)
    ratio = np.asarray(sorted(settings.radii), dtype=np.float64) / scale
    needed = normal.cdf(ratio) if norm is Norm.l2 else (1.0 + ratio) / 2.0
    needed = np.where(needed < 1.0, needed, np.inf)
    return np.concatenate([[0.5], np.maximum(needed, 0.5)])


# ---------------------------------------------------------------------------------------------
# the per-input loop


def certify_dataset(
    inputs: SmoothedInputs,
    indices: Iterable[int],
    config: CertifyConfig,
    seeds: Mapping[int, int],
    device: torch.device,
    committed: Mapping[int, str] | None,
) -> Iterator[CertificateRow]:
    """Certify each dataset index in order and yield its row.

    Every input has its own random stream seeded from ``(seeds[idx], idx)``, so a row depends
    only on the seed, the model, the input and its theta -- not on which inputs come before.
    When a forward pass would otherwise be short (small ``N`` against the batch size), a few
    consecutive inputs share forward passes (:func:`certify_many`), which changes no vote.
    ``time`` is the wall time of sampling and bounding (theta loading excluded), shared evenly
    by the inputs of a group. ``committed``: the input digests the run recorded (an input that
    changed since is an error).
    """
    sampling, sequential, model = config.sampling, config.sequential, inputs.model
    if sequential is None:
        group = inputs_per_group(sampling.n_selection, sampling.n_estimation, sampling.batch_size)
    else:
        plan = sequential_plan(sequential, sampling.n_estimation, sampling.alpha, inputs.norm)
        # the first looks are short: enough inputs to fill a forward pass with them
        group = max(1, min(MAX_INPUTS_PER_GROUP, sampling.batch_size // plan.first))
    group = inputs_per_theta(model, group)  # a denoiser sees one input's theta per pass
    for chosen in input_groups(inputs, indices, group, device, committed):
        tell_thetas(model, chosen.thetas)
        generators = [
            input_generator(seeds[idx], idx, device, Stream.certify) for idx in chosen.indices
        ]
        began = time.perf_counter()
        if sequential is None:
            certificates = certify_many(model, chosen.xs, chosen.laws, sampling, generators)
        else:
            needed = None
            if sequential.radii:
                needed = np.stack(
                    [radius_thresholds(sequential, th, inputs.norm) for th in chosen.thetas]
                )
            certificates = certify_sequential_many(
                model, chosen.xs, chosen.laws, sampling, plan, generators, needed
            )
        seconds = (time.perf_counter() - began) / len(chosen.indices)
        dim = chosen.xs[0].numel()
        for idx, label, law, certificate in zip(
            chosen.indices, chosen.labels, chosen.laws, certificates, strict=True
        ):
            extra = (
                ()
                if sequential is None
                else (str(sampling.n_selection + certificate.n_estimation), str(certificate.stop))
            )
            yield CertificateRow(
                idx=idx,
                label=label,
                predict=certificate.prediction,
                radius=certificate.radius,
                radius_proxy=certificate.radius_proxy,
                correct=int(certificate.prediction == label and certificate.prediction != ABSTAIN),
                min_sigma=certificate.min_theta,
                seconds=seconds,
                radius_linf=row_linf_half_width(law.theta, certificate.radius, law.norm, dim),
                extra=extra,
            )


# ---------------------------------------------------------------------------------------------
# totals of sequential certification


@dataclass(frozen=True)
class SampleSummary:
    """Samples per input (selection and estimation) of a sequential run, and why it stopped."""

    mean: float
    median: float
    cap: int
    stops: dict[str, int]

    @staticmethod
    def of(rows: Sequence[CertificateRow], cap: int) -> SampleSummary | None:
        """Of rows whose extra fields are samples and stop (``None`` for other rows)."""
        counts = [row.samples for row in rows if row.samples is not None]
        if not counts:
            return None
        stops: dict[str, int] = {}
        for row in rows:
            stops[row.extra[1]] = stops.get(row.extra[1], 0) + 1
        return SampleSummary(
            mean=float(np.mean(counts)),
            median=float(np.median(counts)),
            cap=cap,
            stops=dict(sorted(stops.items())),
        )

    def record(self) -> dict[str, Any]:
        return {
            "mean_samples_per_input": self.mean,
            "median_samples_per_input": self.median,
            "samples_cap_per_input": self.cap,
            "stops": self.stops,
        }


@dataclass(frozen=True)
class CertifyOutcome:
    """What a certify run reports: the totals of its rows and, when sequential, its samples."""

    totals: CertifySummary
    samples: SampleSummary | None = None

    def record(self) -> dict[str, Any]:
        """The sidecar's ``totals``."""
        extra = self.samples.record() if self.samples is not None else {}
        return {**self.totals.record(), **extra}


# ---------------------------------------------------------------------------------------------
# a certify run: request -> plan -> rows


@dataclass(frozen=True)
class CertifyRequest:
    """What ``ancer certify`` is asked to do: ``inputs`` says what to smooth, with which thetas,
    on which inputs (see :class:`~ancer_cli.run.spec.InputsSpec`); the rest how to certify."""

    out: Path = Path("results.csv")
    inputs: InputsSpec = field(default_factory=InputsSpec)
    config: CertifyConfig = CertifyConfig()
    memory: bool | None = None
    resume: bool = False
    force: bool = False


@dataclass
class CertifyPlan:
    """Everything a certify run needs, loaded, checked and committed: what is smoothed, how it
    is sampled, whether the memory pass runs, each input's seed and the run (its output, lock
    and record)."""

    request: CertifyRequest
    inputs: SmoothedInputs
    config: CertifyConfig
    memory: bool
    seeds: dict[int, int]
    run: Run

    @property
    def indices(self) -> list[int]:
        return self.inputs.indices

    def execute(
        self,
        session: Session,
        on_row: Callable[[CertificateRow], None] | None = None,
        on_memory: Callable[[int, int], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> CertifyOutcome | None:
        """Certify the plan's inputs into its results file and sidecar; the summary on rank 0,
        ``None`` elsewhere.

        Rows are appended and flushed one by one, in index order -- into the results file
        itself, or, with the memory pass, into ``results.csv.pre-memory``, from which the pass
        then writes the results file once every input is certified."""
        began, device, run = time.perf_counter(), session.device, self.run
        assert run.commitment is not None
        expected = run.commitment.inputs
        try:
            resumed = run.write(
                lambda share: certify_dataset(
                    self.inputs, share, self.config, self.seeds, device, expected
                ),
                self.indices,
                on_row=on_row,
                on_start=on_start,
            )
            if resumed is None:
                return None
            rows = run.rows(CertificateRow.parse)
            memory = None
            if self.memory:
                rows, memory = apply_memory(rows, self.inputs, device, on_memory)
            sampling = self.config.sampling
            outcome = CertifyOutcome(
                CertifySummary.of(rows, resumed, time.perf_counter() - began, memory),
                SampleSummary.of(rows, sampling.n_selection + sampling.n_estimation),
            )
            memory_record = (
                memory.record(run.output.working) if memory is not None else {"enabled": False}
            )
            run.finish(
                rows if self.memory else None, memory=memory_record, totals=outcome.record()
            )
            return outcome
        finally:
            run.close()


def plan_certify(request: CertifyRequest, session: Session) -> CertifyPlan:
    """Load, check and commit everything ``request`` needs, on every rank (a collective: if one
    rank fails, all raise): lock the output, resolve what is smoothed (defaults from the thetas'
    manifest, then from the model file), record the commitment, then draw the seeds of the
    inputs not committed before (fresh OS entropy unless ``--seed``)."""
    return plan_certify_inputs(lambda: resolve_inputs(request.inputs, session), request, session)


def plan_certify_inputs(
    resolve: Callable[[], SmoothedInputs] | SmoothedInputs,
    request: CertifyRequest,
    session: Session,
) -> CertifyPlan:
    """:func:`plan_certify` for inputs resolved by the caller (``resolve()``, called once the
    output is locked; or the inputs themselves, e.g. from
    :func:`~ancer_cli.inputs.in_memory_inputs`); ``request.inputs`` gives only the seed."""
    run = Run(request.out, session.ranks, resume=request.resume, force=request.force)

    def plan() -> CertifyPlan:
        run.open()
        inputs = resolve() if callable(resolve) else resolve
        fixed = inputs.method is CertifyMethod.fixed
        memory = not fixed if request.memory is None else request.memory
        run.layout(certify_columns(request.config), memory)
        sampling, sequential = request.config.sampling, request.config.sequential
        record = {
            "format": "ancer-results/1",
            "arguments": {
                **inputs.arguments,
                "N0": sampling.n_selection,
                "N": sampling.n_estimation,
                "alpha": sampling.alpha,
                "batch_size": sampling.batch_size,
                "memory": memory,
                **({"sequential": sequential.record()} if sequential else {}),
            },
            "labels": labels_record(inputs.data),
            **sound_record(inputs),
            "world_size": session.ranks.world_size,  # not an argument: resumes on any number
            **provenance(session.device),
        }
        segments = run.commit(record, inputs.commitment(), inputs.indices, request.inputs.seed)
        return CertifyPlan(request, inputs, request.config, memory, segments.seeds(), run)

    try:
        return collective(session.ranks, plan)
    except BaseException:
        run.close()
        raise
