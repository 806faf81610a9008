"""One run at a time on an output: an exclusive lock beside it, held for the whole run.

``results.csv.lock`` is locked with ``flock`` (the kernel releases the lock when its process ends,
however it ends: a run killed with SIGKILL leaves no stale lock, only the file, which the next run
takes over) and names its holder (pid, host, start time) for the message a second run prints. The
file is removed, still locked, when the run ends; a process that opened it just before checks
after locking that the path still names the file it locked, and starts over otherwise. ``flock``
needs a local or a lock-aware shared file system: on NFS without lock support, two runs on one
machine are still kept apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

from ancer_cli.errors import OutputError


def lock_path(out: Path) -> Path:
    """``results.csv`` -> ``results.csv.lock``."""
    return Path(str(out) + ".lock")


class OutputLock:
    """The exclusive lock of one output; :meth:`release` (or the end of the process) frees it."""

    def __init__(self, out: Path, started: str) -> None:
        self.out = Path(out)
        self.path = lock_path(self.out)
        self._handle: IO[str] | None = None
        self._acquire(started)

    def _acquire(self, started: str) -> None:
        for _ in range(100):  # another run may remove the file between our open and lock
            try:
                handle = open(self.path, "a+")  # noqa: SIM115 - kept open while locked
            except OSError as error:
                raise OutputError(
                    f"cannot write {self.out}: cannot create its lock {self.path} "
                    f"({error.strerror or error})"
                ) from error
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(handle)
                handle.close()
                raise OutputError(
                    f"another ancer run ({holder}) is writing {self.out}; wait for it to end, "
                    "or write to another --out"
                ) from None
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # removed by the run that held it: lock the new file instead
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            self._handle = handle
            return
        raise OutputError(f"cannot lock {self.out}: {self.path} keeps changing")

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        """Remove the lock file and free the lock (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        handle.close()

    def __del__(self) -> None:
        self.release()


def _holder(handle: IO[str]) -> str:
    """Who holds the lock, from what it wrote in the file."""
    try:
        handle.seek(0)
        holder = json.loads(handle.read() or "{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"
