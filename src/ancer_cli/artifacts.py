"""Atomic writes, JSON records and sidecars, and the "output exists" check every command shares.

Writes are atomic (temporary file in the same folder, fsync, rename), so a crash never leaves a
half-written file under the final name. The results TSV lives in :mod:`ancer_cli.results`, the
theta-folder format in :mod:`ancer_cli.thetas`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ancer_cli.errors import OutputError, ResultsError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: Path, prefix: str = "") -> int:
    """Delete the temporaries :func:`atomic_writer` left for files named ``prefix*`` in
    ``folder`` when a process was killed mid-write."""
    removed = 0
    for stale in Path(folder).glob(f".{glob.escape(prefix)}*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def check_new_output(
    path: Path, *, force: bool, resume: bool | None = None, folder: bool = False
) -> None:
    """Refuse to overwrite an output silently, and make the folders it goes in (the one home
    of the ``--out`` rules every command follows).

    ``path`` must not exist (for a ``folder``: may exist empty) unless ``force``, or ``resume``
    for outputs that can be continued (``resume=None``: this output cannot be). A file's missing
    parent folders are created (a ``folder`` output is created where it is written). Raises
    :class:`OutputError` naming the option that would allow it, or why a folder cannot be made.
    """
    path = Path(path)
    if force and resume:
        raise OutputError("--force and --resume contradict each other; pass one of them")
    allowed = force or bool(resume)
    hint = "pass --force to overwrite it" + (
        " or --resume to continue it" if resume is not None else ""
    )
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} is a file; give a folder for the theta files")
        if path.exists() and any(path.iterdir()) and not allowed:
            raise OutputError(f"{path} is not empty; {hint}")
        return
    if path.is_dir():
        raise OutputError(
            f"--out {path} is a folder; give the file to write (e.g. {path / 'results.csv'})"
        )
    if path.exists() and not allowed:
        raise OutputError(f"{path} already exists; {hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission, ...
        raise OutputError(
            f"cannot write {path}: cannot create folder {path.parent} ({error.strerror or error})"
        ) from error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_writer(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing or malformed file is an :class:`OutputError`-free
    ``ResultsError``-like message naming ``what``."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ResultsError(f"{what} {path} does not exist") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{what} {path} is not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise ResultsError(f"{what} {path} must hold a JSON object, got {type(payload).__name__}")
    return payload


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_resumable(
    sidecar: Path, arguments: dict[str, Any], what: str, may_grow: tuple[str, ...] = ()
) -> None:
    """Refuse to resume an output written with other arguments; name the first that differs.

    A key of ``may_grow`` (an upper bound such as ``max``) may rise, or become ``None`` (no
    bound), so that resuming extends a run; it may not fall.
    """
    if not sidecar.exists():
        raise OutputError(
            f"cannot resume {what}: its record {sidecar} is missing; use --force to start over"
        )
    recorded = read_json(sidecar, "run record").get("arguments", {})
    check_same_arguments(recorded, arguments, f"cannot resume {what}", may_grow)


def check_same_arguments(
    recorded: object,
    wanted: dict[str, Any],
    where: str,
    may_grow: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
) -> None:
    """Refuse (an :class:`OutputError` starting with ``where``) when the ``recorded`` arguments
    differ from ``wanted``; name the first difference (a dotted key inside nested records). Keys
    of ``may_grow`` may rise or become ``None``; keys of ``ignore`` are not compared."""
    if not isinstance(recorded, dict):
        raise OutputError(f"{where}: its record is damaged; use --force to start over")
    recorded = {**recorded, **_grown(recorded, wanted, may_grow)}
    wanted = {key: value for key, value in wanted.items() if key not in ignore}
    for key, (had, has) in _differences(recorded, wanted).items():
        raise OutputError(
            f"{where}: it was written with {key}={had!r}, this run has {key}={has!r}; use the "
            "same arguments or --force to start over"
        )


def _grown(
    recorded: dict[str, Any], wanted: dict[str, Any], keys: tuple[str, ...]
) -> dict[str, Any]:
    """The keys of ``keys`` whose bound ``wanted`` raises (or lifts) above ``recorded``."""
    grown = {}
    for key in keys:
        had, has = recorded.get(key), wanted.get(key)
        if isinstance(had, int) and (has is None or (isinstance(has, int) and has >= had)):
            grown[key] = has
    return grown


def _differences(
    recorded: dict[str, Any], wanted: dict[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """``{dotted.key: (recorded, wanted)}`` for keys present in both whose values differ."""
    found: dict[str, Any] = {}
    for key, value in wanted.items():
        if key not in recorded:
            continue
        had = recorded[key]
        if isinstance(had, dict) and isinstance(value, dict):
            found.update(_differences(had, value, f"{prefix}{key}."))
        elif had != value:
            found[f"{prefix}{key}"] = (had, value)
    return found
