"""``ancer recertify`` (also ``ancer certify --reuse``): certify a changed model (quantized,
pruned, fine-tuned, lower precision) from an earlier certify run of the original, with
:mod:`ancer_cli.core.incremental` -- a request becomes a plan (the earlier run read back and
checked, both base classifiers, what is smoothed), the plan's inputs become rows of the results
file (then, for per-input thetas, the memory pass, as ``ancer certify`` runs it).

Each earlier certificate ``pA_lower`` (recovered from its written radius) less an anytime-valid
bound ``zeta`` on the two models' disagreements, counted by both models on fresh draws of this
run's own stream, is the changed model's certificate at the earlier level plus ``alpha_zeta``;
inputs where that would cost more than a tolerance of radius, or drop below a reported radius
the earlier certificate reached, are certified afresh at level ``alpha`` within the samples
certifying afresh costs. Rows carry two more columns: ``samples`` (noisy inputs evaluated by a
model: a draw both models see counts twice) and ``path``
(:class:`~ancer_cli.core.incremental.Route`).

The earlier run is read with the one mapping of run records
(:func:`~ancer_cli.run.spec.inputs_spec`), so the base classifier is carried over whole (a
denoiser included: the changed classifier takes the original's place behind it); its rows must
carry the digest its sidecar recorded, and every input must be the one it committed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ancer_cli.core.choices import REUSE_TOLERANCE, ZETA_SHARE, Precision, Sampling
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.incremental import (
    Earlier,
    PairClassifier,
    ReuseRule,
    Route,
    certify_incremental_many,
    recovered_p_a_lower,
)
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.precision import prepare_model, speed_options_record
from ancer_cli.core.smoothing import ABSTAIN, inputs_per_group
from ancer_cli.distributed import Session, collective
from ancer_cli.errors import AncerError, ModelError
from ancer_cli.inputs import (
    SmoothedInputs,
    check_compatible,
    input_groups,
    labels_record,
    resolve_inputs,
    sound_record,
)
from ancer_cli.models import load_model
from ancer_cli.models.checks import check_inputs, check_per_input
from ancer_cli.models.denoisers import inputs_per_theta
from ancer_cli.results import (
    CERTIFICATE_COLUMNS,
    PRE_MEMORY,
    RESULTS,
    RowsState,
    read_results_record,
    rows_state,
)
from ancer_cli.run.certificates import (
    CertificateRow,
    CertifySummary,
    MemorySummary,
    apply_memory,
    finite,
    read_certificate_rows,
    row_linf_half_width,
)
from ancer_cli.run.commit import Commitment, Segments
from ancer_cli.run.rows import pre_memory_path
from ancer_cli.run.skeleton import Run
from ancer_cli.run.spec import inputs_spec
from ancer_cli.runtime import provenance

REUSE_COLUMNS = (*CERTIFICATE_COLUMNS, "samples", "path")
"""The results file of a reuse run: the eight columns and radius_linf, samples and the route
(``path``)."""
REQUIRED_ARGUMENTS = {"N0": int, "N": int, "alpha": float, "batch_size": int, "model": str,
                      "model_sha256": str, "method": str, "norm": str, "dataset": str}  # fmt: skip
"""What an earlier run's sidecar must record for its certificates to be reused."""


# ---------------------------------------------------------------------------------------------
# the earlier run


@dataclass(frozen=True)
class EarlierRun:
    """A complete certify (or reuse) run read back and checked: its results file, sidecar
    ``record``, the certificates before any memory pass (``rows``, by dataset index, in order),
    its commitment and the level its rows hold at."""

    results: Path
    record: dict[str, Any]
    rows: list[CertificateRow]
    commitment: Commitment
    level: float
    """the probability with which one of its rows may be wrong, whatever its route"""

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.record["arguments"])

    def key_fields(self) -> dict[str, Any]:
        """What a reuse run's sidecar records about the earlier run."""
        args = self.arguments
        keys = ("method", "model", "model_sha256", "thetas", "sigma", "dataset", "split", "norm",
                "seed", "N0", "N", "alpha", "batch_size", "sound", "precision", "memory",
                "denoiser", "denoiser_sha256")  # fmt: skip
        return {"results": str(self.results), "level": self.level,
                **{key: args.get(key) for key in keys}}  # fmt: skip


def read_earlier(results: Path) -> EarlierRun:
    """Read and check the earlier run behind ``results``: a complete ``ancer certify`` (or
    reuse) run whose sidecar records its arguments, commitment and the digest of its rows, and
    whose files still hold those rows (edited, truncated or foreign files are refused). With a
    memory pass, its certificates are read from ``results.pre-memory``."""
    record = read_results_record(results)
    sidecar = f"{results}.json"
    if record is None:
        raise AncerError(
            f"{results} has no sidecar {sidecar}: reuse needs the run's record (N, model hash, "
            "method, commitment); certify the original model with ancer certify first"
        )
    arguments = record.get("arguments")
    if not isinstance(arguments, dict):
        raise AncerError(f"sidecar {sidecar} lacks arguments; it is not an ancer certify record")
    for key, kind in REQUIRED_ARGUMENTS.items():
        value = arguments.get(key)
        accepted = (int, float) if kind is float else (kind,)  # JSON writes 0.5 but also 1
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise AncerError(
                f"sidecar {sidecar} lacks arguments.{key} (a {kind.__name__}): reuse needs the "
                "run's N0, N, alpha, batch size, model and its hash, method, norm and dataset"
            )
    if record.get("complete") is not True:
        raise AncerError(f"{results} is an unfinished run; finish it with --resume first")
    if arguments.get("sequential"):
        raise AncerError(
            f"{results} was certified sequentially: its rows bound pA at data-dependent sample "
            "sizes; reuse needs a fixed-N run"
        )
    memory = bool(arguments.get("memory"))
    rows_file = pre_memory_path(results) if memory else Path(results)
    role = PRE_MEMORY if memory else RESULTS
    state = rows_state(rows_file, record, role)
    if state is RowsState.undigested:
        raise AncerError(
            f"sidecar {sidecar} holds no digest of {rows_file.name} (an older ancer wrote it, or "
            "it was edited); certify the original model again"
        )
    if not rows_file.is_file():
        raise AncerError(
            f"{rows_file} is missing: reuse needs the certificates before the memory pass "
            f"of {results}"
        )
    if state is not RowsState.verified:
        raise AncerError(
            f"{rows_file} is not the file its run wrote (edited, truncated or replaced: its "
            f"digest differs from {sidecar}); reuse refuses it"
        )
    rows = read_certificate_rows(rows_file)
    commitment = Commitment.from_record(record, f"sidecar {sidecar}")
    committed = Segments.from_record(record, f"sidecar {sidecar}").committed
    if sorted(committed) != [row.idx for row in rows]:
        raise AncerError(
            f"{rows_file} holds rows for {len(rows)} inputs, its run committed {len(committed)}; "
            "the file is not the run's"
        )
    guarantee = record.get("guarantee")
    level = float(arguments["alpha"])
    if isinstance(guarantee, dict) and isinstance(guarantee.get("any_row"), (int, float)):
        level = float(guarantee["any_row"])  # a reuse run: its rows hold at their own level
    return EarlierRun(Path(results), record, rows, commitment, level)


# ---------------------------------------------------------------------------------------------
# rows


def route_of(row: CertificateRow) -> Route:
    """The route of a reuse run's row (its ``path`` column)."""
    return Route(row.extra[1])


@dataclass(frozen=True)
class ReuseSettings:
    """How a reuse run certifies: the earlier run's ``sampling`` and the reuse ``rule``."""

    sampling: Sampling
    rule: ReuseRule


def reuse_dataset(
    pair: PairClassifier,
    inputs: SmoothedInputs,
    indices: list[int],
    earlier: Mapping[int, CertificateRow],
    settings: ReuseSettings,
    seeds: Mapping[int, int],
    device: torch.device,
    committed: Mapping[int, str],
) -> Iterator[CertificateRow]:
    """The rows of ``indices`` in order: each input's earlier certificate reused for
    ``pair.changed`` or certified afresh (see
    :func:`~ancer_cli.core.incremental.certify_incremental_many`), on fresh draws of the input's
    own stream (seeded from ``(seeds[idx], idx)``), so a row does not depend on the other
    inputs. An input whose digest is no longer the ``committed`` one is refused."""
    sampling, rule = settings.sampling, settings.rule
    group = inputs_per_theta(
        pair, inputs_per_group(sampling.n_selection, sampling.n_estimation, sampling.batch_size)
    )
    for chosen in input_groups(inputs, indices, group, device, committed):
        tell_thetas(pair, chosen.thetas)
        floors = rule.floor_gaps(
            [earlier[idx].radius for idx in chosen.indices],
            [law.min_theta for law in chosen.laws],
        )
        certificates = [
            Earlier(
                earlier[idx].predict,
                0.0
                if earlier[idx].predict == ABSTAIN
                else recovered_p_a_lower(earlier[idx].radius, law.theta, law.norm),
                float(floor),
            )
            for idx, law, floor in zip(chosen.indices, chosen.laws, floors, strict=True)
        ]
        generators = [
            input_generator(seeds[idx], idx, device, Stream.certify) for idx in chosen.indices
        ]
        began = time.perf_counter()
        outcomes = certify_incremental_many(
            pair, chosen.xs, chosen.laws, sampling, certificates, rule, generators
        )
        elapsed = time.perf_counter() - began
        spent = sum(outcome.samples for outcome in outcomes)
        dim = chosen.xs[0].numel()
        for idx, label, law, outcome in zip(
            chosen.indices, chosen.labels, chosen.laws, outcomes, strict=True
        ):
            if outcome.certificate is not None:
                predict, gap = outcome.certificate.prediction, outcome.certificate.gap
            elif outcome.route is Route.reuse:
                predict, gap = earlier[idx].predict, law.gap(outcome.p_a_lower)
            else:
                predict, gap = ABSTAIN, 0.0
            yield CertificateRow(
                idx=idx, label=label, predict=predict, radius=law.min_theta * gap,
                radius_proxy=law.geomean_theta * gap,
                correct=int(predict == label and predict != ABSTAIN), min_sigma=law.min_theta,
                seconds=elapsed * (outcome.samples / spent if spent else 1.0 / len(outcomes)),
                radius_linf=row_linf_half_width(law.theta, law.min_theta * gap, law.norm, dim),
                extra=(str(outcome.samples), outcome.route.value),
            )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# a reuse run: request -> plan -> rows


@dataclass(frozen=True)
class ReuseRequest:
    """What ``ancer recertify RESULTS --model CHANGED`` is asked to do. ``alpha_zeta``
    ``None``: :data:`~ancer_cli.core.choices.ZETA_SHARE` of the earlier ``alpha``; ``seed``
    ``None``: fresh OS entropy, drawn once the run is committed (the seed of every draw)."""

    results: Path
    model: Path
    out: Path = Path("results.csv")
    alpha_zeta: float | None = None
    tolerance: float = REUSE_TOLERANCE
    radii: tuple[float, ...] = ()
    data_root: Path | None = None
    arch: str | None = None
    precision: Precision = Precision.fp32
    channels_last: bool = False
    seed: int | None = None
    resume: bool = False
    force: bool = False


@dataclass(frozen=True)
class ReuseSummary:
    """Totals of a reuse run: those of a certify run, and how many rows took each route."""

    totals: CertifySummary
    routes: dict[str, int]
    mean_samples: float
    scratch_samples: int
    guarantee: float


@dataclass
class ReusePlan:
    """Everything a reuse run needs, loaded, checked and committed."""

    request: ReuseRequest
    earlier: EarlierRun
    pair: PairClassifier
    inputs: SmoothedInputs
    certificates: dict[int, CertificateRow]
    settings: ReuseSettings
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
    ) -> ReuseSummary | None:
        """Write the rows (resumable, sharded), the memory pass and the sidecar; the summary on
        rank 0, ``None`` elsewhere."""
        began, device, run = time.perf_counter(), session.device, self.run
        assert run.commitment is not None
        committed = run.commitment.inputs
        try:
            resumed = run.write(
                lambda share: reuse_dataset(
                    self.pair, self.inputs, share, self.certificates, self.settings,
                    self.seeds, device, committed,
                ),
                self.indices, on_row=on_row, on_start=on_start,
            )  # fmt: skip
            if resumed is None:
                return None
            rows = run.rows(CertificateRow.parse)
            memory: MemorySummary | None = None
            if self.memory:
                rows, memory = apply_memory(rows, self.inputs, device, on_memory)
            totals = CertifySummary.of(rows, resumed, time.perf_counter() - began, memory)
            routes = {route.value: sum(route_of(row) is route for row in rows) for route in Route}
            sampling = self.settings.sampling
            summary = ReuseSummary(
                totals=totals,
                routes=routes,
                mean_samples=sum(row.samples or 0 for row in rows) / len(rows) if rows else math.nan,
                scratch_samples=sampling.n_selection + sampling.n_estimation,
                guarantee=self.run.record["guarantee"]["reuse_rows"],
            )
            memory_record = (
                memory.record(run.output.working)
                if memory is not None
                else {"enabled": False}
            )
            run.finish(
                rows if self.memory else None,
                memory=memory_record,
                totals={
                    **totals.record(),
                    "routes": routes,
                    "mean_samples_per_input": finite(summary.mean_samples),
                    "samples_from_scratch_per_input": summary.scratch_samples,
                },
            )
            return summary
        finally:
            run.close()


def plan_reuse(request: ReuseRequest, session: Session) -> ReusePlan:
    """Read the earlier run, load both base classifiers, its data and thetas, commit, and draw
    this run's seed -- on every rank (a collective: if one rank fails, all raise)."""
    run = Run(request.out, session.ranks, resume=request.resume, force=request.force)

    def plan() -> ReusePlan:
        run.open()
        return _plan(request, session, run)

    try:
        return collective(session.ranks, plan)
    except BaseException:
        run.close()
        raise


def _plan(request: ReuseRequest, session: Session, run: Run) -> ReusePlan:
    earlier = read_earlier(request.results)
    args = earlier.arguments
    spec = inputs_spec(args, f"sidecar {request.results}.json")
    spec = replace(spec, data_root=request.data_root or spec.data_root, arch=request.arch, seed=None)
    if spec.model is None or not spec.model.is_file():
        raise AncerError(
            f"the earlier run's model {args['model']} is missing: reuse counts where it and the "
            "changed model disagree; restore it"
        )
    inputs = resolve_inputs(spec, session)
    indices = [row.idx for row in earlier.rows]
    missing = sorted(set(indices) - set(inputs.indices))
    if missing:
        raise AncerError(
            f"{request.results} has a row for input {missing[0]}, which its arguments do not "
            "select; the file was edited"
        )
    inputs = replace(inputs, indices=indices)
    current = inputs.commitment()
    changed_parts = earlier.commitment.differences(current, indices)
    if changed_parts:
        raise AncerError(
            f"{', '.join(changed_parts)} changed since {request.results} was certified; reuse "
            "needs the same original model, denoiser, thetas and inputs"
        )
    changed = load_model(request.model, session.device, arch=request.arch)
    data = inputs.data
    if changed.dataset is not None and changed.dataset != data.info.name:
        raise ModelError(
            f"model {request.model} was made for {changed.dataset}, the earlier run certified "
            f"{data.info.name}; reuse needs a changed version of the same model"
        )
    shape = tuple(data.dataset[0][0].shape)
    if changed.input_shape is not None and tuple(changed.input_shape) != shape:
        raise ModelError(
            f"model {request.model} takes inputs of shape {tuple(changed.input_shape)}, the "
            f"earlier run certified {data.info.name} inputs of shape {shape}"
        )
    logits = check_compatible(changed.module, data, session.device, str(request.model))
    check_per_input(changed.module, check_inputs(data).to(session.device), str(request.model))
    if logits != inputs.logits:
        raise ModelError(
            f"model {request.model} returns {logits} logits, the earlier run's model "
            f"{inputs.logits}; reuse needs the same classes"
        )
    changed_base = prepare_model(
        inputs.compose(changed.module), request.precision, request.channels_last
    )
    alpha = float(args["alpha"])
    alpha_zeta = request.alpha_zeta if request.alpha_zeta is not None else ZETA_SHARE * alpha
    sampling = Sampling(int(args["N0"]), int(args["N"]), alpha, int(args["batch_size"]))
    rule = ReuseRule(alpha_zeta, request.tolerance, inputs.norm, request.radii)
    memory = bool(args.get("memory", False))
    run.layout(REUSE_COLUMNS, memory)
    arguments = {
        **inputs.arguments,
        "model": str(request.model.resolve()),
        "model_sha256": changed.sha256,
        "arch": request.arch,
        **speed_options_record(request.precision, request.channels_last),
        "N0": sampling.n_selection,
        "N": sampling.n_estimation,
        "alpha": alpha,
        "batch_size": sampling.batch_size,
        "memory": memory,
        "reuse": {
            "results": str(request.results.resolve()),
            "alpha_zeta": alpha_zeta,
            "tolerance": request.tolerance,
            "radii": list(rule.radii),
            "original_model": args["model"],
            "original_model_sha256": args["model_sha256"],
        },
    }
    record = {
        "format": "ancer-results/1",
        "arguments": arguments,
        "guarantee": _guarantee(earlier.level, alpha, alpha_zeta),
        "reuse": {
            "earlier": earlier.key_fields(),
            "models": {
                "original": {"path": args["model"], "sha256": args["model_sha256"]},
                "changed": {"path": str(request.model), "sha256": changed.sha256},
            },
        },
        "labels": labels_record(data),
        **sound_record(inputs),
        "world_size": session.ranks.world_size,
        **provenance(session.device),
    }
    commitment = replace(current, model_sha256=changed.sha256)
    segments = run.commit(record, commitment, indices, request.seed)
    return ReusePlan(
        request=request, earlier=earlier,
        pair=PairClassifier(inputs.model, changed_base, inputs.logits), inputs=inputs,
        certificates={row.idx: row for row in earlier.rows},
        settings=ReuseSettings(sampling, rule), memory=memory, seeds=segments.seeds(), run=run,
    )  # fmt: skip


def _guarantee(earlier: float, alpha: float, alpha_zeta: float) -> dict[str, Any]:
    """What the sidecar says each row's certificate is worth. ``earlier``: the level the earlier
    run's rows hold at (its ``alpha``; for a reuse run, its own ``any_row``)."""
    return {
        "alpha": earlier + alpha_zeta,
        "reuse_rows": earlier + alpha_zeta,
        "scratch_rows": alpha,
        "any_row": earlier + alpha_zeta + alpha,
        "rule": "a reused row is wrong only if the earlier row's pA_lower (level earlier) or "
        "zeta (level alpha_zeta, on fresh draws) is: P(wrong and reused) <= earlier + "
        "alpha_zeta; a row certified afresh is a new certificate at level alpha; as the route "
        "depends on the earlier certificate and the draws, a union bound over all three gives "
        "earlier + alpha_zeta + alpha for a row whose route is not known in advance",
    }
