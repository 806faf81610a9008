"""The reuse run's library side: reading the earlier run back, and what it refuses -- unfinished
runs, missing certificates, and results files that are not the ones their run wrote (edited,
truncated, foreign)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from ancer_cli.errors import AncerError
from ancer_cli.reuse import ReuseRequest, _guarantee, plan_reuse, read_earlier
from tests.helpers import ok
from tests.runs import CPU

EARLIER = ("--N0", 20, "--N", 200, "--seed", 3, "--device", "cpu", "--max", 4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, model_path: Path, thetas_dir: Path):
    folder = tmp_path_factory.mktemp("runs")
    ok("certify", "--model", model_path, "--sigma", 0.25, "--out", folder / "fixed.csv", *EARLIER)
    ok("certify", "--thetas", thetas_dir, "--out", folder / "ancer.csv", *EARLIER)
    return folder


def _copy(runs: Path, name: str, folder: Path) -> Path:
    for suffix in ("", ".json", ".pre-memory"):
        if Path(f"{runs / name}{suffix}").exists():
            shutil.copy(f"{runs / name}{suffix}", f"{folder / name}{suffix}")
    return folder / name


def test_reads_the_certificates_before_the_memory_pass(runs: Path):
    fixed = read_earlier(runs / "fixed.csv")
    assert [row.idx for row in fixed.rows] == [0, 1, 2, 3]
    fields = fixed.key_fields()
    assert fields["seed"] == 3 and fields["N"] == 200 and fields["sound"] is True
    assert fields["method"] == "fixed" and len(fields["model_sha256"]) == 64
    assert fields["level"] == 0.001 and fields["denoiser"] is None
    assert sorted(fixed.commitment.inputs) == [0, 1, 2, 3]
    memory = read_earlier(runs / "ancer.csv")
    before = Path(str(runs / "ancer.csv") + ".pre-memory").read_text().splitlines()
    assert [row.line() for row in memory.rows] == [line + "\n" for line in before[1:]]
    assert memory.key_fields()["memory"] is True


def test_refuses_unfinished_runs_and_missing_certificates(runs: Path, tmp_path: Path):
    for name in ("fixed.csv", "ancer.csv"):
        _copy(runs, name, tmp_path)
        record = json.loads(Path(str(runs / name) + ".json").read_text())
        Path(str(tmp_path / name) + ".json").write_text(json.dumps({**record, "complete": False}))
    with pytest.raises(AncerError, match="unfinished run"):
        read_earlier(tmp_path / "fixed.csv")
    record["complete"] = True
    Path(str(tmp_path / "ancer.csv") + ".json").write_text(json.dumps(record))
    Path(str(tmp_path / "ancer.csv") + ".pre-memory").unlink()
    with pytest.raises(AncerError, match="before the memory pass"):
        read_earlier(tmp_path / "ancer.csv")
    for key in ("N", "model_sha256", "method"):
        broken = {**record, "arguments": {**record["arguments"], key: None}}
        Path(str(tmp_path / "ancer.csv") + ".json").write_text(json.dumps(broken))
        with pytest.raises(AncerError, match=f"lacks arguments.{key}"):
            read_earlier(tmp_path / "ancer.csv")


def test_refuses_edited_truncated_and_foreign_rows(runs: Path, tmp_path: Path):
    """A radius raised by hand, rows deleted, or another run's file under this sidecar: the
    digest the sidecar recorded no longer matches, and reuse says so instead of reusing."""
    lines = (runs / "fixed.csv").read_text().splitlines(keepends=True)
    fields = lines[1].split("\t")
    edited = [lines[0], "\t".join([*fields[:3], "1.5", *fields[4:]]), *lines[2:]]
    for name, text in [("edited", "".join(edited)), ("truncated", "".join(lines[:3]))]:
        folder = tmp_path / name
        folder.mkdir()
        out = _copy(runs, "fixed.csv", folder)
        out.write_text(text)
        with pytest.raises(AncerError, match="not the file its run wrote"):
            read_earlier(out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    out = _copy(runs, "fixed.csv", foreign)
    shutil.copy(runs / "ancer.csv", out)
    with pytest.raises(AncerError, match="not the file its run wrote"):
        read_earlier(out)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    out = _copy(runs, "fixed.csv", legacy)
    record = json.loads(Path(f"{out}.json").read_text())
    del record["rows_sha256"]
    Path(f"{out}.json").write_text(json.dumps(record))
    with pytest.raises(AncerError, match="holds no digest"):
        read_earlier(out)


def test_reusing_a_reuse_run_composes_the_levels():
    """A row reused from a reuse run is wrong only if that run's row was (its own any-row level)
    or the new zeta is: the levels add up, they are not reset to the first run's alpha."""
    first = _guarantee(0.001, 0.001, 0.0001)
    assert first["reuse_rows"] == pytest.approx(0.0011)
    assert first["any_row"] == pytest.approx(0.0021)
    second = _guarantee(first["any_row"], 0.001, 0.0001)
    assert second["reuse_rows"] == pytest.approx(0.0022)
    assert second["any_row"] == pytest.approx(0.0032)


def test_an_input_changed_after_the_reuse_run_committed_it_is_refused(
    runs: Path, model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """As certify: once the reuse run has committed its inputs and published its seed (when its
    rows start), an input that changes on its way in is refused with one line."""
    out = tmp_path / "reused.csv"
    request = ReuseRequest(results=runs / "fixed.csv", model=model_path, out=out, seed=1)
    plan = plan_reuse(request, CPU)
    dataset = plan.inputs.data.dataset
    read = type(dataset).__getitem__
    published = []

    def changed(self: object, i: int) -> tuple[torch.Tensor, ...]:
        x, y = read(self, i)
        return (x + 1 / 16 if published and i == 2 else x), y

    monkeypatch.setattr(type(dataset), "__getitem__", changed)
    with pytest.raises(AncerError, match="input 2 changed since this run committed it"):
        plan.execute(CPU, on_start=lambda done, total: published.append(total))
    assert [line.split("\t")[0] for line in out.read_text().splitlines()[1:]] == ["0", "1"]
