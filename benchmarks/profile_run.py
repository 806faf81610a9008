"""Profile: where the time of certify and ANCER optimization goes, package against reference.

Each contestant (the reference's and the package's certify and ANCER optimization) runs once
untimed, then once under ``torch.profiler``; its wall time is split into the model's forward,
the backward, noise generation, copies and elementwise ops, counting and host transfers, the
optimizer, and Python, and the minor page faults of the run are counted (fresh pages the kernel
had to map and zero). The models are those of ``speed.py`` (``--quick``: its tiny ones).

    python benchmarks/profile_run.py                          # after retain_freed_memory()
    python benchmarks/profile_run.py --allocator default      # with glibc's defaults
    python benchmarks/profile_run.py --quick                  # tiny sizes, seconds (run in CI)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (the sibling modules, importable however this script is run)
import reference  # noqa: E402
import speed  # noqa: E402
from harness import ALPHA, SEED, SIGMA, Case  # noqa: E402

from ancer_cli.core.choices import Norm, Precision, Sampling  # noqa: E402
from ancer_cli.core.law import NoiseLaw  # noqa: E402
from ancer_cli.core.noise import Stream, input_generator  # noqa: E402
from ancer_cli.core.optimize import AncerConfig, optimize_ancer  # noqa: E402
from ancer_cli.core.smoothing import certify  # noqa: E402
from ancer_cli.runtime import retain_freed_memory  # noqa: E402


class Labelled(nn.Module):
    """Marks every forward pass of ``model`` in the profiler's trace."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function("model forward"):
            return self.model(x)


_CATEGORIES = (
    ("noise", ("normal_", "uniform_", "randn", "rand", "random_")),
    ("counting + host", ("argmax", "bincount", "_local_scalar_dense", "item", "cpu", "stack")),
    ("optimizer", ("Optimizer", "adam", "_foreach", "maximum", "max")),
)


def _category(name: str) -> str:
    if name == "model forward":
        return "model forward"
    if "autograd::engine" in name or "Backward" in name:
        return "backward"
    op = name.split("::")[-1]
    for category, keys in _CATEGORIES:
        if any(op == key or op.startswith(key) or key in name for key in keys):
            return category
    return "copies + elementwise"


def profile(run: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Share of the wall time per category: top-level profiled ops, the rest is Python; and the
    minor page faults of the run (fresh pages the kernel had to map and zero)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    run()
    with torch.profiler.profile(activities=activities) as prof:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        began = time.perf_counter()
        run()
        harness.synchronize(device)
        wall = time.perf_counter() - began
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.cpu_parent is not None:
            continue
        category = _category(event.name)
        totals[category] = totals.get(category, 0.0) + event.cpu_time_total / 1e6
    totals["python + unprofiled"] = max(wall - sum(totals.values()), 0.0)
    shares = {k: v / wall for k, v in sorted(totals.items())}
    return {"wall_seconds": wall, "page_faults": float(faults), **shares}


def profile_case(
    case: Case, device: torch.device, precision: Precision, channels_last: bool
) -> dict[str, Any]:
    """The profile of each contestant on one case (certify at most 20 batches)."""
    model, soft_model, num_classes, shape = harness.make_models(
        case, device, precision, channels_last
    )
    model, soft_model = Labelled(model), Labelled(soft_model)
    x = torch.rand(shape, device=device)
    n = min(case.n, 20 * case.batch)
    smooth = reference.CohenSmooth(model, num_classes, SIGMA, "l2")
    law, sampling = NoiseLaw(Norm.l2, SIGMA), Sampling(case.n0, n, ALPHA, case.batch)
    x_opt = torch.rand((case.opt_inputs, *shape), device=device)
    theta_iso = torch.full((case.opt_inputs,), SIGMA, device=device)
    config = AncerConfig(iterations=2, samples=case.opt_samples)
    generators = [input_generator(SEED, i, device, Stream.ancer) for i in range(case.opt_inputs)]
    return {
        "certify N": n,
        "reference certify": profile(
            lambda: smooth.certify(x, case.n0, n, ALPHA, case.batch), device
        ),
        "ancer certify": profile(
            lambda: certify(model, x, law, sampling, input_generator(0, 0, device)),
            device,
        ),
        "reference optimize": profile(
            lambda: reference.optimize_ancer(
                soft_model,
                x_opt,
                "l2",
                config.lr,
                theta_iso.view(-1, 1, 1, 1).expand_as(x_opt).contiguous(),
                config.iterations,
                config.samples,
                config.kappa,
            ),
            device,
        ),
        "ancer optimize": profile(
            lambda: optimize_ancer(model, x_opt, theta_iso, "l2", config, generators), device
        ),
    }


def print_report(report: dict[str, Any]) -> None:
    harness.print_header(report)
    print("### profile, share of wall time")
    print()
    for arch, contestants in report["profile"].items():
        for name, shares in contestants.items():
            if not isinstance(shares, dict):
                continue
            parts = ", ".join(
                f"{key} {value:.1%}"
                for key, value in sorted(shares.items(), key=lambda kv: -kv[1])
                if key not in ("wall_seconds", "page_faults") and value >= 0.001
            )
            print(
                f"- {arch}, {name} ({shares['wall_seconds']:.3f} s, "
                f"{shares['page_faults']:.0f} page faults): {parts}"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    harness.add_common_arguments(parser)
    parser.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights")
    parser.add_argument(
        "--allocator",
        default="retained",
        choices=["default", "retained"],
        help="host allocator: glibc's defaults, or freed memory retained (CPU only)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = harness.start(args)
    precision = Precision(args.precision)
    cases = speed.select_cases(args, device)
    report = harness.new_report("profile_run.py", argv, device, precision, args.channels_last)
    if args.allocator == "retained" or device.type == "cuda":
        report["machine"]["retained"] = retain_freed_memory()
    report["profile"] = {}
    for case in cases:
        if case.note:
            continue
        print(f"... profile: {case.name}", file=sys.stderr, flush=True)
        report["profile"][case.name] = profile_case(case, device, precision, args.channels_last)
    harness.finish(report)
    print_report(report)
    harness.write_report(report, args.json, args.markdown, print_report)
    return report


if __name__ == "__main__":
    main()
