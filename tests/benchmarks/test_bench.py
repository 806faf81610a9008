"""The benchmark script must not rot: its quick size runs here (timings are never checked)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ancer_cli.core.noise import input_generator
from ancer_cli.core.smoothing import certify, sample_counts

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def reference():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import reference as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


class Linear3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 64, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_reference_and_package_give_identical_votes_with_the_same_noise(reference, norm, per_pixel):
    model = Linear3()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    theta = torch.linspace(0.1, 0.9, 64).view(1, 8, 8) if per_pixel else 0.4
    smooth = reference.CohenSmooth(model, 3, theta, norm, input_generator(0, 7, "cpu"))
    prediction, gap, selection, estimation = smooth.certify(x, 30, 777, 0.001, 100)
    stream = input_generator(0, 7, "cpu")
    assert np.array_equal(selection, sample_counts(model, x, theta, norm, 30, 100, stream).numpy())
    assert np.array_equal(
        estimation, sample_counts(model, x, theta, norm, 777, 100, stream).numpy()
    )
    cert = certify(model, x, theta, norm, 30, 777, 0.001, 100, input_generator(0, 7, "cpu"))
    assert (cert.prediction, cert.gap) == (prediction, pytest.approx(gap, rel=1e-12))


@pytest.mark.slow
def test_quick_benchmark_runs_and_its_checks_pass(tmp_path):
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench.py"),
            "--quick",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "certify, seconds per input" in completed.stdout
    assert "ANCER optimization, seconds per step" in completed.stdout
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
    checks = report["checks"]
    assert all(all(votes.values()) for votes in checks["identical_votes"].values())
    assert checks["theta_max_relative_difference"] < 1e-4
    assert checks["free_seeds"]["agree"]


def test_reference_and_package_find_the_same_thetas_with_the_same_noise(reference):
    from ancer_cli.core.noise import Stream
    from ancer_cli.core.optimize import AncerConfig, optimize_ancer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    soft = nn.Sequential(model, nn.Softmax(dim=1))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    theta_iso = torch.tensor([0.2, 0.3])
    config = AncerConfig(iterations=6, samples=8)
    # the model's weights still require gradients: the package computes none and keeps .grad
    package = optimize_ancer(
        model,
        x,
        theta_iso,
        "l2",
        config,
        [input_generator(0, i, "cpu", Stream.ancer) for i in range(2)],
    )
    assert all(parameter.grad is None for parameter in model.parameters())
    streams = [input_generator(0, i, "cpu", Stream.ancer) for i in range(2)]

    def same_noise(new_batch, theta_repeated):
        eps = torch.cat([torch.randn((8, 1, 8, 8), generator=stream) for stream in streams])
        return eps * theta_repeated

    ref = reference.optimize_ancer(
        soft,
        x,
        "l2",
        config.lr,
        theta_iso.view(-1, 1, 1, 1).expand_as(x).contiguous(),
        config.iterations,
        config.samples,
        config.kappa,
        same_noise,
    )
    assert torch.allclose(package, ref, rtol=1e-5, atol=0)
    start = theta_iso.view(-1, 1, 1, 1)
    assert (package >= start).all() and (package > start).any()  # projected, and it moved


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


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


def test_gpu_targets_are_judged_on_cuda_at_full_size_only(bench, capsys):
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


@pytest.mark.slow
def test_quick_optimize_quality_benchmark_prints_both_tables(tmp_path):
    out = tmp_path / "quality.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "optimize_quality.py"),
            "--quick",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = json.loads(out.read_text())["reports"]
    assert sorted(reports) == ["l1", "l2"]
    for report in reports.values():
        for method in ("fixed", "isotropic/reference", "ancer/reference", "ancer/new"):
            assert f"| {method} |" in report
        assert "forward-equivalents: reference" in report
