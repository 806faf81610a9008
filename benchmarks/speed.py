"""Speed benchmark: ``ancer`` against the reference algorithms and against the forward-pass bound.

One process, one run, the same model, device, batch size and precision for every contestant:

* **reference** -- faithful re-implementations (``reference.py``) of Cohen et al.'s certify loop
  and of the original ANCER optimization;
* **ancer** -- this package: ``certify`` (one input at a time), ``certify_many`` (several inputs'
  samples packed into each forward pass) and ``optimize_ancer``;
* **bound** -- a pure batched forward pass (certify) and a forward+backward pass with frozen
  weights (optimize) on random inputs of the same shape: the cost no implementation can beat.

Printed per model: seconds per input, the overhead ratio
``R = certify time / ((N0 + N) x pure forward time per sample)``, the optimization step against
the forward+backward bound, the speed-up over the reference, and the peak memory of each run.
``--sections options`` sweeps the model options instead: precision, channels-last and
``torch.compile``, per sample, against fp32 NCHW eager.

Timings are taken in interleaved rounds (every contestant once per round) and the fastest round
is reported, which is the least disturbed by other processes. They are never pass/fail gates.
That the package and the reference give identical votes and thetas with the same noise, and the
same certified accuracy with free seeds, is tested in ``tests/core/test_smoothing.py`` and
``tests/core/optimize/test_published_reference.py``.

    python benchmarks/speed.py                    # the full run on this machine's device
    python benchmarks/speed.py --quick            # tiny sizes, a few seconds (run in CI)
    python benchmarks/speed.py --device cuda --precision bf16 --channels-last
    python benchmarks/speed.py --sections options --compile        # bf16, channels-last, compile
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (the sibling module, importable however this script is run)
from harness import Case  # noqa: E402

from ancer_cli.core.choices import Precision  # noqa: E402
from ancer_cli.core.precision import prepare_model  # noqa: E402
from ancer_cli.models import build_model  # noqa: E402
from ancer_cli.runtime import retain_freed_memory  # noqa: E402

# Sizes per device. N = 100,000 (the papers') where a round stays short; R and the speed-ups do
# not depend on N once N >> batch. The small-N and small-batch cases are where bookkeeping counts.
CPU_CASES = (
    Case("cnn", "digits", 1000, 100, 100_000, 2, 10, 100, 5, rounds=2),
    Case("cnn", "digits", 1000, 100, 1_000, 10, note="N=1000"),
    Case("cnn", "digits", 100, 100, 10_000, 2, note="batch 100"),
    Case("resnet20", "cifar10", 400, 100, 2_000, 2, 2, 100, 3),
    Case("resnet18", "cifar10", 200, 100, 1_000, 1, 1, 100, 2, rounds=2),
)
CUDA_CASES = (
    Case("cnn", "digits", 1000, 100, 100_000, 4, 50, 100, 10),
    Case("cnn", "digits", 1000, 100, 1_000, 20, note="N=1000"),
    Case("resnet20", "cifar10", 1000, 100, 100_000, 2, 16, 100, 10),
    Case("resnet110", "cifar10", 1000, 100, 20_000, 2, 4, 100, 5),
    Case("resnet50", "imagenet", 250, 100, 2_000, 2, 1, 100, 3),
)
QUICK_CASES = (
    Case("cnn", "digits", 100, 20, 200, 2, 2, 16, 2, rounds=1),
    Case("resnet20", "cifar10", 8, 4, 12, 2, 1, 4, 1, rounds=1),
)
SECTIONS = ("bench", "options")
# sections of the former single benchmark script, and where they went
MOVED = {
    "checks": "the checks are tests: pytest tests/core/test_smoothing.py "
    "tests/core/optimize/test_published_reference.py",
    "profile": "run benchmarks/profile_run.py",
    "gpu": "run benchmarks/gpu_check_bench.py (or bash benchmarks/gpu_check.sh)",
}


def select_cases(args: argparse.Namespace, device: torch.device) -> tuple[Case, ...]:
    """The cases of ``--quick`` or of the device, or those ``--models`` names; resized."""
    cases = QUICK_CASES if args.quick else CUDA_CASES if device.type == "cuda" else CPU_CASES
    if args.models:
        wanted = args.models.split(",")
        pool = [*cases, *CPU_CASES, *CUDA_CASES]
        cases = tuple(next(c for c in pool if c.arch == name) for name in wanted)
    return harness.resize(cases, args)


# ---------------------------------------------------------------------------------------------
# model options: precision, channels-last, torch.compile


def bench_options(
    case: Case, device: torch.device, rounds: int, try_compile: bool
) -> dict[str, dict[str, float]]:
    """Forward (certify batch) and forward+backward (optimize batch) time per sample for each
    precision x memory format (x torch.compile), relative to fp32 NCHW eager."""
    info = harness.case_info(case)
    shape = tuple(info.input_shape)
    torch.manual_seed(harness.SEED)
    base = harness.frozen(build_model(case.arch, info).to(device))
    precisions = [Precision.fp32, Precision.bf16]
    if device.type == "cuda":
        precisions.append(Precision.fp16)
    variants: dict[str, nn.Module] = {}
    for precision in precisions:
        for channels_last in (False, True):
            name = f"{precision.value}{' channels-last' if channels_last else ''}"
            variants[name] = prepare_model(copy.deepcopy(base), precision, channels_last)
    if try_compile:
        variants["fp32 compile"] = torch.compile(copy.deepcopy(base), dynamic=False)
        channels_last_copy = prepare_model(copy.deepcopy(base), Precision.fp32, True)
        variants["fp32 channels-last compile"] = torch.compile(channels_last_copy, dynamic=False)
    forward = {
        name: harness.forward_bound(m, shape, case.batch, case.batch * 2, device)
        for name, m in variants.items()
    }
    batch = case.opt_inputs * case.opt_samples
    backward = {
        name: harness.backward_bound(m, shape, batch, 2, device) for name, m in variants.items()
    }
    forward_times = harness.interleaved(forward, rounds, device)
    backward_times = harness.interleaved(backward, rounds, device)
    results = {}
    for name in variants:
        results[name] = {
            "forward_us_per_sample": forward_times[name].best / (case.batch * 2) * 1e6,
            "forward_speedup": forward_times["fp32"].best / forward_times[name].best,
            "fwd_bwd_us_per_sample": backward_times[name].best / (batch * 2) * 1e6,
            "fwd_bwd_speedup": backward_times["fp32"].best / backward_times[name].best,
        }
    return results


# ---------------------------------------------------------------------------------------------
# tables


def print_phase(phase: dict[str, Any]) -> None:
    mib = harness.mib
    print(f"### host allocator: {phase['allocator']}")
    print()
    print("certify, seconds per input; R = time / ((N0+N) x pure forward time per sample)")
    print()
    print(
        "| model | batch | N0+N | forward us/sample | reference s | ancer s | ancer_many s "
        "| R reference | R ancer | R ancer_many | speed-up ancer | speed-up ancer_many "
        "| peak MiB ref / ancer / many / bound |"
    )
    print("|---" * 13 + "|")
    for row in phase["cases"]:
        case, c = row["case"], row["certify"]
        print(
            f"| {row['name']} | {case['batch']} | {case['n0']}+{case['n']} "
            f"| {row['forward_us_per_sample']:.1f} "
            f"| {c['reference']['seconds_per_input']:.4g} | {c['ancer']['seconds_per_input']:.4g} "
            f"| {c['ancer_many']['seconds_per_input']:.4g} | {c['reference']['R']:.3f} "
            f"| {c['ancer']['R']:.3f} | {c['ancer_many']['R']:.3f} "
            f"| {c['ancer']['speedup_vs_reference']:.2f}x "
            f"| {c['ancer_many']['speedup_vs_reference']:.2f}x "
            f"| {mib(c['reference']['peak_mib'])} / {mib(c['ancer']['peak_mib'])} / "
            f"{mib(c['ancer_many']['peak_mib'])} / {mib(row['bound_peak_mib'])} |"
        )
    rows = [row for row in phase["cases"] if "optimize" in row]
    if not rows:
        return
    print()
    print(
        "ANCER optimization, seconds per step of B inputs x M samples; "
        "bound = forward+backward with frozen weights"
    )
    print()
    print(
        "| model | B x M | bound s/step | reference s/step | ancer s/step | ancer / bound "
        "| reference / bound | speed-up | ancer s per input (100 steps) "
        "| peak MiB ref / ancer / bound |"
    )
    print("|---" * 10 + "|")
    for row in rows:
        case, o = row["case"], row["optimize"]
        print(
            f"| {row['name']} | {case['opt_inputs']}x{case['opt_samples']} "
            f"| {o['bound']['seconds_per_step']:.4g} | {o['reference']['seconds_per_step']:.4g} "
            f"| {o['ancer']['seconds_per_step']:.4g} | {o['ancer']['ratio_to_bound']:.3f} "
            f"| {o['reference']['ratio_to_bound']:.3f} | {o['ancer']['speedup_vs_reference']:.2f}x "
            f"| {o['ancer']['seconds_per_input_100_steps']:.4g} "
            f"| {mib(o['reference']['peak_mib'])} / {mib(o['ancer']['peak_mib'])} / "
            f"{mib(o['bound']['peak_mib'])} |"
        )


def print_allocator_gain(phases: list[dict[str, Any]]) -> None:
    """The package with freed memory retained against the reference with glibc's defaults."""
    by_name = {phase["allocator"]: phase for phase in phases}
    if set(by_name) != {"glibc default", "retained"}:
        return
    print("### ancer (memory retained) against the reference (glibc default)")
    print()
    print(
        "| model | forward us/sample default -> retained | certify speed-up | optimize speed-up |"
    )
    print("|---" * 4 + "|")
    for before, after in zip(
        by_name["glibc default"]["cases"], by_name["retained"]["cases"], strict=True
    ):
        certify_gain = (
            before["certify"]["reference"]["seconds_per_input"]
            / after["certify"]["ancer"]["seconds_per_input"]
        )
        optimize_gain = "-"
        if "optimize" in before:
            optimize_gain = f"{before['optimize']['reference']['seconds_per_step'] / after['optimize']['ancer']['seconds_per_step']:.2f}x"
        print(
            f"| {before['name']} | {before['forward_us_per_sample']:.1f} -> "
            f"{after['forward_us_per_sample']:.1f} | {certify_gain:.2f}x | {optimize_gain} |"
        )
    print()


def print_options(options: dict[str, dict[str, dict[str, float]]]) -> None:
    print("### model options, per sample (speed-up over fp32 NCHW eager)")
    print()
    print("| model | option | forward us | speed-up | forward+backward us | speed-up |")
    print("|---" * 6 + "|")
    for arch, variants in options.items():
        for name, o in variants.items():
            print(
                f"| {arch} | {name} | {o['forward_us_per_sample']:.1f} "
                f"| {o['forward_speedup']:.2f}x | {o['fwd_bwd_us_per_sample']:.1f} "
                f"| {o['fwd_bwd_speedup']:.2f}x |"
            )
    print()


def print_report(report: dict[str, Any]) -> None:
    harness.print_header(report)
    for phase in report["phases"]:
        print_phase(phase)
        print()
    print_allocator_gain(report["phases"])
    if "options" in report:
        print_options(report["options"])


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    harness.add_common_arguments(parser)
    parser.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights")
    parser.add_argument(
        "--allocator",
        default="both",
        choices=["both", "default", "retained"],
        help="host allocator phases: glibc's defaults, then freed memory retained (CPU only)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default per case)")
    parser.add_argument(
        "--sections",
        default="bench",
        help="comma-separated: bench (the timings), options (precision, channels-last, "
        "torch.compile)",
    )
    parser.add_argument("--compile", action="store_true", help="options: also torch.compile")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sections = set(args.sections.split(","))
    moved = [f"{name}: {MOVED[name]}" for name in sorted(sections & set(MOVED))]
    unknown = sections - set(SECTIONS) - set(MOVED)
    if unknown:
        raise SystemExit(f"unknown --sections {', '.join(sorted(unknown))}")
    if moved:
        raise SystemExit(f"--sections moved: {'; '.join(moved)}")
    device = harness.start(args)
    precision = Precision(args.precision)
    cases = select_cases(args, device)
    allocators = {
        "both": ["glibc default", "retained"],
        "default": ["glibc default"],
        "retained": ["retained"],
    }[args.allocator]
    if device.type == "cuda":  # the host allocator does not matter there
        allocators = ["retained"]
    report = harness.new_report("speed.py", argv, device, precision, args.channels_last)
    report["phases"] = []
    for allocator in allocators if "bench" in sections else allocators[-1:]:
        if allocator == "retained":
            report["machine"]["retained"] = retain_freed_memory()
        if "bench" not in sections:
            break
        phase: dict[str, Any] = {"allocator": allocator, "cases": []}
        for case in cases:
            print(f"... {allocator}: {case.name}", file=sys.stderr, flush=True)
            phase["cases"].append(
                harness.bench_case(
                    case,
                    device,
                    precision,
                    args.channels_last,
                    args.rounds,
                    measure_memory=allocator != "retained" or device.type == "cuda",
                )
            )
        report["phases"].append(phase)
    if "options" in sections:
        print("... options", file=sys.stderr, flush=True)
        report["options"] = {
            case.arch: bench_options(case, device, args.rounds or 3, args.compile)
            for case in cases
            if not case.note
        }
    harness.finish(report)
    print_report(report)
    harness.write_report(report, args.json, args.markdown, print_report)
    return report


if __name__ == "__main__":
    main()
