"""``ancer certify --reuse``: certify a changed model (quantized, pruned, fine-tuned, lower
precision) from an earlier certify run of the original, with
:mod:`ancer_cli.core.incremental` -- a request becomes a plan (both models, the earlier run's
data, thetas, certificates and record), the plan's inputs become rows of the results file (then,
for per-input thetas, the memory pass, as ``ancer certify`` runs it).

Each earlier certificate ``pA_lower`` (recovered from its written radius) less an anytime-valid
bound ``zeta`` on the two models' disagreements, counted on the regenerated draws of the earlier
certify stream, is the changed model's certificate at level ``alpha + alpha_zeta``; inputs where
that would cost more than a tolerance of radius, or drop below a reported radius the earlier
certificate reached, are certified afresh at level ``alpha``, with the
changed model and this run's own seed (the rows ``ancer certify --seed`` would write). Rows
carry two more columns: ``samples`` (noisy inputs evaluated by a model: a regenerated draw counts
twice, both models see it) and ``path`` (:class:`~ancer_cli.core.incremental.Route`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch

from ancer_cli.artifacts import atomic_writer, check_new_output, utc_now, write_json
from ancer_cli.certify import CertifyConfig, CertifySummary, MemorySummary, apply_memory
from ancer_cli.core.bounds import gap_from_p_lower
from ancer_cli.core.incremental import (
    DEFAULT_TOLERANCE,
    ZETA_SHARE,
    Incremental,
    PairClassifier,
    ReuseRule,
    Route,
    certify_incremental_many,
    recovered_p_a_lower,
)
from ancer_cli.core.noise import Norm, Stream, input_generator
from ancer_cli.core.precision import Precision, prepare_model, speed_options_record
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.smoothing import ABSTAIN, certify_many, inputs_per_group
from ancer_cli.data import UNLABELED, LoadedData
from ancer_cli.distributed import SINGLE, Ranks, Session, collective
from ancer_cli.errors import AncerError, ModelError
from ancer_cli.inputs import (
    InputsSpec,
    check_compatible,
    input_groups,
    labels_record,
    resolve_inputs,
    sound_record,
)
from ancer_cli.models import load_model
from ancer_cli.results import (
    RESULT_COLUMNS,
    check_resume,
    format_result_row,
    pre_memory_path,
    read_results,
    read_results_record,
    results_sidecar_path,
    run_seed,
    write_rows,
)
from ancer_cli.runtime import provenance
from ancer_cli.thetas import CertifyMethod, ThetaSource

REUSE_COLUMNS = (*RESULT_COLUMNS, "samples", "path")
"""The results file of a reuse run: the eight columns, samples and the route (``path``)."""
REQUIRED_ARGUMENTS = {
    "seed": int, "N0": int, "N": int, "alpha": float, "batch_size": int, "model": str,
    "model_sha256": str, "method": str, "norm": str, "dataset": str,
}  # fmt: skip
"""What an earlier run's sidecar must record for its draws to be regenerated."""


# ---------------------------------------------------------------------------------------------
# the earlier run


class EarlierCertificate(NamedTuple):
    """One input's earlier certificate: its class (``ABSTAIN`` for an abstention), the
    ``pA_lower`` recovered from its written radius, and that radius."""

    predict: int
    p_a_lower: float
    radius: float


@dataclass(frozen=True)
class EarlierRun:
    """A complete certify run read back: its results file, sidecar ``record`` and the rows
    before any memory pass (the certificates themselves), by dataset index."""

    results: Path
    record: dict[str, Any]
    rows: pd.DataFrame

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.record["arguments"])

    def key_fields(self) -> dict[str, Any]:
        """What a reuse run's sidecar records about the earlier run."""
        args = self.arguments
        keys = ("method", "model", "model_sha256", "thetas", "sigma", "dataset", "split", "norm",
                "seed", "N0", "N", "alpha", "batch_size", "sound", "precision", "memory")  # fmt: skip
        return {"results": str(self.results), **{key: args.get(key) for key in keys}}


def read_earlier(results: Path) -> EarlierRun:
    """Read and check the earlier run behind ``results``: a complete ``ancer certify`` run whose
    sidecar records what regenerating its draws needs. With a memory pass, its certificates are
    read from ``results.pre-memory`` (the rows the pass started from)."""
    record = read_results_record(results)
    sidecar = results_sidecar_path(results)
    if record is None:
        raise AncerError(
            f"{results} has no sidecar {sidecar}: reuse needs the run's record (seed, N, model "
            "hash, method); certify the original model with ancer certify first"
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
                "run's seed, N0, N, alpha, batch size, model and its hash, method, norm and dataset"
            )
    if record.get("complete") is not True:
        raise AncerError(f"{results} is an unfinished run; finish it with --resume first")
    rows_file = pre_memory_path(results) if arguments.get("memory") else results
    if not rows_file.is_file():
        raise AncerError(
            f"{rows_file} is missing: reuse needs the certificates before the memory pass "
            f"of {results}"
        )
    rows = read_results(rows_file)
    return EarlierRun(Path(results), record, rows)


def _original_inputs(earlier: EarlierRun, data_root: Path | None, arch: str | None) -> InputsSpec:
    """The earlier run's inputs, as it resolved them (its model, precision, seed and noise)."""
    args = earlier.arguments
    model = Path(args["model"])
    if not model.is_file():
        raise AncerError(
            f"the earlier run's model {model} is missing: reuse counts where it and the changed "
            "model disagree; restore it (or run from the folder the earlier run ran in)"
        )

    def path(key: str) -> Path | None:
        return Path(args[key]) if isinstance(args.get(key), str) else None

    return InputsSpec(
        model=model, thetas=path("thetas"), sigma=args.get("sigma"),
        method=CertifyMethod(args["method"]), dataset=args["dataset"], data_root=data_root,
        split=args.get("split"), norm=Norm(args["norm"]), arch=arch, classes=path("classes"),
        skip=int(args.get("skip") or 1), max_index=args.get("max"),
        precision=Precision(args.get("precision", "fp32")),
        channels_last=bool(args.get("channels_last", False)), seed=int(args["seed"]),
        sound=bool(args.get("sound", False)),  # sidecars from before sound noise: float
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class ReuseRow:
    """One line of a reuse run's results file (:data:`REUSE_COLUMNS`)."""

    idx: int
    label: int
    predict: int
    radius: float
    radius_proxy: float
    correct: int
    min_sigma: float
    seconds: float
    samples: int
    route: Route

    def line(self) -> str:
        return format_result_row(
            self.idx, self.label, self.predict, self.radius, self.radius_proxy, self.correct,
            self.min_sigma, self.seconds, (str(self.samples), self.route.value),
        )  # fmt: skip


@dataclass(frozen=True)
class ReuseSettings:
    """How a reuse run certifies: the earlier run's sampling (``config``, with this run's seed
    for certification afresh), its seed (``earlier_seed``, to regenerate its draws) and the
    reuse rule."""

    config: CertifyConfig
    earlier_seed: int
    rule: ReuseRule


def reuse_dataset(
    pair: PairClassifier,
    data: LoadedData,
    indices: list[int],
    thetas: ThetaSource,
    earlier: dict[int, EarlierCertificate],
    settings: ReuseSettings,
    device: torch.device,
) -> Iterator[ReuseRow]:
    """The rows of ``indices`` in order: each input's earlier certificate ``(predict,
    pA_lower)`` reused for ``pair.changed`` or certified afresh (see
    :func:`~ancer_cli.core.incremental.certify_incremental_many`). Every input's streams are
    seeded from its index, so a row does not depend on the other inputs."""
    config = settings.config
    group = inputs_per_group(config.n_selection, config.n_estimation, config.batch_size)
    scratch_samples = config.n_selection + config.n_estimation
    for chosen in input_groups(data, indices, thetas, group, device, config.sound):
        count = len(chosen.indices)
        regenerated = [
            input_generator(settings.earlier_seed, idx, device, Stream.certify)
            for idx in chosen.indices
        ]
        began = time.perf_counter()
        outcomes = certify_incremental_many(
            pair, chosen.xs, chosen.thetas, config.norm, config.n_selection,
            config.n_estimation, config.batch_size, regenerated,
            [earlier[idx].predict for idx in chosen.indices],
            [earlier[idx].p_a_lower for idx in chosen.indices], settings.rule, config.sound,
            settings.rule.floor_gaps(
                [earlier[idx].radius for idx in chosen.indices],
                [min_theta(theta) for theta in chosen.thetas],
            ),
        )  # fmt: skip
        paired = time.perf_counter() - began
        afresh = [k for k, outcome in enumerate(outcomes) if outcome.route is Route.scratch]
        fresh = {}
        began = time.perf_counter()
        if afresh:
            certificates = certify_many(
                pair.changed, chosen.xs[afresh], [chosen.thetas[k] for k in afresh],
                config.norm, config.n_selection, config.n_estimation, config.alpha,
                config.batch_size,
                [input_generator(config.seed, chosen.indices[k], device, Stream.certify)
                 for k in afresh],
                sound=config.sound,
            )  # fmt: skip
            fresh = dict(zip(afresh, certificates, strict=True))
        scratch_seconds = time.perf_counter() - began
        drawn = sum(outcome.samples for outcome in outcomes)
        for k, (idx, label, outcome) in enumerate(
            zip(chosen.indices, chosen.labels, outcomes, strict=True)
        ):
            theta = chosen.thetas[k]  # as certified: the sound theta with sound noise
            seconds = paired * (outcome.samples / drawn if drawn else 1.0 / count)
            samples = 2 * outcome.samples
            if k in fresh:
                certificate = fresh[k]
                predict, gap = certificate.prediction, certificate.gap
                seconds += scratch_seconds / len(afresh)
                samples += scratch_samples
            else:
                predict, gap = _reused(outcome, earlier[idx].predict, config.norm)
            yield ReuseRow(
                idx=idx, label=label, predict=predict, radius=min_theta(theta) * gap,
                radius_proxy=geometric_mean(theta) * gap,
                correct=int(predict == label and predict != ABSTAIN), min_sigma=min_theta(theta),
                seconds=seconds, samples=samples, route=outcome.route,
            )  # fmt: skip


def _reused(outcome: Incremental, predict: int, norm: Norm) -> tuple[int, float]:
    """The prediction and gap of a reused (or kept abstaining) certificate."""
    if outcome.route is Route.abstain:
        return ABSTAIN, 0.0
    return predict, gap_from_p_lower(outcome.p_a_lower, norm)


# ---------------------------------------------------------------------------------------------
# a reuse run: request -> plan -> rows


@dataclass(frozen=True)
class ReuseRequest:
    """What ``ancer certify --reuse RESULTS --model CHANGED`` is asked to do. ``alpha_zeta``
    ``None``: :data:`~ancer_cli.core.incremental.ZETA_SHARE` of the earlier ``alpha``; ``seed``
    ``None``: fresh OS entropy (the seed of certification afresh; the earlier draws are
    regenerated from the earlier seed)."""

    results: Path
    model: Path
    out: Path = Path("results.csv")
    alpha_zeta: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
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


@dataclass(frozen=True)
class ReusePlan:
    """Everything a reuse run needs, loaded and checked."""

    request: ReuseRequest
    earlier: EarlierRun
    pair: PairClassifier
    data: LoadedData
    thetas: ThetaSource
    theta_description: str
    indices: list[int]
    certificates: dict[int, EarlierCertificate]
    settings: ReuseSettings
    memory: bool
    record: dict[str, Any]

    @property
    def config(self) -> CertifyConfig:
        return self.settings.config

    def run(
        self,
        session: Session,
        on_row: Callable[[ReuseRow], None] | None = None,
        on_memory: Callable[[int, int], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> ReuseSummary | None:
        """Write the rows (resumable, sharded), the memory pass and the sidecar; the summary on
        rank 0, ``None`` elsewhere."""
        return run_reuse(self, session.device, session.ranks, on_row, on_memory, on_start)


def plan_reuse(request: ReuseRequest, session: Session) -> ReusePlan:
    """Read the earlier run and load both models, its data and thetas, on every rank (a
    collective: if one rank fails, all raise)."""
    seed = run_seed(request.seed, request.out, request.resume, session.ranks)
    request = replace(request, seed=seed)
    return collective(session.ranks, lambda: _plan(request, session))


def _plan(request: ReuseRequest, session: Session) -> ReusePlan:
    check_new_output(request.out, force=request.force, resume=request.resume)
    earlier = read_earlier(request.results)
    args = earlier.arguments
    inputs = resolve_inputs(_original_inputs(earlier, request.data_root, request.arch), session)
    if inputs.arguments["model_sha256"] != args["model_sha256"]:
        raise ModelError(
            f"the earlier run's model {args['model']} has changed since {request.results} was "
            f"certified (sha256 {inputs.arguments['model_sha256'][:12]}..., recorded "
            f"{args['model_sha256'][:12]}...); reuse needs the original model"
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
    if logits != inputs.logits:
        raise ModelError(
            f"model {request.model} returns {logits} logits, the earlier run's model "
            f"{inputs.logits}; reuse needs the same classes"
        )
    certificates: dict[int, EarlierCertificate] = {}
    available = set(inputs.indices)
    for idx, predict, radius in zip(
        earlier.rows["idx"], earlier.rows["predict"], earlier.rows["radius"], strict=True
    ):
        idx, predict = int(idx), int(predict)
        if idx not in available:
            raise AncerError(f"{request.results} has a row for input {idx}, which its "
                             "arguments do not select; the file was edited")  # fmt: skip
        p = (
            0.0
            if predict == ABSTAIN
            else recovered_p_a_lower(radius, inputs.thetas(idx), inputs.norm)
        )
        certificates[idx] = EarlierCertificate(predict, p, float(radius))
    alpha = float(args["alpha"])
    alpha_zeta = request.alpha_zeta if request.alpha_zeta is not None else ZETA_SHARE * alpha
    config = CertifyConfig(
        norm=inputs.norm, n_selection=int(args["N0"]), n_estimation=int(args["N"]),
        alpha=alpha, batch_size=int(args["batch_size"]), seed=int(request.seed or 0),
        sound=inputs.grid_levels,
    )  # fmt: skip
    rule = ReuseRule(alpha_zeta, request.tolerance, inputs.norm, request.radii)
    settings = ReuseSettings(config, int(args["seed"]), rule)
    memory = bool(args.get("memory", False))
    changed_module = prepare_model(changed.module, request.precision, request.channels_last)
    arguments = {
        **inputs.arguments,
        "model": str(request.model),
        "model_sha256": changed.sha256,
        "seed": request.seed,
        **speed_options_record(request.precision, request.channels_last),
        "N0": config.n_selection,
        "N": config.n_estimation,
        "alpha": alpha,
        "batch_size": config.batch_size,
        "memory": memory,
        "reuse": {
            "results": str(request.results),
            "alpha_zeta": alpha_zeta,
            "tolerance": request.tolerance,
            "radii": list(rule.radii),
            "original_model": args["model"],
            "original_model_sha256": args["model_sha256"],
            "original_seed": int(args["seed"]),
        },
    }
    record = {
        "format": "ancer-results/1",
        "arguments": arguments,
        "guarantee": _guarantee(alpha, alpha_zeta),
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
    if request.resume:
        check_resume(request.out, arguments, memory)
    return ReusePlan(
        request=request, earlier=earlier,
        pair=PairClassifier(inputs.model, changed_module, inputs.logits), data=data,
        thetas=inputs.thetas, theta_description=inputs.description,
        indices=list(certificates), certificates=certificates, settings=settings,
        memory=memory, record=record,
    )  # fmt: skip


def _guarantee(alpha: float, alpha_zeta: float) -> dict[str, Any]:
    """What the sidecar says each row's certificate is worth."""
    return {
        "alpha": alpha + alpha_zeta,
        "reuse_rows": alpha + alpha_zeta,
        "scratch_rows": alpha,
        "any_row": 2 * alpha + alpha_zeta,
        "rule": "a reused row is wrong only if the earlier pA_lower (level alpha) or zeta (level "
        "alpha_zeta) is: P(wrong and reused) <= alpha + alpha_zeta; a row certified afresh is a "
        "new certificate at level alpha; as the route depends on the earlier certificate and the "
        "regenerated draws, a union bound over all three gives 2 alpha + alpha_zeta for a row "
        "whose route is not known in advance",
    }


def run_reuse(
    plan: ReusePlan,
    device: torch.device,
    ranks: Ranks = SINGLE,
    on_row: Callable[[ReuseRow], None] | None = None,
    on_memory: Callable[[int, int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> ReuseSummary | None:
    """The rows of ``plan`` into its results file (through ``.pre-memory`` and the memory pass
    when the earlier run had one), then the sidecar; see :func:`ancer_cli.certify.run_certify`."""
    out = plan.request.out
    working = pre_memory_path(out) if plan.memory else out
    began, started = time.perf_counter(), utc_now()
    resumed = write_rows(
        lambda share: reuse_dataset(
            plan.pair, plan.data, share, plan.thetas, plan.certificates, plan.settings, device
        ),
        plan.indices, out, working, plan.record, columns=REUSE_COLUMNS,
        resume=plan.request.resume, on_row=on_row, on_start=on_start, ranks=ranks,
    )  # fmt: skip
    if resumed is None:
        return None
    memory_summary: MemorySummary | None = None
    if plan.memory:
        lines = working.read_text().splitlines(keepends=True)[1:]
        lines, memory_summary = apply_memory(
            read_results(working), lines, plan.data, plan.thetas, plan.config.norm, device,
            on_memory,
        )  # fmt: skip
        with atomic_writer(out) as handle:
            handle.write("\t".join(REUSE_COLUMNS) + "\n")
            handle.writelines(lines)
    frame = read_results(out)
    scored = frame[frame["label"] != UNLABELED]
    mean_radius = float((scored["radius"] * scored["correct"]).mean()) if len(scored) else math.nan
    totals = CertifySummary(
        certified=len(frame), resumed=resumed, correct=int(frame["correct"].sum()),
        abstained=int((frame["predict"] == ABSTAIN).sum()), mean_radius=mean_radius,
        seconds=time.perf_counter() - began, memory=memory_summary, labeled=len(scored),
    )  # fmt: skip
    routes = {route.value: int((frame["path"] == route.value).sum()) for route in Route}
    config = plan.config
    summary = ReuseSummary(
        totals=totals,
        routes=routes,
        mean_samples=float(frame["samples"].mean()) if len(frame) else math.nan,
        scratch_samples=config.n_selection + config.n_estimation,
        guarantee=plan.record["guarantee"]["alpha"],
    )
    memory_record: dict[str, Any] = {"enabled": plan.memory}
    if memory_summary is not None:
        memory_record.update(
            before_pass=str(working),
            reassigned=len(memory_summary.reassigned),
            shrunk=len(memory_summary.shrunk),
            changed_predictions=len(memory_summary.changed_predictions),
        )
    write_json(
        results_sidecar_path(out),
        {
            **plan.record,
            "complete": True,
            "started": started,
            "finished": utc_now(),
            "memory": memory_record,
            "totals": {
                "inputs": totals.certified,
                "resumed_rows": resumed,
                "correct": totals.correct,
                "abstained": totals.abstained,
                "labeled": totals.labeled,
                "certified_accuracy_at_0": _finite(totals.accuracy),
                "average_certified_radius": _finite(mean_radius),
                "seconds_this_run": totals.seconds,
                "routes": routes,
                "mean_samples_per_input": _finite(summary.mean_samples),
                "samples_from_scratch_per_input": summary.scratch_samples,
            },
        },
    )
    return summary


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
