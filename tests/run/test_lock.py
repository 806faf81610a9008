"""One run at a time on an output: a second run exits with one line naming the first; a lock
left by a run that died is taken over."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ancer_cli.errors import OutputError
from ancer_cli.run.lock import OutputLock, lock_path
from tests.helpers import assert_domain_error, invoke, ok


def test_a_second_lock_names_the_holder_and_the_first_release_frees_it(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    first = OutputLock(out, "2026-12-07T00:00:00+00:00")
    holder = json.loads(lock_path(out).read_text())
    assert holder["pid"] == os.getpid() and holder["started"] == "2026-12-07T00:00:00+00:00"
    with pytest.raises(OutputError, match=rf"another ancer run \(pid {os.getpid()} on "):
        OutputLock(out, "later")
    first.release()
    assert not lock_path(out).exists()
    second = OutputLock(out, "later")
    assert second.held
    second.release()
    second.release()  # idempotent


def test_a_stale_lock_file_is_taken_over(tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves its lock file but not its lock (the kernel frees it)."""
    out = tmp_path / "r.csv"
    lock_path(out).write_text('{"pid": 1, "host": "gone", "started": "yesterday"}\n')
    taken = OutputLock(out, "now")
    assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    taken.release()


def test_two_runs_on_one_output(model_path: Path, tmp_path: Path) -> None:
    """While one run holds ``--out``, another certify (or predict) on it exits 1 with one line
    naming the first, and writes nothing; once the first ends, the output is free again."""
    out = tmp_path / "r.csv"
    busy = OutputLock(out, "2026-12-07T00:00:00+00:00")
    for command, extra in (("certify", ("--N0", 10)), ("predict", ())):
        result = invoke(command, "--model", model_path, "--sigma", 0.25, "--max", 2, "--N", 50,
                        *extra, "--device", "cpu", "--out", out, "--force")  # fmt: skip
        assert_domain_error(result, "another ancer run (pid", str(out), "wait for it")
        assert not out.exists() and not Path(f"{out}.json").exists()
    busy.release()
    ok("certify", "--model", model_path, "--sigma", 0.25, "--max", 2, "--N0", 10, "--N", 50,
       "--device", "cpu", "--out", out)  # fmt: skip
    assert not lock_path(out).exists()
