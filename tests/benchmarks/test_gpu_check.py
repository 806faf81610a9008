"""``benchmarks/gpu_check.sh`` must not rot: its CPU rehearsal runs here and writes a summary that
parses (timings are never checked); its failures end in one line and a non-zero exit code; the
targets of its benchmark (``gpu_check_bench.py``) are judged only where they mean something."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.benchmarks.test_bench import import_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gpu_check_bench():
    return import_benchmark("gpu_check_bench")


def run_check(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT.parent,  # the script finds the repository itself
    )


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step_and_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "check"
    completed = run_check("--device", "cpu", "--quick", "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "gpu_check: passed" in completed.stdout
    assert {p.name for p in out.iterdir()} == {
        "gpu-check.json",
        "gpu-check.md",
        "gpu-check.log",
        "cuda-tests.xml",
    }

    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["format"] == "ancer-gpu-check/1" and summary["verdict"] == "passed"
    assert summary["options"]["resolved_device"] == "cpu" and summary["options"]["quick"]
    checks = {check["name"]: check for check in summary["checks"]}
    assert list(checks) == ["environment", "cuda-tests", "benchmark", "identical-votes"]
    assert checks["environment"]["status"] == "passed"
    assert checks["cuda-tests"]["status"] == "skipped"  # the rehearsal hides any GPU
    assert checks["benchmark"]["status"] == "passed"
    assert checks["identical-votes"]["status"] == "passed"
    assert checks["identical-votes"]["gating"] is False

    tests = summary["cuda_tests"]
    assert "tests/core/test_smoothing.py" in tests["files"]
    assert tests["counts"]["skipped"] == len(tests["tests"]) >= 10
    assert {t["outcome"] for t in tests["tests"]} == {"skipped"}
    ids = {t["id"].split("[")[0] for t in tests["tests"]}
    assert (
        "tests/core/test_smoothing.py::test_cuda_votes_equal_cpu_votes_with_the_same_noise" in ids
    )
    assert "tests/cli/test_certify.py::test_device_auto_picks_cuda" in ids

    gpu = summary["benchmark"]["gpu"]
    pairs = [(row["case"]["arch"], row["option"]) for row in gpu["rows"]]
    options = ["fp32", "bf16", "bf16 channels-last"]
    assert pairs == [(arch, o) for arch in ("resnet110", "resnet50") for o in options]
    for row in gpu["rows"]:
        for name in ("reference", "ancer"):
            assert row["certify"][name]["seconds_per_input"] > 0 and row["certify"][name]["R"] > 0
            assert row["optimize"][name]["seconds_per_step"] > 0
        assert all(row["identical_votes"].values())
    assert len(summary["targets"]) == 4
    assert all(target["met"] is None for target in summary["targets"])  # not on a CPU

    markdown = (out / "gpu-check.md").read_text()
    assert markdown.startswith("# ancer GPU check: PASSED (CPU rehearsal)")
    for heading in ("## Checks", "## CUDA tests", "## Targets", "### the GPU check: certify"):
        assert heading in markdown
    assert "| benchmark | passed |" in markdown


@pytest.mark.slow
def test_cuda_requested_without_cuda_fails_in_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "check"
    completed = run_check("--device", "cuda", "--out", out, timeout=120)
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "gpu_check: FAILED: environment (--device cuda: no CUDA device" in completed.stderr
    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["verdict"] == "failed"
    assert [(c["name"], c["status"]) for c in summary["checks"]] == [("environment", "failed")]
    assert "# ancer GPU check: FAILED" in (out / "gpu-check.md").read_text()


def test_usage_errors_exit_2() -> None:
    completed = run_check("--frobnicate", timeout=30)
    assert completed.returncode == 2
    assert completed.stderr.strip() == "gpu_check: unknown option --frobnicate (see --help)"
    assert run_check("--budget", "soon", timeout=30).returncode == 2
    helped = run_check("--help", timeout=30)
    assert helped.returncode == 0 and "--device auto|cpu|cuda|cuda:K" in helped.stdout


@pytest.mark.slow
def test_modules_with_cuda_tests_import_without_matplotlib_or_hypothesis() -> None:
    """A bare GPU machine may lack them: the modules the check runs must not need them."""
    marked = re.compile(r"pytest\.mark\.cuda\b")  # what gpu_check.sh greps for
    files = sorted(
        path.relative_to(ROOT)
        for path in (ROOT / "tests").rglob("test_*.py")
        if marked.search(path.read_text())
    )
    assert Path("tests/core/test_smoothing.py") in files
    assert Path("tests/benchmarks/test_gpu_check.py") not in files
    modules = [".".join(path.with_suffix("").parts) for path in files]
    program = f"""
import importlib, importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("matplotlib", "hypothesis"):
            raise ImportError(f"{{name}} is absent on this machine")

sys.meta_path.insert(0, Absent())
for name in ["tests.conftest", *{modules!r}]:
    importlib.import_module(name)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def _gpu_row(arch: str, option: str, reference_s: float, ancer_s: float, r: float, n: int):
    timing = {"seconds_per_input": 0.0, "R": 0.0, "speedup_vs_reference": 1.0, "peak_mib": 1.0}
    step = {"seconds_per_step": 0.1, "ratio_to_bound": 1.0, "speedup_vs_reference": 1.0}
    return {
        "name": arch,
        "option": option,
        "case": {
            "arch": arch,
            "batch": 1000,
            "n0": 100,
            "n": n,
            "opt_inputs": 1,
            "opt_samples": 100,
        },
        "forward_us_per_sample": 1.0,
        "bound_peak_mib": 1.0,
        "certify": {
            "reference": {**timing, "seconds_per_input": reference_s, "R": 1.1},
            "ancer": {**timing, "seconds_per_input": ancer_s, "R": r},
        },
        "optimize": {"bound": step, "reference": step, "ancer": step},
        "identical_votes": {"l2 scalar": True},
    }


def test_gpu_targets_are_judged_on_cuda_at_full_size_only(gpu_check_bench, capsys) -> None:
    bench = gpu_check_bench
    rows = [
        _gpu_row("resnet110", "fp32", 2.0, 1.9, 1.02, 100_000),
        _gpu_row("resnet110", "bf16 channels-last", 1.0, 0.8, 1.08, 100_000),
        _gpu_row("resnet50", "fp32", 3.0, 2.9, 1.07, 10_000),
        _gpu_row("resnet50", "bf16 channels-last", 1.2, 1.1, 1.03, 10_000),
    ]
    targets = bench.gpu_targets(rows, torch.device("cuda"), quick=False)
    assert [(t["value"], t["met"]) for t in targets] == [
        (1.02, True),  # R, fp32, resnet110
        (1.07, False),  # R, fp32, resnet50
        (pytest.approx(3.0 / 1.1), False),  # fp32 reference / bf16 channels-last ancer
        (0.8, True),  # the fastest resnet110 option at N = 100,000
    ]
    assert targets[3]["option"] == "bf16 channels-last" and targets[3]["N"] == 100_000
    assert all(t["met"] is None for t in bench.gpu_targets(rows, torch.device("cpu"), False))
    assert all(t["met"] is None for t in bench.gpu_targets(rows, torch.device("cuda"), True))
    rows[1]["case"]["n"] = rows[0]["case"]["n"] = 20_000  # not the target's N: not judged
    assert bench.gpu_targets(rows, torch.device("cuda"), quick=False)[3]["met"] is None

    bench.print_gpu_section({"rows": rows, "skipped": [], "targets": targets})
    printed = capsys.readouterr().out
    assert "| resnet50 | bf16 channels-last | 1000 | 100+10000 |" in printed
    assert "2.73x |" in printed  # speed-up over the fp32 reference
    assert "| certify overhead R <= 1.05, fp32, resnet110 | 1.020 | yes |" in printed
    assert "| certify overhead R <= 1.05, fp32, resnet50 | 1.070 | NO |" in printed
