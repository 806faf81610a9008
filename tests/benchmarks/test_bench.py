"""The benchmark scripts must not rot: their quick sizes run here (timings are never checked).

That the package and the reference give identical votes and thetas with the same noise, and the
same certified accuracy with free seeds, is tested in ``tests/core/test_smoothing.py`` and
``tests/core/optimize/test_published_reference.py``.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/NAME ARGS...``, captured."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def import_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/NAME.py`` (the benchmarks are scripts, not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def speed():
    return import_benchmark("speed")


@pytest.mark.slow
def test_quick_speed_benchmark_runs(tmp_path):
    out = tmp_path / "speed.json"
    completed = run_script(
        "speed.py", "--quick", "--device", "cpu", "--threads", 1, "--sections", "bench,options",
        "--json", out,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "certify, seconds per input" in completed.stdout
    assert "ANCER optimization, seconds per step" in completed.stdout
    assert "### model options, per sample" in completed.stdout
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert [phase["allocator"] for phase in phases] == ["glibc default", "retained"]
    for phase in phases:
        assert [case["case"]["arch"] for case in phase["cases"]] == ["cnn", "resnet20"]
        for case in phase["cases"]:
            for name in ("reference", "ancer", "ancer_many"):
                row = case["certify"][name]
                assert row["seconds_per_input"] > 0 and row["R"] > 0
            for name in ("bound", "reference", "ancer"):
                assert case["optimize"][name]["seconds_per_step"] > 0
    options = report["options"]
    assert sorted(options) == ["cnn", "resnet20"]
    for variants in options.values():
        assert list(variants) == ["fp32", "fp32 channels-last", "bf16", "bf16 channels-last"]
        assert all(o["forward_us_per_sample"] > 0 for o in variants.values())


@pytest.mark.slow
def test_quick_profile_runs(tmp_path):
    out = tmp_path / "profile.json"
    completed = run_script(
        "profile_run.py", "--quick", "--device", "cpu", "--threads", 1, "--json", out
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "### profile, share of wall time" in completed.stdout
    profile = json.loads(out.read_text())["profile"]
    assert sorted(profile) == ["cnn", "resnet20"]
    for contestants in profile.values():
        for name in ("reference certify", "ancer certify", "reference optimize", "ancer optimize"):
            assert contestants[name]["wall_seconds"] > 0
            shares = contestants[name].copy()
            del shares["wall_seconds"], shares["page_faults"]
            assert sum(shares.values()) >= 1 - 1e-9  # Python fills what the ops leave


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ("checks", "tests/core/test_smoothing.py"),
        ("profile", "benchmarks/profile_run.py"),
        ("gpu", "benchmarks/gpu_check_bench.py"),
    ],
)
def test_sections_of_the_former_script_say_where_they_went(speed, section, where):
    with pytest.raises(SystemExit, match=where):
        speed.main(["--sections", f"bench,{section}"])
    with pytest.raises(SystemExit, match="unknown --sections frobnicate"):
        speed.main(["--sections", "frobnicate"])


@pytest.mark.slow
def test_quick_optimize_quality_benchmark_prints_both_tables(tmp_path):
    out = tmp_path / "quality.json"
    completed = run_script(
        "optimize_quality.py", "--quick", "--work", tmp_path / "work", "--json", out
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = json.loads(out.read_text())["reports"]
    assert sorted(reports) == ["l1", "l2"]
    for report in reports.values():
        for method in ("fixed", "isotropic/reference", "ancer/reference", "ancer/new"):
            assert f"| {method} |" in report
        assert "forward-equivalents: reference" in report
