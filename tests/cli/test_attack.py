"""``ancer attack`` end to end: from a results file's sidecar, and from a model and a sigma."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import (
    CERTIFY_FAST,
    assert_domain_error,
    assert_usage_error,
    invoke,
    ok,
)

QUICK = ("--steps", 2, "--samples", 4, "--N", 100, "--device", "cpu")


@pytest.fixture(scope="module")
def results(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("attack") / "fixed.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--max", 4, "--out", out, *CERTIFY_FAST)
    return out


def test_attack_of_a_results_file(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "attack.csv"
    result = ok("attack", results, "--eps", 0, "--eps", 0.5, "--out", out, "--seed", 1, *QUICK)
    assert "in l2 balls of eps 0, 0.5" in result.stderr and "N=100" in result.stderr
    assert "empirical robust accuracy at eps 0:" in result.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\teps\tpredict\tcorrect\tnorm_l2\tnorm_l1\tnorm_linf\ttime"
    fields = [line.split("\t") for line in lines[1:]]
    assert [(f[0], f[2]) for f in fields] == [(str(i), e) for i in range(4) for e in ("0.0", "0.5")]
    assert all(float(f[5]) <= 0.5 for f in fields)
    record = json.loads(Path(f"{out}.json").read_text())
    arguments = record["arguments"]
    assert record["format"] == "ancer-attack/1" and record["complete"] is True
    certified = json.loads(Path(f"{results}.json").read_text())["arguments"]
    assert arguments["model_sha256"] == certified["model_sha256"]
    assert arguments["results"] == str(results.resolve()) and arguments["seed"] == 1
    assert arguments["sigma"] == 0.25 and arguments["alpha"] == 0.001  # the results file's
    assert record["rows_sha256"]["results"]
    # the results file already says what was smoothed
    assert_domain_error(
        invoke("attack", results, "--sigma", 0.5, "--eps", 0.5, "--out", tmp_path / "x.csv"),
        "leave out --sigma",
    )
    # the attack file is not a results file
    assert_domain_error(invoke("accuracy", out), "ancer accuracy RESULTS --attack")


def test_attack_of_a_model_in_linf_balls(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "linf.csv"
    ok("attack", "--model", model_path, "--sigma", 0.25, "--max", 2, "--threat", "linf",
       "--eps", "1/16", "--out", out, "--seed", 0, *QUICK)  # fmt: skip
    fields = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert [f[2] for f in fields] == [repr(1 / 16)] * 2
    assert all(float(f[7]) <= 1 / 16 for f in fields)  # in the ball, on the 1/16 grid
    assert json.loads(Path(f"{out}.json").read_text())["arguments"]["threat"] == "linf"


def test_usage_errors(results: Path, tmp_path: Path) -> None:
    assert_usage_error(invoke("attack", results, "--out", tmp_path / "a.csv"), "--eps")
    assert_usage_error(invoke("attack", "--eps", 0.5), "--sigma")
    assert_usage_error(invoke("attack", results, "--eps", "-1"), "--eps")
    assert_usage_error(invoke("attack", results, "--eps", "x/2"), "fraction")
