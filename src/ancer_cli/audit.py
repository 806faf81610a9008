"""``ancer audit RESULTS``: a search inside every certified region of a results file for a point
the smoothed classifier gives another class (:func:`ancer_cli.core.audit.audit_regions`), each
candidate the soft smoothed classifier puts on another class confirmed by PREDICT at a large N
on fresh draws; then how many certificates were found violated, against the level the file
claims.

Each row states a region: its input ``x``, the theta of its region and the gap ``radius /
min(theta)`` as written (a radius rounded toward zero only shrinks it). The theta is the input's
own, except for a row the memory pass reassigned to an earlier region: that row's region is the
sub-region of the earlier one centred at ``x``, with the earlier input's theta. The results file
does not name that input; the pass is deterministic, so it is found again by running the pass
over the rows before it (``results.csv.pre-memory``, :func:`~ancer_cli.run.certificates.
memory_decisions`), and kept only where that theta gives the row's ``min_sigma``. Where it cannot
be found (no ``.pre-memory`` file, or an edited one), the row's own region -- its own theta and
gap -- is audited, and the summary counts these rows.

The file is read whatever its digest says (an audit of an edited file is the point); the run
reports whether its rows are those its sidecar recorded (:func:`~ancer_cli.results.
rows_state`). The audit itself is a run like certify's (:class:`~ancer_cli.run.skeleton.Run`:
lock, commitment, fresh seed, resumable rows, sidecar).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ancer_cli.core.audit import AuditResult, CertifiedRegion, audit_regions
from ancer_cli.core.bounds import clopper_pearson_lower, clopper_pearson_upper
from ancer_cli.core.choices import DEFAULT_ALPHA
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import Stream, input_generator, part_generator
from ancer_cli.core.radii import min_theta
from ancer_cli.core.smoothing import ABSTAIN, MAX_INPUTS_PER_GROUP, predict_votes_many
from ancer_cli.distributed import Session, collective
from ancer_cli.errors import AncerError
from ancer_cli.inputs import (
    SmoothedInputs,
    input_groups,
    labels_record,
    resolve_inputs,
    rows_of,
)
from ancer_cli.inputs import sound_record as sound_part
from ancer_cli.models.denoisers import inputs_per_theta
from ancer_cli.results import (
    AUDIT_COLUMNS,
    PRE_MEMORY,
    RowsState,
    format_down,
    format_nearest,
    read_results,
    read_results_record,
    rows_digest,
    rows_state,
)
from ancer_cli.run.certificates import memory_decisions, read_certificate_rows
from ancer_cli.run.commit import Commitment
from ancer_cli.run.rows import pre_memory_path
from ancer_cli.run.skeleton import Run
from ancer_cli.run.spec import InputsSpec, results_spec
from ancer_cli.runtime import provenance
from ancer_cli.settings import AuditJob

NO_VOTES = "-"
"""The ``votes`` of a row where PREDICT did not run."""
CONFIDENCE = 0.95
"""The level of the Clopper-Pearson interval on the rate of violated certificates."""

# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class AuditRow:
    """One line of the audit file, for row ``idx`` of the results file: its ``radius`` as the
    file states it; ``violated`` 1 when PREDICT confirmed another class inside the region;
    ``distance`` (in the radius's units, ``min(theta) ||(p - x) / theta||_p <= radius``) of the
    confirmed flip, else of the most adverse candidate (NaN for an abstention: no region);
    ``votes`` PREDICT's two largest counts there (``class:count,class:count``), or ``-``."""

    idx: int
    radius: str
    violated: int
    distance: float
    votes: str

    def line(self) -> str:
        distance = "nan" if math.isnan(self.distance) else format_down(self.distance)
        return f"{self.idx}\t{self.radius}\t{self.violated}\t{distance}\t{self.votes}\n"

    @staticmethod
    def parse(line: str) -> AuditRow:
        fields = line.rstrip("\n").split("\t")
        return AuditRow(int(fields[0]), fields[1], int(fields[2]), float(fields[3]), fields[4])


def votes_text(counts: np.ndarray) -> str:
    """The two largest vote counts, ``class:count,class:count`` (largest first)."""
    order = np.argsort(-counts, kind="stable")[:2]
    return ",".join(f"{int(c)}:{int(counts[c])}" for c in order)


# ---------------------------------------------------------------------------------------------
# the regions the rows state


@dataclass(frozen=True)
class StatedRegion:
    """What a row of the results file claims: class ``predict`` (-1: abstained, no claim) on
    the region of ``radius`` around its input, with the theta of input ``theta_idx``;
    ``radius_text`` as written; ``own`` when that theta was the row's own for want of knowing
    the region it was reassigned to."""

    idx: int
    predict: int
    radius: float
    radius_text: str
    theta_idx: int
    own: bool = False


def stated_regions(
    results: Path,
    frame: Any,
    record: Mapping[str, Any] | None,
    inputs: SmoothedInputs,
    device: torch.device,
) -> list[StatedRegion]:
    """The region each row of ``results`` (read as ``frame``) states, in index order (see the
    module's docstring for reassigned rows)."""
    decided: dict[int, int] = {}
    memory = bool(((record or {}).get("arguments") or {}).get("memory"))
    before = pre_memory_path(results)
    if memory and before.is_file():
        try:
            rows = read_certificate_rows(before)
            decisions = memory_decisions(rows, inputs, device)
            decided = {d.idx: d.theta_idx for d in decisions if d.reassigned}
        except (AncerError, ValueError, IndexError):
            decided = {}  # an edited file: the rows keep their own theta
    has_sigma = "min_sigma" in frame.columns
    written = radius_texts(results)
    regions = []
    for row in frame.itertuples(index=False):
        idx, predict, radius = int(row.idx), int(row.predict), float(row.radius)
        theta_idx, own = idx, False
        if has_sigma and predict != ABSTAIN:
            stated = float(row.min_sigma)
            candidates = [decided[idx], idx] if idx in decided else [idx]
            matching = [c for c in candidates if _same(min_theta(inputs.thetas(c)), stated)]
            theta_idx = matching[0] if matching else idx
            own = not matching
        text = written.get(idx, format_down(radius))
        regions.append(StatedRegion(idx, predict, radius, text, theta_idx, own))
    return regions


def radius_texts(results: Path) -> dict[int, str]:
    """Each row's ``radius`` as the file writes it, by index (read as text: a decimal number
    read as a float and written again may not be the same text)."""
    with open(results, newline="") as handle:
        table = csv.reader(handle, delimiter="\t")
        header = [name.strip() for name in next(table, [])]
        idx, radius = header.index("idx"), header.index("radius")
        return {int(row[idx]): row[radius].strip() for row in table if len(row) > radius}


def _same(theta_min: float, written: float) -> bool:
    """Whether ``written`` (a ``min_sigma`` as the file writes it) is ``theta_min``."""
    return float(format_nearest(theta_min)) == written or math.isclose(
        theta_min, written, rel_tol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# the per-row loop


def audit_dataset(
    inputs: SmoothedInputs,
    indices: Sequence[int],
    regions: Mapping[int, StatedRegion],
    job: AuditJob,
    seeds: Mapping[int, int],
    device: torch.device,
    committed: Mapping[int, str] | None,
) -> Iterator[AuditRow]:
    """Audit the region of each row of ``indices`` (in order) and yield its line.

    Certified rows of a group are searched together (:func:`audit_regions` on each row's
    ``Stream.audit``); the candidates -- the input itself, then the search's -- whose soft
    probabilities put another class above the certified one are confirmed, the most adverse
    first, with PREDICT (``job.num`` samples at level ``job.alpha``, each candidate on its own
    fresh part of ``Stream.predict``) until one returns another class (a violation; an
    abstention is not one) or ``job.confirmations`` have been tried."""
    model, search = inputs.model, job.search
    group = max(1, min(MAX_INPUTS_PER_GROUP, job.batch_size // search.search.samples))
    group = inputs_per_theta(model, group)
    for chosen in input_groups(inputs, indices, group, device, committed):
        lines: dict[int, AuditRow] = {}
        certified = [k for k, idx in enumerate(chosen.indices) if regions[idx].predict != ABSTAIN]
        for idx in chosen.indices:
            if regions[idx].predict == ABSTAIN:
                lines[idx] = AuditRow(idx, regions[idx].radius_text, 0, math.nan, NO_VOTES)
        if certified:
            laws, claims = [], []
            for k in certified:
                region = regions[chosen.indices[k]]
                own = region.theta_idx == region.idx
                theta = chosen.thetas[k] if own else inputs.thetas(region.theta_idx)
                law = inputs.noise.law(theta, chosen.xs.shape[1:])
                laws.append(law)
                claims.append(CertifiedRegion(law, region.radius / law.min_theta, region.predict))
            xs = chosen.xs[certified]
            members = [chosen.indices[k] for k in certified]
            generators = [input_generator(seeds[i], i, device, Stream.audit) for i in members]
            found = audit_regions(model, xs, claims, generators, search)
            for j, idx in enumerate(members):
                lines[idx] = _confirm(
                    inputs, regions[idx], xs[j], laws[j], found, j, job, seeds[idx]
                )
        for idx in chosen.indices:
            yield lines[idx]


def _confirm(
    inputs: SmoothedInputs,
    region: StatedRegion,
    x: torch.Tensor,
    law: NoiseLaw,
    found: AuditResult,
    j: int,
    job: AuditJob,
    seed: int,
) -> AuditRow:
    """The line of ``region``'s row: its candidates (the input, part 0, then the search's
    ``j``-th row, parts 1, 2, ...) confirmed the most adverse first."""
    idx, c = region.idx, region.predict
    center = found.probabilities_center[j]
    others = center.clone().index_fill_(0, torch.tensor([c], device=center.device), -1.0)
    center_margin = float(others.max() - center[c])
    margins = [center_margin, *found.margin[j].tolist()]
    distances = [0.0, *found.distance[j].tolist()]
    points = [x, *found.points[j]]
    order = sorted(
        (k for k in range(len(points)) if k == 0 or distances[k] > 0),  # the input once
        key=lambda k: -margins[k],
    )
    scale, radius_text = law.min_theta, region.radius_text
    tried: dict[int, str] = {}
    model = inputs.model
    for k in [k for k in order if margins[k] > 0][: job.confirmations]:
        generator = part_generator(seed, idx, k, x.device, Stream.predict)
        tell_thetas(model, [law.theta])
        (answer,), votes = predict_votes_many(
            model, points[k].unsqueeze(0), [law], job.num, job.alpha, job.batch_size, [generator]
        )
        tried[k] = votes_text(votes[0])
        if answer not in (ABSTAIN, c):
            return AuditRow(idx, radius_text, 1, distances[k] * scale, tried[k])
    worst = order[0]
    return AuditRow(idx, radius_text, 0, distances[worst] * scale, tried.get(worst, NO_VOTES))


# ---------------------------------------------------------------------------------------------
# totals


def clopper_pearson(successes: int, trials: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval at ``level`` for a binomial proportion."""
    if trials == 0:
        return 0.0, 1.0
    tail = (1.0 - level) / 2.0
    return (
        clopper_pearson_lower(successes, trials, tail),
        clopper_pearson_upper(successes, trials, tail),
    )


@dataclass(frozen=True)
class AuditSummary:
    """What an audit found: of ``certified`` rows (a claim each), ``violated`` shown wrong, with
    the Clopper-Pearson ``interval`` on their rate, against the ``alpha`` the file claims per
    row; whether the file's rows are those its run recorded (``rows``); rows whose region was
    reassigned (found again) and rows audited with their own theta for want of it
    (``own_regions``)."""

    rows: int
    certified: int
    violated: int
    abstained: int
    interval: tuple[float, float]
    alpha: float
    alpha_source: str
    state: RowsState
    reassigned: int
    own_regions: int
    resumed: int
    seconds: float

    @property
    def consistent(self) -> bool:
        """Whether the violations found are within what the claimed alpha allows: the lower end
        of the interval is at most alpha (the audit finds only some violations, so this is no
        proof that the certificates hold)."""
        return self.interval[0] <= self.alpha

    def record(self) -> dict[str, Any]:
        """The sidecar's ``totals``."""
        return {
            "rows": self.rows,
            "certified": self.certified,
            "violated": self.violated,
            "abstained": self.abstained,
            "violation_rate": self.violated / self.certified if self.certified else None,
            "interval": {"level": CONFIDENCE, "low": self.interval[0], "high": self.interval[1]},
            "alpha_claimed": self.alpha,
            "alpha_source": self.alpha_source,
            "consistent": self.consistent,
            "rows_state": self.state.value,
            "reassigned_regions": self.reassigned,
            "own_regions": self.own_regions,
            "resumed_rows": self.resumed,
            "seconds_this_run": self.seconds,
        }


def claimed_alpha(record: Mapping[str, Any] | None) -> tuple[float, str]:
    """The probability with which the file says each row may be wrong, and where it says so:
    ``guarantee.any_row`` (reuse runs), else ``arguments.alpha``, else the default."""
    record = record or {}
    guarantee = record.get("guarantee")
    if isinstance(guarantee, Mapping) and isinstance(guarantee.get("any_row"), (int, float)):
        return float(guarantee["any_row"]), "guarantee.any_row"
    alpha = (record.get("arguments") or {}).get("alpha")
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return float(alpha), "arguments.alpha"
    return DEFAULT_ALPHA, "assumed (no record)"


# ---------------------------------------------------------------------------------------------
# an audit run: request -> plan -> rows


@dataclass(frozen=True)
class AuditRequest:
    """What ``ancer audit RESULTS`` is asked to do; ``inputs`` gives the seed, ``--skip``,
    ``--max`` and the data root, or, for a file without a sidecar, the model and the noise
    (:func:`~ancer_cli.run.spec.results_spec`)."""

    results: Path
    out: Path = Path("audit.csv")
    job: AuditJob = AuditJob()
    inputs: InputsSpec = field(default_factory=InputsSpec)
    resume: bool = False
    force: bool = False


@dataclass
class AuditPlan:
    """Everything an audit needs, loaded, checked and committed."""

    request: AuditRequest
    inputs: SmoothedInputs
    regions: dict[int, StatedRegion]
    state: RowsState
    alpha: tuple[float, str]
    seeds: dict[int, int]
    run: Run

    @property
    def indices(self) -> list[int]:
        return self.inputs.indices

    def execute(
        self,
        session: Session,
        on_row: Callable[[AuditRow], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> AuditSummary | None:
        """Audit the plan's rows into its file and sidecar; the summary on rank 0."""
        began, device, run = time.perf_counter(), session.device, self.run
        assert run.commitment is not None
        committed = run.commitment.inputs
        job = self.request.job
        try:
            resumed = run.write(
                lambda share: audit_dataset(
                    self.inputs, share, self.regions, job, self.seeds, device, committed
                ),
                self.indices,
                on_row=on_row,
                on_start=on_start,
            )
            if resumed is None:
                return None
            rows = run.rows(AuditRow.parse)
            certified = [r for r in rows if self.regions[r.idx].predict != ABSTAIN]
            violated = sum(r.violated for r in rows)
            summary = AuditSummary(
                rows=len(rows),
                certified=len(certified),
                violated=violated,
                abstained=len(rows) - len(certified),
                interval=clopper_pearson(violated, len(certified)),
                alpha=self.alpha[0],
                alpha_source=self.alpha[1],
                state=self.state,
                reassigned=sum(
                    r.theta_idx != r.idx for r in self.regions.values() if r.idx in self.indices
                ),
                own_regions=sum(r.own for r in self.regions.values() if r.idx in self.indices),
                resumed=resumed,
                seconds=time.perf_counter() - began,
            )
            run.finish(totals=summary.record())
            return summary
        finally:
            run.close()


def plan_audit(request: AuditRequest, session: Session) -> AuditPlan:
    """Read the results file (whatever its digest), resolve what it smoothed, find the region of
    every row, lock the output, commit and draw the seed -- on every rank (a collective)."""
    return plan_audit_inputs(None, request, session)


def plan_audit_inputs(
    resolved: SmoothedInputs | None, request: AuditRequest, session: Session
) -> AuditPlan:
    """:func:`plan_audit` with what the results file smoothed given by the caller (``None``:
    from its sidecar, or the request's options), e.g.
    :func:`~ancer_cli.inputs.in_memory_inputs`."""
    results = Path(request.results)
    run = Run(request.out, session.ranks, resume=request.resume, force=request.force)

    def plan() -> AuditPlan:
        run.open()
        if not results.is_file():
            raise AncerError(f"results file {results} does not exist")
        frame = read_results(results)
        if "radius" not in frame.columns:
            raise AncerError(f"{results} holds predictions, not certificates: nothing to audit")
        negative = frame["idx"][frame["radius"] < 0]
        if len(negative):
            first = int(negative.iloc[0])
            raise AncerError(f"{results} states a negative radius for input {first}")
        duplicated = frame["idx"][frame["idx"].duplicated()]
        if len(duplicated):
            raise AncerError(f"{results} has two rows for input {int(duplicated.iloc[0])}")
        record = read_results_record(results)
        if resolved is None:
            spec = results_spec(results, record, request.inputs)
            inputs = resolve_inputs(replace(spec, skip=1, max_index=None), session)
        else:
            spec, inputs = request.inputs, resolved
        inputs = rows_of(inputs, sorted(int(i) for i in frame["idx"]), spec, results)
        indices = inputs.indices
        frame = frame[frame["idx"].isin(indices)].sort_values("idx")
        commitment = inputs.commitment()
        if record is not None and isinstance(record.get("commitment"), Mapping):
            recorded = Commitment.from_record(record, f"sidecar {results}.json")
            changed = recorded.differences(commitment, indices)
            if changed:
                raise AncerError(
                    f"{', '.join(changed)} changed since {results} was certified: the audit "
                    "would check other certificates than the file's"
                )
        regions = {r.idx: r for r in stated_regions(results, frame, record, inputs, session.device)}
        state = rows_state(results, record)
        alpha = claimed_alpha(record)
        job = request.job
        run.layout(AUDIT_COLUMNS)
        recorded_run = {
            "format": "ancer-audit/1",
            "arguments": {
                **inputs.arguments,
                "results": str(results.resolve()),
                "results_sha256": rows_digest(results),
                "N": job.num,
                "alpha": job.alpha,
                "confirmations": job.confirmations,
                "batch_size": job.batch_size,
                "search": asdict(job.search),
            },
            "audited": {
                "rows": state.value,
                "pre_memory": rows_state(pre_memory_path(results), record, PRE_MEMORY).value
                if pre_memory_path(results).is_file()
                else None,
                "alpha_claimed": alpha[0],
                "alpha_source": alpha[1],
            },
            "labels": labels_record(inputs.data),
            **sound_part(inputs),
            "world_size": session.ranks.world_size,
            **provenance(session.device),
        }
        segments = run.commit(recorded_run, commitment, indices, request.inputs.seed)
        return AuditPlan(request, inputs, regions, state, alpha, segments.seeds(), run)

    try:
        return collective(session.ranks, plan)
    except BaseException:
        run.close()
        raise
