"""``ancer verify RESULTS``: check a results file someone handed you against what it claims.

A run records, before it draws its seed, the hashes of what it certifies (model, denoiser,
thetas, every input) and, when it ends, the digest of its rows (:mod:`ancer_cli.run.commit`,
:mod:`ancer_cli.run.skeleton`). :func:`verify` checks the rows against their digest, recomputes
every hash from the files the record names (or from paths given instead) and reports each
mismatch. With ``recertify``, it draws a fresh seed, certifies that many random rows again at the
run's sampling settings, and bounds each row's probability from above: a row whose recorded
radius its class cannot reach by that upper bound is counted as falling below its record -- an
honest file has about ``alpha`` of them (a recorded certificate is wrong with probability at most
its level, and the upper bound with at most ``alpha`` more).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ancer_cli.core.bounds import clopper_pearson_upper
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import Stream, fresh_seed, input_generator
from ancer_cli.core.smoothing import ABSTAIN, sample_counts_many
from ancer_cli.distributed import Session
from ancer_cli.errors import AncerError
from ancer_cli.inputs import input_groups, resolve_inputs
from ancer_cli.results import (
    PRE_MEMORY,
    RESULTS,
    read_results_record,
    results_sidecar_path,
    rows_digest,
)
from ancer_cli.run.certificates import read_certificate_rows
from ancer_cli.run.commit import Commitment
from ancer_cli.run.rows import pre_memory_path
from ancer_cli.run.spec import inputs_spec

FORMATS = ("ancer-results/1", "ancer-predictions/1")


@dataclass(frozen=True)
class Overrides:
    """Files to check in place of those the record names (moved or copied elsewhere)."""

    model: Path | None = None
    thetas: Path | None = None
    data_root: Path | None = None
    denoiser: Path | None = None
    arch: str | None = None


@dataclass
class Recertified:
    """Rows certified again: how many, how many fell below their recorded radius (their class
    cannot reach it by the fresh upper bound), which, and the fresh seed."""

    rows: int
    below: int
    indices: list[int]
    seed: int
    n: int
    alpha: float


@dataclass
class Verification:
    """What :func:`verify` found: ``problems`` (one line each; none when everything matches),
    the checks that passed, and the recertification if asked."""

    results: Path
    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    recertified: Recertified | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    results: Path, session: Session, overrides: Overrides = Overrides(), recertify: int = 0
) -> Verification:
    """Check ``results`` and its sidecar (see the module's docstring); ``recertify`` random rows
    are certified again with a fresh seed. Raises :class:`AncerError` only where nothing can be
    checked (no sidecar, not an ancer record); every mismatch found is a problem reported."""
    report = Verification(Path(results))
    record = read_results_record(results)
    sidecar = results_sidecar_path(results)
    if record is None:
        raise AncerError(
            f"{results} has no sidecar {sidecar}: nothing records what it certifies; only files "
            "written by ancer certify, predict or recertify can be verified"
        )
    if record.get("format") not in FORMATS:
        found = record.get("format")
        raise AncerError(f"{sidecar} is not an ancer results record (format {found!r})")
    _check_rows(Path(results), record, report)
    try:
        commitment = Commitment.from_record(record, f"sidecar {sidecar}")
    except AncerError as error:
        report.problems.append(str(error))
        return report
    spec = inputs_spec(record["arguments"], f"sidecar {sidecar}")
    spec = replace(
        spec,
        model=overrides.model or spec.model,
        thetas=overrides.thetas or spec.thetas,
        data_root=overrides.data_root or spec.data_root,
        denoiser=overrides.denoiser or spec.denoiser,
        arch=overrides.arch or spec.arch,
        seed=None,
    )
    inputs = resolve_inputs(spec, session)
    indices = sorted(commitment.inputs)
    available = set(inputs.indices)
    outside = [i for i in indices if i not in available]
    if outside:
        report.problems.append(
            f"the record commits input {outside[0]}, which its arguments do not select"
        )
        indices = [i for i in indices if i in available]
    current = inputs.commitment(indices)
    changed = commitment.differences(current, indices)
    if changed:
        report.problems.extend(f"{part} differs from the record" for part in changed)
    else:
        kinds = "model" + (", denoiser" if commitment.denoiser_sha256 else "")
        kinds += ", thetas" if commitment.thetas else ""
        report.passed.append(f"the {kinds} and {len(indices)} inputs match their recorded hashes")
    if recertify > 0 and record.get("format") == "ancer-results/1":
        report.recertified = _recertify(Path(results), record, inputs, recertify, session)
        if report.recertified.below:
            report.problems.append(
                f"{report.recertified.below} of {report.recertified.rows} rows certified again "
                "fall below their recorded radius"
            )
    return report


def _check_rows(results: Path, record: dict[str, Any], report: Verification) -> None:
    """The rows against the digest the sidecar recorded when the run finished."""
    if record.get("complete") is not True:
        report.problems.append(f"{results} is an unfinished run: its rows have no digest yet")
        return
    digests = record.get("rows_sha256")
    if not isinstance(digests, dict) or RESULTS not in digests:
        report.problems.append(
            "the record holds no digest of its rows (an older ancer wrote it, or it was edited)"
        )
        return
    for role, file in ((RESULTS, results), (PRE_MEMORY, pre_memory_path(results))):
        if role not in digests:
            continue
        if not file.is_file():
            report.problems.append(f"{file} is missing")
        elif rows_digest(file) != digests[role]:
            report.problems.append(f"{file} is not the file its run wrote (edited or replaced)")
        else:
            report.passed.append(f"{file.name} holds the rows its run wrote")


def _recertify(
    results: Path,
    record: dict[str, Any],
    inputs: Any,
    count: int,
    session: Session,
) -> Recertified:
    """Certify ``count`` random rows again on a fresh seed; count those below their record."""
    arguments = record["arguments"]
    rows_file = pre_memory_path(results) if arguments.get("memory") else results
    rows = read_certificate_rows(rows_file)
    certified = [row for row in rows if row.predict != ABSTAIN and row.radius > 0]
    chosen = random.SystemRandom().sample(certified, min(count, len(certified)))
    chosen.sort(key=lambda row: row.idx)
    n = int(arguments.get("N") or 0)
    alpha = float(arguments.get("alpha") or 0.001)
    batch_size = int(arguments.get("batch_size") or 1000)
    seed = fresh_seed()
    device = session.device
    by_index = {row.idx: row for row in chosen}
    below: list[int] = []
    # the inputs' digests were checked against the record just before; this seed is drawn
    # here and published nowhere before the inputs are read
    for group in input_groups(inputs, [row.idx for row in chosen], 1, device, None):
        row = by_index[group.indices[0]]
        generators = [input_generator(seed, row.idx, device, Stream.certify)]
        votes = sample_counts_many(
            inputs.model, group.xs, group.laws, (n,), batch_size, generators
        )[0, 0].cpu()
        n_a = int(votes[row.predict]) if row.predict < votes.numel() else 0
        law = group.laws[0]
        if not _can_reach(n_a, n, alpha, law, row.radius):
            below.append(row.idx)
    return Recertified(len(chosen), len(below), below, seed, n, alpha)


def _can_reach(n_a: int, n: int, alpha: float, law: NoiseLaw, radius: float) -> bool:
    """Whether the upper confidence bound on ``pA`` (Clopper-Pearson at ``alpha``, plus the
    law's sampler budget ``tau``) reaches the probability ``radius`` needs."""
    upper = min(1.0, clopper_pearson_upper(n_a, n, alpha) + law.tau)
    if upper <= 0.5:
        return False
    if upper >= 1.0:
        return True
    return law.min_theta * law.gap(upper) >= radius * (1.0 - 1e-12)


def summary_lines(report: Verification) -> Sequence[str]:
    """What ``ancer verify`` prints, one line each."""
    lines = [f"ok: {item}" for item in report.passed]
    recertified = report.recertified
    if recertified is not None:
        expected = 2 * recertified.alpha * recertified.rows
        lines.append(
            f"recertified {recertified.rows} random rows (N={recertified.n}, fresh seed "
            f"{recertified.seed}): {recertified.below} below their recorded radius (an honest "
            f"file: about {expected:.2g} or fewer)"
            + (f", indices {recertified.indices}" if recertified.indices else "")
        )
    lines += [f"mismatch: {problem}" for problem in report.problems]
    return lines

