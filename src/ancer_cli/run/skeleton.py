"""The start and the end every run that writes a results file shares (certify, predict, reuse,
attack); each keeps only its config, its row type, its per-input loop and its totals.

Start (:meth:`Run.open`, :meth:`Run.commit`): lock the output, check it may be written (new,
``--force`` or ``--resume``), check a resumed run against its record (arguments, and the hashes of
model, denoiser, thetas and every input it committed), record the commitment, and only then draw
the seed of the inputs not yet committed (:class:`~ancer_cli.run.commit.Segments`).

Rows (:meth:`Run.write`): the sharded, resumable loop of :mod:`ancer_cli.run.rows`, over the
keys of the rows the run writes (dataset indices, or ``(idx, eps)`` for attack).

End (:meth:`Run.rows`, :meth:`Run.finish`): the rows read back once as row objects (for a memory
pass or totals), the final file written, the digest of its rows and the totals recorded in one
last sidecar write, the lock released.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ancer_cli.artifacts import (
    atomic_writer,
    check_new_output,
    check_same_arguments,
    read_json,
    remove_stale_temporaries,
    utc_now,
    write_json,
)
from ancer_cli.distributed import Ranks, broadcast_int, collective
from ancer_cli.errors import OutputError
from ancer_cli.results import (
    PRE_MEMORY,
    RESULTS,
    RowsState,
    results_sidecar_path,
    rows_digest,
    rows_state,
)
from ancer_cli.run.commit import Commitment, Segment, Segments
from ancer_cli.run.lock import OutputLock, lock_path
from ancer_cli.run.rows import (
    ResultsFile,
    Row,
    RowKey,
    complete_rows,
    index_key,
    leftover_shards,
    merge_rows,
    pre_memory_path,
    shard_path,
)

R = TypeVar("R", bound=Row)

GROWABLE = ("max",)
"""Arguments a resumed run may raise (or lift): it then extends a finished run."""
NOT_COMPARED = ("seed",)
"""Arguments a resume does not compare: the seeds are the segments'."""


@dataclass(frozen=True)
class Output:
    """The files of one run: the results ``path``, its sidecar, the file rows are appended to
    (``path`` itself, or ``path.pre-memory`` when a memory pass writes ``path`` at the end) and
    the lock; ``key`` reads a row's key from its fields (its dataset index by default)."""

    path: Path
    columns: tuple[str, ...]
    memory: bool = False
    key: RowKey = field(default=index_key, compare=False)

    @property
    def sidecar(self) -> Path:
        return results_sidecar_path(self.path)

    @property
    def working(self) -> Path:
        return pre_memory_path(self.path) if self.memory else self.path

    @property
    def header(self) -> str:
        return "\t".join(self.columns) + "\n"

    def exists(self) -> bool:
        """Whether anything of an earlier run is on disk."""
        return (
            self.path.exists()
            or self.working.exists()
            or self.sidecar.exists()
            or bool(leftover_shards(self.working))
        )


class Run:
    """One run writing one results file, on every rank (rank 0 locks, merges and records).

    ``record`` (set by :meth:`commit`) is the sidecar's content: the command's record, its
    commitment and segments; :meth:`finish` adds the totals."""

    def __init__(self, out: Path, ranks: Ranks, *, resume: bool, force: bool) -> None:
        self.output = Output(Path(out), ())
        self.ranks = ranks
        self.resume = resume
        self.force = force
        self.started = utc_now()
        self.lock: OutputLock | None = None
        self.earlier: dict[str, Any] | None = None
        self.record: dict[str, Any] = {}
        self.commitment: Commitment | None = None
        self.segments = Segments()

    # -----------------------------------------------------------------------------------------
    # start

    def open(self) -> None:
        """Check that the output may be written, lock it (rank 0) and, with ``resume``, read the
        earlier run's record. Call on every rank, inside the plan's collective, before anything
        heavy is loaded."""
        path = self.output.path
        check_new_output(path, force=self.force, resume=self.resume)  # and makes its folder
        if self.ranks.is_main:
            self.lock = OutputLock(path, self.started)
        earlier = Output(path, (), memory=True)  # its working file may be either
        if self.resume and (earlier.exists() or Output(path, ()).exists()):
            if not earlier.sidecar.exists():
                raise OutputError(
                    f"cannot resume {path}: its record {earlier.sidecar} is missing; use "
                    "--force to start over"
                )
            self.earlier = read_json(earlier.sidecar, "run record")
            self._check_rows_digests(path)

    def _check_rows_digests(self, path: Path) -> None:
        """A finished run's files must hold the rows it recorded: refuse an edited or truncated
        one (an interrupted run has no digest yet)."""
        assert self.earlier is not None
        if self.earlier.get("complete") is not True:
            return
        digests = self.earlier.get("rows_sha256")
        if not isinstance(digests, dict):
            raise OutputError(
                f"cannot resume {path}: its record holds no digest of its rows (an older ancer "
                "wrote it, or it was edited); use --force to start over"
            )
        for role in digests:
            file = pre_memory_path(path) if role == PRE_MEMORY else path
            if rows_state(file, self.earlier, role) is not RowsState.verified:
                raise OutputError(
                    f"cannot resume {path}: {file} is not the file its run wrote (edited, "
                    "truncated or replaced); use --force to start over"
                )

    def layout(
        self, columns: tuple[str, ...], memory: bool = False, key: RowKey = index_key
    ) -> Output:
        """Set the output's columns, whether a memory pass writes it at the end and how a row's
        key is read (:mod:`ancer_cli.run.rows`; one row per dataset index by default)."""
        self.output = Output(self.output.path, tuple(columns), memory, key)
        return self.output

    def commit(
        self,
        record: dict[str, Any],
        commitment: Commitment,
        indices: Sequence[int],
        seed: int | None,
    ) -> Segments:
        """Record what this run certifies, then draw the seed of the inputs not committed yet.

        A resumed run must record the same arguments (a larger ``max`` aside) and the same model,
        denoiser, thetas and inputs for every input the earlier run committed; those keep their
        segment's seed, and the inputs it adds form a new segment whose seed is ``seed`` or, by
        default, fresh OS entropy drawn by rank 0 after the commitment is written. Returns the
        segments (every rank gets the same)."""
        segments = Segments()
        if self.earlier is not None:
            where = f"cannot resume {self.output.path}"
            check_same_arguments(
                self.earlier.get("arguments"), record["arguments"], where, GROWABLE, NOT_COMPARED
            )
            segments = Segments.from_record(self.earlier, f"{where}: its record")
            committed = [i for i in indices if i in segments.committed]
            recorded = Commitment.from_record(self.earlier, f"{where}: its record")
            changed = recorded.differences(commitment, committed)
            if changed:
                raise OutputError(
                    f"{where}: {', '.join(changed)} changed since it was certified; certify "
                    "again with --force"
                )
            first = segments.segments[0].seed if segments.segments else None
            if seed is not None and first is not None and seed != first:
                raise OutputError(
                    f"{where}: it was written with seed {first}, this run has --seed {seed}; "
                    "resume without --seed (its inputs keep their seed, inputs added get a "
                    "fresh one)"
                )
        added = [i for i in indices if i not in segments.committed]
        self.record = {**record, "commitment": commitment.record()}
        self.commitment = commitment
        self.segments = segments
        self._write_record(complete=False)
        if added:
            if seed is None:
                from ancer_cli.core.noise import fresh_seed  # drawn only now: after the commit

                seed = broadcast_int(self.ranks, fresh_seed() if self.ranks.is_main else 0)
            self.segments = segments.added(Segment(seed, tuple(added)))
            self._write_record(complete=False)
        return self.segments

    def _write_record(self, complete: bool, **extra: Any) -> None:
        if not self.ranks.is_main:
            return
        segments = self.segments.segments
        arguments = {**self.record["arguments"], "seed": segments[0].seed if segments else None}
        write_json(
            self.output.sidecar,
            {
                **self.record,
                "arguments": arguments,
                "segments": self.segments.record(),
                "complete": complete,
                "started": self.started,
                **extra,
            },
        )

    # -----------------------------------------------------------------------------------------
    # rows

    def write(
        self,
        rows_of: Callable[[list[Any]], Iterable[Row]],
        keys: Sequence[Hashable],
        on_row: Callable[[Any], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> int | None:
        """The rows of ``keys`` into the working file, in key order, resumable and sharded
        (:mod:`ancer_cli.run.rows`); returns the number of rows kept from an earlier run
        (``None`` on ranks other than 0).

        ``keys`` are the keys of every row the run writes, in file order: its dataset indices
        (one row per input) or, with the layout's ``key``, e.g. ``(idx, eps)`` pairs.
        ``rows_of(share)`` yields the rows of a list of keys, in order. Resuming, rank 0 first
        gathers the complete rows left by the interrupted run -- in the working file and in the
        shards of any number of processes -- and every rank then takes its share of the keys
        still without a row. ``on_start(kept, mine)`` is called with the rows kept and the
        number this rank writes, ``on_row`` after each row it writes."""
        output, ranks, columns, key = self.output, self.ranks, self.output.columns, self.output.key
        working = output.working

        def begin() -> None:
            if ranks.is_main:  # nobody writes before every rank has passed this point
                remove_stale_temporaries(output.path.parent, output.path.name)
                if self.earlier is not None:
                    merge_rows(working, columns, key=key)
                else:  # nothing of an earlier run may pass for this one's rows
                    for path in [working, *leftover_shards(working)]:
                        if path.is_file():
                            path.unlink()

        collective(ranks, begin)

        def write_share() -> int:
            # rank 0 gathered every earlier row into working, and in a distributed run nobody
            # writes working until the end: every rank sees the same rows
            kept = (
                complete_rows(working, columns, key) if self.earlier and working.exists() else []
            )
            done = {row for row, _ in kept}
            unexpected = done.difference(keys)
            if unexpected:
                raise OutputError(
                    f"cannot resume {working}: it holds the row of {_key_text(min(unexpected))}, "
                    "which this run would not write; use the same --skip/--max (and --eps) or "
                    "--force to start over"
                )
            share = ranks.share([k for k in keys if k not in done])
            if on_start is not None:
                on_start(len(done), len(share))
            mine = shard_path(working, ranks) if ranks.distributed else working
            with ResultsFile(mine, resume=mine.exists(), columns=columns, key=key) as results:
                for row in rows_of(share):
                    results.append(row.line())
                    if on_row is not None:
                        on_row(row)
            return len(done)

        kept = collective(ranks, write_share)
        if not ranks.is_main:
            return None
        merge_rows(working, columns, keys, key)
        return kept

    # -----------------------------------------------------------------------------------------
    # end

    def rows(self, parse: Callable[[str], R]) -> list[R]:
        """Rank 0: the rows written, in index order, read back once as row objects."""
        output = self.output
        lines = complete_rows(output.working, output.columns, output.key)
        return [parse(line) for _, line in lines]

    def finish(self, rows: Sequence[Row] | None = None, **extra: Any) -> None:
        """Rank 0: write the final file from ``rows`` (with a memory pass; otherwise the merged
        working file is the final file), record the digest of its rows, ``extra`` (totals,
        memory pass) and ``"complete": true`` in one sidecar write, and release the lock."""
        if self.ranks.is_main:
            if rows is not None:
                with atomic_writer(self.output.path) as handle:
                    handle.write(self.output.header)
                    handle.writelines(row.line() for row in rows)
            digests = {RESULTS: rows_digest(self.output.path)}
            if self.output.memory:
                digests[PRE_MEMORY] = rows_digest(self.output.working)
            self._write_record(complete=True, finished=utc_now(), rows_sha256=digests, **extra)
        self.close()

    def close(self) -> None:
        """Release the lock (idempotent; the end of the process releases it too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _key_text(key: Any) -> str:
    """A row's key in words: ``index 3``, or ``(3, 0.5)``."""
    return f"index {key}" if isinstance(key, int) else str(key)


__all__ = ["GROWABLE", "Output", "Run", "lock_path"]
