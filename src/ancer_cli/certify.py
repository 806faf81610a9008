"""The dataset loop of ``ancer certify`` over :mod:`ancer_cli.core.smoothing`: a request becomes a
plan (model, data, thetas, indices, record), the plan's inputs become certificates, the
certificates rows of the results file (then, for per-input thetas, the memory pass)."""

from __future__ import annotations

import enum
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm as normal
from torch import nn

from ancer_cli.artifacts import (
    RESULT_COLUMNS,
    SEQUENTIAL_COLUMNS,
    ResultsFile,
    atomic_writer,
    check_new_output,
    check_resumable,
    complete_rows,
    format_result_row,
    read_results,
    remove_stale_temporaries,
    results_sidecar_path,
    utc_now,
    write_json,
)
from ancer_cli.core.bounds import DEFAULT_ALPHA
from ancer_cli.core.memory import Claim, memory_pass
from ancer_cli.core.noise import Norm, Stream, Theta, input_generator, theta_from_sigma
from ancer_cli.core.precision import Precision, prepare_model, speed_options_record
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
from ancer_cli.errors import AncerError, OutputError
from ancer_cli.inputs import labels_record, load_run_inputs, select_indices
from ancer_cli.runtime import provenance
from ancer_cli.thetas import open_thetas, recorded_run


class CertifyMethod(str, enum.Enum):
    """How theta was chosen: one sigma for all (Cohen et al.), per-input scalar, per-input tensor."""

    fixed = "fixed"
    isotropic = "isotropic"
    ancer = "ancer"


ThetaSource = Callable[[int], Theta]
"""Maps a dataset index to the input's theta (a number or a tensor on the model's device)."""


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


def fixed_theta(theta: float) -> ThetaSource:
    """The same theta for every input (Cohen et al.'s fixed-sigma smoothing)."""
    return lambda _idx: theta


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
    for chosen in input_groups(data, indices, thetas, group, device):
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
class InputGroup:
    """Consecutive inputs sampled together: dataset ``indices``, their ``labels``, the images
    ``xs`` ``(n, C, H, W)`` on the model's device and their ``thetas``."""

    indices: list[int]
    labels: list[int]
    xs: torch.Tensor
    thetas: list[Theta]


def input_groups(
    data: LoadedData,
    indices: Iterable[int],
    thetas: ThetaSource,
    size: int,
    device: torch.device,
) -> Iterator[InputGroup]:
    """The inputs of ``indices`` in order, in groups of at most ``size``, with their thetas.

    A theta that cannot be loaded ends its group early: the inputs before it are yielded (so
    their rows are written), then its error is raised.
    """
    order = list(indices)
    for start in range(0, len(order), size):
        chosen = order[start : start + size]
        group_thetas, failure = _load_thetas(thetas, chosen)
        chosen = chosen[: len(group_thetas)]  # what comes before a bad theta goes first
        if chosen:
            items = [data.dataset[idx] for idx in chosen]
            xs = torch.stack([x for x, _ in items]).to(device=device, dtype=torch.float32)
            yield InputGroup(chosen, [int(label) for _, label in items], xs, group_thetas)
        if failure is not None:
            raise failure


def _load_thetas(thetas: ThetaSource, indices: list[int]) -> tuple[list[Theta], AncerError | None]:
    """Thetas of ``indices`` up to the first that cannot be loaded, and that error."""
    loaded: list[Theta] = []
    for idx in indices:
        try:
            loaded.append(thetas(idx))
        except AncerError as error:
            return loaded, error
    return loaded, None


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


def pre_memory_path(out: Path) -> Path:
    """Where the certificates are written before the memory pass: ``results.csv.pre-memory``."""
    return Path(str(out) + ".pre-memory")


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


class Row(Protocol):
    """A line of a results file for one dataset index (:class:`ResultRow`, a prediction row)."""

    idx: int

    def line(self) -> str: ...


def shard_path(working: Path, ranks: Ranks) -> Path:
    """The file one rank of a distributed run writes: ``results.csv.rank1-of-4``."""
    return Path(f"{working}.rank{ranks.rank}-of-{ranks.world_size}")


def leftover_shards(working: Path) -> list[Path]:
    """Every shard file of ``working`` on disk, whatever number of processes wrote it."""
    pattern = re.compile(re.escape(working.name) + r"\.rank\d+-of-\d+")
    try:
        entries = list(working.parent.iterdir())
    except OSError as error:
        raise OutputError(f"cannot list {working.parent}: {error.strerror or error}") from error
    return sorted(path for path in entries if pattern.fullmatch(path.name))


def gather_rows(working: Path, columns: Sequence[str] = RESULT_COLUMNS) -> dict[int, str]:
    """The complete rows of ``working`` and of all its shards, by dataset index (a row found
    twice -- a merge interrupted before it removed the shards -- is kept once)."""
    rows: dict[int, str] = {}
    for path in [working, *leftover_shards(working)]:
        if path.exists():
            for idx, line in complete_rows(path, columns):
                rows.setdefault(idx, line)
    return rows


def merge_rows(
    working: Path, columns: Sequence[str] = RESULT_COLUMNS, indices: Sequence[int] | None = None
) -> dict[int, str]:
    """Rank 0: the rows of ``working`` and its shards into ``working`` alone, in index order.

    ``working`` is rewritten (atomically) only when shards held rows or its own rows were out
    of order or cut short; then the shards are removed. With ``indices``, every one of them must
    have a row. Returns the rows by index.
    """
    shards = leftover_shards(working)
    rows = gather_rows(working, columns)
    if indices is not None and set(rows) != set(indices):
        missing = sorted(set(indices) - set(rows))
        raise OutputError(
            f"the shards of {working} lack indices {missing[:5]}; rerun with --resume"
        )
    own = complete_rows(working, columns) if working.exists() else []
    in_order = [idx for idx, _ in own] == sorted(rows)
    if shards or not in_order:
        header = "\t".join(columns) + "\n"
        with atomic_writer(working) as handle:
            handle.write(header)
            handle.writelines(rows[i] for i in sorted(rows))
        for shard in shards:
            shard.unlink()
    return rows


def check_resume(out: Path, arguments: dict[str, Any], memory: bool) -> None:
    """Refuse to resume ``out`` if its sidecar records other arguments (names the first)."""
    _check_resume(out, pre_memory_path(out) if memory else out, arguments)


def _check_resume(out: Path, working: Path, arguments: dict[str, Any]) -> None:
    if out.exists() or working.exists() or leftover_shards(working):
        check_resumable(results_sidecar_path(out), arguments, str(out))


def write_rows(
    rows_of: Callable[[list[int]], Iterable[Row]],
    indices: list[int],
    out: Path,
    working: Path,
    record: dict[str, Any],
    *,
    columns: Sequence[str] = RESULT_COLUMNS,
    resume: bool = False,
    on_row: Callable[[Any], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    ranks: Ranks = SINGLE,
) -> int | None:
    """The results loop of certify and predict: the rows of ``indices`` into ``working``, in
    index order, resumable and sharded; returns the number of rows kept from an earlier run
    (``None`` on ranks other than 0).

    ``rows_of(share)`` yields the rows of a list of indices, in order. The sidecar of ``out``
    (``record`` with ``"complete": false``) is written first. A single process appends its
    rows to ``working``, flushed one by one; each rank of a distributed run writes its own shard
    (``working.rank{r}-of-{w}``) and rank 0 merges them into ``working`` at the end.

    With ``resume`` (the sidecar must record the same ``record["arguments"]``) rank 0 first
    gathers the complete rows left by the interrupted run -- in ``working`` and in shards
    written by any number of processes -- into ``working``; every rank then takes its share of
    the indices that still lack a row, so a run resumes with any number of processes and ends
    with one row per index, each computed once. ``on_start(kept, mine)`` is called with the rows
    kept and the number this rank writes, ``on_row`` after each row it writes.
    """
    sidecar = results_sidecar_path(out)
    started = utc_now()

    def begin() -> None:
        if resume:
            _check_resume(out, working, record["arguments"])
        if ranks.is_main:  # nobody writes before every rank has passed this point
            remove_stale_temporaries(out.parent, out.name)
            if resume:
                merge_rows(working, columns)
            else:  # nothing of an earlier run may pass for this one's rows
                for path in [working, *leftover_shards(working)]:
                    if path.is_file():
                        path.unlink()

    collective(ranks, begin)
    if ranks.is_main:
        write_json(sidecar, {**record, "complete": False, "started": started})

    def write_share() -> int:
        # rank 0 gathered every earlier row into working, and in a distributed run nobody
        # writes working until the end: every rank sees the same rows, whatever shards begin
        kept = complete_rows(working, columns) if resume and working.exists() else []
        done = {idx for idx, _ in kept}
        unexpected = done.difference(indices)
        if unexpected:
            raise OutputError(
                f"cannot resume {working}: it holds index {min(unexpected)}, which this run "
                "would not cover; use the same --skip/--max or --force to start over"
            )
        share = ranks.share([i for i in indices if i not in done])
        if on_start is not None:
            on_start(len(done), len(share))
        mine = shard_path(working, ranks) if ranks.distributed else working
        with ResultsFile(mine, resume=mine.exists(), columns=columns) as results:
            for row in rows_of(share):
                results.append(row.line())
                if on_row is not None:
                    on_row(row)
        return len(done)

    kept = collective(ranks, write_share)
    if not ranks.is_main:
        return None
    merge_rows(working, columns, indices)
    return kept


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
    """What ``ancer certify`` is asked to do. ``None`` means "as the thetas' manifest (or the
    model file) records it"; exactly one of ``sigma`` and ``thetas`` is given."""

    out: Path = Path("results.csv")
    model: Path | None = None
    thetas: Path | None = None
    sigma: float | None = None
    method: CertifyMethod | None = None
    dataset: str | None = None
    data_root: Path | None = None
    split: str | None = None
    norm: Norm | None = None
    arch: str | None = None
    classes: Path | None = None
    n_selection: int = CertifyConfig.n_selection
    n_estimation: int = CertifyConfig.n_estimation
    alpha: float = CertifyConfig.alpha
    batch_size: int = CertifyConfig.batch_size
    skip: int = 1
    max_index: int | None = None
    memory: bool | None = None
    sequential: Sequential | None = None
    precision: Precision = Precision.fp32
    channels_last: bool = False
    resume: bool = False
    force: bool = False
    seed: int = CertifyConfig.seed


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
    fails, all raise). Defaults come from the thetas' manifest, then from the model file."""
    return collective(session.ranks, lambda: _plan(request, session))


class InputsRequest(Protocol):
    """The options certify and predict share: what to smooth, with which thetas, on which
    inputs (:class:`CertifyRequest`, :class:`~ancer_cli.predict.PredictRequest`)."""

    @property
    def model(self) -> Path | None: ...
    @property
    def thetas(self) -> Path | None: ...
    @property
    def sigma(self) -> float | None: ...
    @property
    def method(self) -> CertifyMethod | None: ...
    @property
    def dataset(self) -> str | None: ...
    @property
    def data_root(self) -> Path | None: ...
    @property
    def split(self) -> str | None: ...
    @property
    def norm(self) -> Norm | None: ...
    @property
    def arch(self) -> str | None: ...
    @property
    def classes(self) -> Path | None: ...
    @property
    def skip(self) -> int: ...
    @property
    def max_index(self) -> int | None: ...
    @property
    def precision(self) -> Precision: ...
    @property
    def channels_last(self) -> bool: ...
    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class SmoothedInputs:
    """What a certify or predict run smooths, loaded and checked: the base classifier (with its
    speed options), the data, each input's theta, the indices, and the arguments naming them."""

    model: nn.Module
    data: LoadedData
    norm: Norm
    method: CertifyMethod
    thetas: ThetaSource
    description: str
    indices: list[int]
    logits: int
    arguments: dict[str, Any]


def resolve_inputs(request: InputsRequest, session: Session) -> SmoothedInputs:
    """Load the model, data and thetas of ``request`` and choose its indices. Defaults come from
    the thetas' manifest, then from the model file; ``sigma`` or ``thetas`` must be given."""
    recorded = recorded_run(request.thetas)
    model_path = request.model or recorded.model
    if model_path is None:
        raise AncerError("give --model (the thetas have no manifest naming their model)")
    if request.thetas is not None and recorded.manifest is None:
        if request.dataset is None or request.norm is None:
            raise AncerError(
                f"{request.thetas} has no manifest.json: pass --dataset and --norm with --model"
            )
    run = load_run_inputs(
        model_path,
        session.device,
        dataset=request.dataset or recorded.dataset,
        data_root=request.data_root or recorded.data_root,
        split=request.split or recorded.split or "test",
        norm=request.norm or recorded.norm,
        arch=request.arch,
        classes=request.classes or recorded.classes,
    )
    indices = select_indices(len(run.data.dataset), request.skip, request.max_index)  # type: ignore[arg-type]
    if request.thetas is not None:
        theta_set = open_thetas(
            request.thetas,
            run.data,
            norm=run.norm,
            model_sha256=run.model.sha256,
            device=session.device,
            selected=indices,
        )
        method = CertifyMethod(theta_set.method)
        if request.method is not None and request.method is not method:
            raise AncerError(
                f"--method {request.method.value} but {request.thetas} holds {method.value} thetas"
            )
        available = set(theta_set.indices)
        indices = [i for i in indices if i in available]
        thetas: ThetaSource = theta_set.theta
        description = f"{method.value} thetas from {request.thetas}" + (
            f" ({theta_set.layout.value})" if theta_set.layout is not None else ""
        )
    else:
        assert request.sigma is not None
        method = CertifyMethod.fixed
        thetas = fixed_theta(theta_from_sigma(request.sigma, run.norm))
        description = f"noise sigma={request.sigma}"
    arguments = {
        "method": method.value,
        "model": str(model_path),
        "model_sha256": run.model.sha256,
        "thetas": _text(request.thetas),
        "dataset": run.data.info.name,
        "split": run.data.split,
        "classes": _text(request.classes or recorded.classes),
        "norm": run.norm.value,
        "sigma": request.sigma,
        "skip": request.skip,
        "max": request.max_index,
        "seed": request.seed,
        **speed_options_record(request.precision, request.channels_last),
    }
    return SmoothedInputs(
        model=prepare_model(run.model.module, request.precision, request.channels_last),
        data=run.data,
        norm=run.norm,
        method=method,
        thetas=thetas,
        description=description,
        indices=indices,
        logits=run.logits,
        arguments=arguments,
    )


def _plan(request: CertifyRequest, session: Session) -> CertifyPlan:
    check_new_output(request.out, force=request.force, resume=request.resume)
    inputs = resolve_inputs(request, session)
    method = inputs.method
    memory = method is not CertifyMethod.fixed if request.memory is None else request.memory
    config = CertifyConfig(
        norm=inputs.norm,
        n_selection=request.n_selection,
        n_estimation=request.n_estimation,
        alpha=request.alpha,
        batch_size=request.batch_size,
        seed=request.seed,
        sequential=request.sequential,
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


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None
