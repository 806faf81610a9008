"""Atomic writes, the "output exists" check and the resume check on a run's record."""

from __future__ import annotations

from pathlib import Path

import pytest

from ancer_cli.artifacts import (
    atomic_writer,
    check_new_output,
    check_resumable,
    remove_stale_temporaries,
    write_json,
)
from ancer_cli.errors import OutputError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    with atomic_writer(path) as handle:
        handle.write("new\n")
    assert path.read_text() == "new\n"


def test_stale_temporaries_of_one_output_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".r.csv.abc.tmp").write_text("")
    (tmp_path / ".other.csv.abc.tmp").write_text("")
    assert remove_stale_temporaries(tmp_path, "r.csv") == 1
    assert [p.name for p in tmp_path.iterdir()] == [".other.csv.abc.tmp"]


def test_an_existing_output_needs_force_or_resume(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    check_new_output(path, force=False, resume=False)
    path.write_text("")
    with pytest.raises(OutputError, match="--force to overwrite it or --resume"):
        check_new_output(path, force=False, resume=False)
    with pytest.raises(OutputError, match="--force to overwrite it$"):
        check_new_output(path, force=False)
    check_new_output(path, force=True, resume=False)
    check_new_output(path, force=False, resume=True)
    with pytest.raises(OutputError, match="contradict"):
        check_new_output(path, force=True, resume=True)
    nested = tmp_path / "absent" / "deeper" / "r.csv"
    check_new_output(nested, force=False)  # every --out: missing folders are created
    assert nested.parent.is_dir() and not nested.exists()


def test_an_output_folder_may_exist_empty(tmp_path: Path) -> None:
    folder = tmp_path / "thetas"
    folder.mkdir()
    check_new_output(folder, force=False, resume=False, folder=True)
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="is not empty"):
        check_new_output(folder, force=False, resume=False, folder=True)
    with pytest.raises(OutputError, match="is a file"):
        check_new_output(folder / "manifest.json", force=True, folder=True)


def test_resuming_names_the_first_argument_that_differs(tmp_path: Path) -> None:
    sidecar = tmp_path / "r.csv.json"
    with pytest.raises(OutputError, match="is missing"):
        check_resumable(sidecar, {"N": 100}, "r.csv")
    write_json(sidecar, {"arguments": {"N": 100, "sequential": {"mode": "radius"}}})
    check_resumable(sidecar, {"N": 100, "new": 1}, "r.csv")  # keys only one side has pass
    with pytest.raises(
        OutputError, match=r"sequential\.mode='radius'.*sequential\.mode='adaptive'"
    ):
        check_resumable(sidecar, {"N": 100, "sequential": {"mode": "adaptive"}}, "r.csv")


@pytest.mark.parametrize(
    ("had", "has", "allowed"),
    [(5, 5, True), (5, 9, True), (5, None, True), (5, 4, False), (None, 5, False)],
)
def test_a_bound_of_may_grow_may_rise_or_be_lifted_but_not_fall(
    tmp_path: Path, had: int | None, has: int | None, allowed: bool
) -> None:
    sidecar = tmp_path / "r.csv.json"
    write_json(sidecar, {"arguments": {"N": 100, "max": had}})
    wanted = {"N": 100, "max": has}
    if allowed:
        check_resumable(sidecar, wanted, "r.csv", may_grow=("max",))
    else:
        with pytest.raises(OutputError, match=rf"max={had!r}, this run has max={has!r}"):
            check_resumable(sidecar, wanted, "r.csv", may_grow=("max",))
    if had != has:  # without may_grow any change is refused
        with pytest.raises(OutputError, match="cannot resume r.csv"):
            check_resumable(sidecar, wanted, "r.csv")
    with pytest.raises(OutputError, match="N=100, this run has N=200"):  # others still count
        check_resumable(sidecar, {**wanted, "N": 200}, "r.csv", may_grow=("max",))
