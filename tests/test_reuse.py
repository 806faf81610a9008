"""The reuse run's library side: reading the earlier run back, and what it refuses."""

import json
from pathlib import Path

import pytest

from ancer_cli.errors import AncerError
from ancer_cli.reuse import read_earlier
from tests.helpers import ok

EARLIER = ("--N0", 20, "--N", 200, "--seed", 3, "--device", "cpu", "--max", 4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, model_path: Path, thetas_dir: Path):
    folder = tmp_path_factory.mktemp("runs")
    ok("certify", "--model", model_path, "--sigma", 0.25, "--out", folder / "fixed.csv", *EARLIER)
    ok("certify", "--thetas", thetas_dir, "--out", folder / "ancer.csv", *EARLIER)
    return folder


def test_reads_the_certificates_before_the_memory_pass(runs: Path):
    fixed = read_earlier(runs / "fixed.csv")
    assert list(fixed.rows["idx"]) == [0, 1, 2, 3]
    fields = fixed.key_fields()
    assert fields["seed"] == 3 and fields["N"] == 200 and fields["sound"] is True
    assert fields["method"] == "fixed" and len(fields["model_sha256"]) == 64
    memory = read_earlier(runs / "ancer.csv")
    before = Path(str(runs / "ancer.csv") + ".pre-memory").read_text().splitlines()
    assert len(memory.rows) == len(before) - 1 and memory.key_fields()["memory"] is True


def test_refuses_unfinished_runs_and_missing_certificates(runs: Path, tmp_path: Path):
    for name in ("fixed.csv", "ancer.csv"):
        (tmp_path / name).write_text((runs / name).read_text())
        record = json.loads(Path(str(runs / name) + ".json").read_text())
        Path(str(tmp_path / name) + ".json").write_text(json.dumps({**record, "complete": False}))
    with pytest.raises(AncerError, match="unfinished run"):
        read_earlier(tmp_path / "fixed.csv")
    record["complete"] = True
    Path(str(tmp_path / "ancer.csv") + ".json").write_text(json.dumps(record))
    with pytest.raises(AncerError, match="before the memory pass"):
        read_earlier(tmp_path / "ancer.csv")
    for key in ("N", "model_sha256", "method"):
        broken = {**record, "arguments": {**record["arguments"], key: None}}
        Path(str(tmp_path / "ancer.csv") + ".json").write_text(json.dumps(broken))
        with pytest.raises(AncerError, match=f"lacks arguments.{key}"):
            read_earlier(tmp_path / "ancer.csv")
