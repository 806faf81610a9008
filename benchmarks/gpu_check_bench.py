"""The GPU check's benchmark: CIFAR and ImageNet nets in the CLI's speed options, and the targets.

``gpu_check.sh`` runs it as its third step. Each model (``resnet110`` on CIFAR at the papers'
N = 100,000, ``resnet50`` on ImageNet at N = 10,000) in fp32, bf16 and bf16 + channels-last:
certify time of the faithful Cohen loop and of ``certify`` against the pure forward pass (R),
the ANCER step against its forward+backward bound and the reference, whether the package and
the reference give identical votes with the same noise, and then the targets. The JSON report
(its ``gpu`` section) is rewritten after every model/option pair, so an interrupted run keeps
its figures so far; ``--time-budget`` skips (and lists) the pairs that would start later.

    python benchmarks/gpu_check_bench.py --device cuda                 # the full check's figures
    python benchmarks/gpu_check_bench.py --device cpu --quick          # the CPU rehearsal
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (the sibling modules, importable however this script is run)
import reference  # noqa: E402
from harness import ALPHA, SEED, SIGMA, Case  # noqa: E402

from ancer_cli.core.choices import Norm, Precision, Sampling  # noqa: E402
from ancer_cli.core.law import NoiseLaw  # noqa: E402
from ancer_cli.core.noise import input_generator  # noqa: E402
from ancer_cli.core.smoothing import certify, sample_counts, sample_counts_many  # noqa: E402
from ancer_cli.runtime import retain_freed_memory  # noqa: E402

GPU_OPTIONS: tuple[tuple[Precision, bool], ...] = (
    (Precision.fp32, False),
    (Precision.bf16, False),
    (Precision.bf16, True),
)
# resnet110 at the papers' N = 100,000, so its certify time is the time of one CIFAR certificate;
# resnet50 at N = 10,000 (R does not depend on N once N >> batch: 40 full passes and one short
# selection pass). One input each: the CLI would not group inputs at these sizes.
GPU_CHECK_CASES = (
    Case("resnet110", "cifar10", 1000, 100, 100_000, 1, 4, 100, 5, rounds=2),
    Case("resnet50", "imagenet", 250, 100, 10_000, 1, 1, 100, 3, rounds=2),
)
# The CPU rehearsal: the same steps at tiny sizes (resnet50 on 32x32 inputs).
GPU_CHECK_QUICK_CASES = (
    Case("resnet110", "cifar10", 4, 2, 4, 1, 1, 4, 1, rounds=1, note="quick"),
    Case("resnet50", "imagenet", 4, 2, 4, 1, 1, 4, 1, rounds=1, note="quick, 32x32", image_size=32),
)
GPU_TARGET_R = 1.05
GPU_TARGET_SPEEDUP = 3.0
GPU_TARGET_CERTIFICATE_SECONDS = 1.0
GPU_TARGET_N = 100_000


def option_label(precision: Precision, channels_last: bool) -> str:
    return f"{precision.value}{' channels-last' if channels_last else ''}"


def select_gpu_cases(args: argparse.Namespace) -> tuple[Case, ...]:
    cases = GPU_CHECK_QUICK_CASES if args.quick else GPU_CHECK_CASES
    if args.models:
        wanted = args.models.split(",")
        cases = tuple(c for c in cases if c.arch in wanted)
    return harness.resize(cases, args)


def check_identical_votes(
    model: nn.Module,
    num_classes: int,
    shape: tuple[int, ...],
    device: torch.device,
    n0: int,
    n: int,
    batch: int,
    inputs: int = 3,
) -> dict[str, bool]:
    """The reference, ``certify``, ``sample_counts`` and ``sample_counts_many`` fed the same
    per-input streams give identical vote counts, for scalar and per-pixel theta, l2 and l1.

    Informational in the check (``tests/core/test_smoothing.py`` holds the exact test): on a GPU
    a packed pass of another batch size may pick another convolution algorithm, so a vote whose
    logits tie to rounding could flip.
    """
    generator = torch.Generator(device=device).manual_seed(1)
    xs = torch.rand((inputs, *shape), device=device, generator=generator)
    theta_map = 0.1 + 0.4 * torch.rand(shape, device=device, generator=generator)
    results = {}
    for label, theta, norm in (
        ("l2 scalar", SIGMA, "l2"),
        ("l2 per-pixel", theta_map, "l2"),
        ("l1 per-pixel", theta_map, "l1"),
    ):
        same = True
        law, sampling = NoiseLaw(Norm(norm), theta), Sampling(n0, n, ALPHA, batch)
        for i, x in enumerate(xs):
            smooth = reference.CohenSmooth(
                model, num_classes, theta, norm, input_generator(SEED, i, device)
            )
            prediction, gap, ref_sel, ref_est = smooth.certify(x, n0, n, ALPHA, batch)
            stream = input_generator(SEED, i, device)
            pkg_sel = sample_counts(model, x, law, n0, batch, stream, num_classes)
            pkg_est = sample_counts(model, x, law, n, batch, stream, num_classes)
            cert = certify(model, x, law, sampling, input_generator(SEED, i, device))
            same &= np.array_equal(ref_sel, pkg_sel.cpu().numpy())
            same &= np.array_equal(ref_est, pkg_est.cpu().numpy())
            same &= cert.prediction == prediction and math.isclose(cert.gap, gap, rel_tol=1e-12)
        many = sample_counts_many(
            model,
            xs,
            [law] * len(xs),
            (n0, n),
            batch,
            [input_generator(SEED, i, device) for i in range(len(xs))],
        ).cpu()
        for i, x in enumerate(xs):
            smooth = reference.CohenSmooth(
                model, num_classes, theta, norm, input_generator(SEED, i, device)
            )
            _, _, ref_sel, ref_est = smooth.certify(x, n0, n, ALPHA, batch)
            same &= np.array_equal(ref_sel, many[i, 0].numpy())
            same &= np.array_equal(ref_est, many[i, 1].numpy())
        results[label] = bool(same)
    return results


def gpu_section(
    cases: tuple[Case, ...],
    device: torch.device,
    rounds: int | None,
    quick: bool,
    budget_seconds: float | None,
    on_update: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Each case in each of :data:`GPU_OPTIONS`: certify (bound, reference, ancer) and the ANCER
    step (bound, reference, ancer), identical votes with the same noise, then the targets.

    ``on_update`` gets the section after every (case, option), so an interrupted run leaves its
    figures so far; once ``budget_seconds`` are spent, the remaining (case, option) pairs are
    skipped and listed.
    """
    began = time.perf_counter()
    section: dict[str, Any] = {
        "options": [option_label(p, c) for p, c in GPU_OPTIONS],
        "rows": [],
        "skipped": [],
        "budget_seconds": budget_seconds,
    }
    vote_sizes = (2, 4, 4, 1) if quick else (10, 50, 16, 3)  # N0, N, batch, inputs
    for case in cases:
        for precision, channels_last in GPU_OPTIONS:
            label = option_label(precision, channels_last)
            spent = time.perf_counter() - began
            if budget_seconds is not None and spent > budget_seconds:
                section["skipped"].append(
                    {"model": case.name, "option": label, "reason": f"time budget ({spent:.0f} s)"}
                )
                continue
            print(f"... gpu: {case.name}, {label}", file=sys.stderr, flush=True)
            models = harness.make_models(case, device, precision, channels_last)
            row = harness.bench_case(
                case,
                device,
                precision,
                channels_last,
                rounds,
                measure_memory=device.type == "cuda",  # CPU: the retained heap hides peaks
                many=case.inputs > 1,
                models=models,
            )
            model, _, num_classes, shape = models
            *sizes, inputs = vote_sizes
            row["option"] = label
            row["identical_votes"] = check_identical_votes(
                model, num_classes, shape, device, *sizes, inputs=inputs
            )
            row["seconds_measuring"] = time.perf_counter() - began - spent
            section["rows"].append(row)
            del model, models
            if device.type == "cuda":
                torch.cuda.empty_cache()
            on_update(section)
    section["targets"] = gpu_targets(section["rows"], device, quick)
    section["seconds"] = time.perf_counter() - began
    on_update(section)
    return section


def gpu_targets(rows: list[dict[str, Any]], device: torch.device, quick: bool) -> list[dict]:
    """The issue's targets: measured values, and whether they are met (``None``: not evaluated,
    on a CPU or at quick sizes, where they mean nothing)."""
    evaluated = device.type == "cuda" and not quick
    found = {(row["case"]["arch"], row["option"]): row for row in rows}

    def verdict(value: float | None, ok: bool) -> bool | None:
        return ok if evaluated and value is not None else None

    targets = []
    for arch in ("resnet110", "resnet50"):
        row = found.get((arch, "fp32"))
        value = row["certify"]["ancer"]["R"] if row else None
        targets.append(
            {
                "target": f"certify overhead R <= {GPU_TARGET_R}, fp32, {arch}",
                "value": value,
                "unit": "",
                "met": verdict(value, value is not None and value <= GPU_TARGET_R),
            }
        )
    slow, fast = found.get(("resnet50", "fp32")), found.get(("resnet50", "bf16 channels-last"))
    speedup = None
    if slow and fast:
        speedup = (
            slow["certify"]["reference"]["seconds_per_input"]
            / fast["certify"]["ancer"]["seconds_per_input"]
        )
    targets.append(
        {
            "target": f"resnet50 certify, bf16 channels-last, >= {GPU_TARGET_SPEEDUP:g}x faster "
            "than the faithful fp32 reference loop",
            "value": speedup,
            "unit": "x",
            "met": verdict(speedup, speedup is not None and speedup >= GPU_TARGET_SPEEDUP),
        }
    )
    cifar = [row for arch_option, row in found.items() if arch_option[0] == "resnet110"]
    best = min(cifar, key=lambda row: row["certify"]["ancer"]["seconds_per_input"], default=None)
    seconds = best["certify"]["ancer"]["seconds_per_input"] if best else None
    at_n = best["case"]["n"] if best else None
    targets.append(
        {
            "target": f"resnet110 certificate at N = {GPU_TARGET_N:,} in under "
            f"{GPU_TARGET_CERTIFICATE_SECONDS:g} s (fastest option)",
            "value": seconds,
            "unit": "s",
            "option": best["option"] if best else None,
            "N": at_n,
            "met": verdict(
                seconds if at_n == GPU_TARGET_N else None,
                seconds is not None and seconds < GPU_TARGET_CERTIFICATE_SECONDS,
            ),
        }
    )
    return targets


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}{unit}" if unit != "s" else f"{value:.4g} s"


def print_gpu_section(section: dict[str, Any]) -> None:
    mib = harness.mib
    print("### the GPU check: certify, seconds per input")
    print()
    print(
        "R = time / ((N0+N) x pure forward time per sample); speed-ups over the reference in the "
        "same option and over the fp32 reference"
    )
    print()
    print(
        "| model | option | batch | N0+N | forward us/sample | reference s | ancer s | R reference "
        "| R ancer | speed-up | speed-up vs fp32 reference | peak MiB ref / ancer / bound |"
    )
    print("|---" * 12 + "|")
    fp32_reference = {
        row["name"]: row["certify"]["reference"]["seconds_per_input"]
        for row in section["rows"]
        if row["option"] == "fp32"
    }
    for row in section["rows"]:
        case, c = row["case"], row["certify"]
        base = fp32_reference.get(row["name"])
        versus_fp32 = f"{base / c['ancer']['seconds_per_input']:.2f}x" if base else "-"
        print(
            f"| {row['name']} | {row['option']} | {case['batch']} | {case['n0']}+{case['n']} "
            f"| {row['forward_us_per_sample']:.2f} | {c['reference']['seconds_per_input']:.4g} "
            f"| {c['ancer']['seconds_per_input']:.4g} | {c['reference']['R']:.3f} "
            f"| {c['ancer']['R']:.3f} | {c['ancer']['speedup_vs_reference']:.2f}x "
            f"| {versus_fp32} | {mib(c['reference']['peak_mib'])} / "
            f"{mib(c['ancer']['peak_mib'])} / {mib(row['bound_peak_mib'])} |"
        )
    print()
    print(
        "### the GPU check: ANCER optimization, seconds per step of B inputs x M samples; "
        "bound = forward+backward with frozen weights"
    )
    print()
    print(
        "| model | option | B x M | bound s/step | reference s/step | ancer s/step | ancer / bound "
        "| speed-up |"
    )
    print("|---" * 8 + "|")
    for row in section["rows"]:
        if "optimize" not in row:
            continue
        case, o = row["case"], row["optimize"]
        print(
            f"| {row['name']} | {row['option']} | {case['opt_inputs']}x{case['opt_samples']} "
            f"| {o['bound']['seconds_per_step']:.4g} | {o['reference']['seconds_per_step']:.4g} "
            f"| {o['ancer']['seconds_per_step']:.4g} | {o['ancer']['ratio_to_bound']:.3f} "
            f"| {o['ancer']['speedup_vs_reference']:.2f}x |"
        )
    print()
    print("### the GPU check: identical votes to the reference with the same noise")
    print()
    for row in section["rows"]:
        votes = row["identical_votes"]
        verdicts = ", ".join(f"{label} {'yes' if ok else 'NO'}" for label, ok in votes.items())
        print(f"- {row['name']}, {row['option']}: {verdicts}")
    for skipped in section["skipped"]:
        print(f"- not measured: {skipped['model']}, {skipped['option']} ({skipped['reason']})")
    print()
    if "targets" not in section:
        return
    print("### the GPU check: targets")
    print()
    print("| target | measured | met |")
    print("|---|---|---|")
    for target in section["targets"]:
        met = {True: "yes", False: "NO", None: "not evaluated"}[target["met"]]
        extra = f" ({target['option']}, N = {target['N']:,})" if target.get("option") else ""
        print(f"| {target['target']} | {_figure(target['value'], target['unit'])}{extra} | {met} |")
    print()


def print_report(report: dict[str, Any]) -> None:
    harness.print_header(report)
    if "gpu" in report:
        print_gpu_section(report["gpu"])


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    harness.add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default per case)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds after which the remaining models and options are skipped (listed)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = harness.start(args)
    # the options are the section's own (GPU_OPTIONS); the header names the CLI's default
    report = harness.new_report("gpu_check_bench.py", argv, device, Precision.fp32, False)
    report["machine"]["retained"] = retain_freed_memory()  # as the CLI runs

    def save_so_far(section: dict[str, Any]) -> None:
        report["gpu"] = section
        harness.write_report(report, args.json, args.markdown, print_report)

    gpu_section(
        select_gpu_cases(args), device, args.rounds, args.quick, args.time_budget, save_so_far
    )
    harness.finish(report)
    print_report(report)
    harness.write_report(report, args.json, args.markdown, print_report)
    return report


if __name__ == "__main__":
    main()
