"""The rows of a run's results file as they are written: one flushed line per row, resumable
after a crash (a line cut short is dropped), sharded across processes and merged in key order.

A row's key says which row it is: the dataset index for a run with one row per input
(:func:`index_key`: certify, predict, reuse), ``(idx, eps)`` for a run with several rows per input
(attack). Keys are read from a line's fields by a :data:`RowKey` and sort in file order.

The format of the lines (columns, number formatting, reading a finished file) is
:mod:`ancer_cli.results`'; the start and end of a run around this loop are
:mod:`ancer_cli.run.skeleton`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ancer_cli.artifacts import atomic_writer
from ancer_cli.distributed import Ranks
from ancer_cli.errors import OutputError
from ancer_cli.results import RESULT_COLUMNS

RowKey = Callable[[Sequence[str]], Any]
"""The key of a row from its fields (hashable, and sorting in the order rows are written); a
field that does not parse raises ``ValueError``."""


def index_key(fields: Sequence[str]) -> int:
    """The key of a run with one row per input: its dataset index, the first field."""
    return int(fields[0])


def complete_rows(
    path: Path, columns: Sequence[str] = RESULT_COLUMNS, key: RowKey = index_key
) -> list[tuple[Any, str]]:
    """The complete rows of a results file being written, as ``(key, line)`` in file order.

    A line cut short by an interruption ends the rows (it and anything after it are left out);
    a file holding part of the header, or nothing, has none. Raises :class:`OutputError` when
    the file cannot be read or its header is not ``columns``.
    """
    path = Path(path)
    header = "\t".join(columns) + "\n"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise OutputError(f"cannot resume {path}: unreadable ({error})") from error
    if header.startswith(text):  # interrupted before the header was complete
        return []
    lines = text.splitlines(keepends=True)
    if lines[0] != header:
        raise OutputError(
            f"cannot resume {path}: its header is not ancer's ({header.strip()!r}); use --force "
            "to start over"
        )
    rows = []
    for line in lines[1:]:
        fields = line.rstrip("\n").split("\t")
        if not line.endswith("\n") or len(fields) != len(columns):
            break  # a line cut short by an interruption: that input is certified again
        try:
            rows.append((key(fields), line))
        except ValueError:
            break
    return rows


class ResultsFile:
    """The results TSV being written: header first, then one flushed line per row.

    ``columns`` are the header's (the results of certify by default). With ``resume`` an
    existing file is kept up to its last complete line (a line cut short by a crash is dropped)
    and :attr:`done` lists the keys of the rows already there (``key``: dataset indices by
    default).
    """

    def __init__(
        self,
        path: Path,
        resume: bool = False,
        columns: Sequence[str] = RESULT_COLUMNS,
        key: RowKey = index_key,
    ) -> None:
        self.path = Path(path)
        self.done: list[Any] = []
        header = "\t".join(columns) + "\n"
        try:
            if resume and self.path.exists():
                rows = complete_rows(self.path, columns, key)
                self.done = [done for done, _ in rows]
                kept = header + "".join(line for _, line in rows)
                # cut a half-written last line in place, keeping every complete row on disk
                self.handle = open(self.path, "r+")  # noqa: SIM115 - closed in close()
                if not self.done:
                    self.handle.truncate(0)
                    self.handle.write(kept)
                self.handle.truncate(len(kept.encode()))
                self.handle.seek(0, os.SEEK_END)
            else:
                self.handle = open(self.path, "w")  # noqa: SIM115
                self.handle.write(header)
            self.handle.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error

    def append(self, line: str) -> None:
        try:
            self.handle.write(line)
            self.handle.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error

    def close(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error
        finally:
            self.handle.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pre_memory_path(out: Path) -> Path:
    """Where the certificates are written before the memory pass: ``results.csv.pre-memory``."""
    return Path(str(out) + ".pre-memory")


class Row(Protocol):
    """A line of a results file about dataset index ``idx``
    (:class:`~ancer_cli.run.certificates.CertificateRow`,
    :class:`~ancer_cli.predict.PredictionRow`, :class:`~ancer_cli.attack.AttackRow`)."""

    @property
    def idx(self) -> int: ...

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


def gather_rows(
    working: Path, columns: Sequence[str] = RESULT_COLUMNS, key: RowKey = index_key
) -> dict[Any, str]:
    """The complete rows of ``working`` and of all its shards, by key (a row found twice -- a
    merge interrupted before it removed the shards -- is kept once)."""
    rows: dict[Any, str] = {}
    for path in [working, *leftover_shards(working)]:
        if path.exists():
            for done, line in complete_rows(path, columns, key):
                rows.setdefault(done, line)
    return rows


def merge_rows(
    working: Path,
    columns: Sequence[str] = RESULT_COLUMNS,
    keys: Sequence[Any] | None = None,
    key: RowKey = index_key,
) -> dict[Any, str]:
    """Rank 0: the rows of ``working`` and its shards into ``working`` alone, in key order.

    ``working`` is rewritten (atomically) only when shards held rows or its own rows were out
    of order or cut short; then the shards are removed. With ``keys``, every one of them must
    have a row. Returns the rows by key.
    """
    shards = leftover_shards(working)
    rows = gather_rows(working, columns, key)
    if keys is not None and set(rows) != set(keys):
        missing = sorted(set(keys) - set(rows))
        raise OutputError(f"the shards of {working} lack rows {missing[:5]}; rerun with --resume")
    own = complete_rows(working, columns, key) if working.exists() else []
    in_order = [done for done, _ in own] == sorted(rows)
    if shards or not in_order:
        header = "\t".join(columns) + "\n"
        with atomic_writer(working) as handle:
            handle.write(header)
            handle.writelines(rows[i] for i in sorted(rows))
        for shard in shards:
            shard.unlink()
    return rows
