"""Benchmark: ``ancer`` against the reference algorithms and against the forward-pass bound.

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
Then checks that results did not regress: with the same injected noise the package and the
reference produce identical vote counts (and the same thetas up to float rounding), and with free
seeds their certified accuracies on a trained digits model agree within sampling error.

Timings are taken in interleaved rounds (every contestant once per round) and the fastest round
is reported, which is the least disturbed by other processes. They are never pass/fail gates.

    python benchmarks/bench.py                    # the full run on this machine's device
    python benchmarks/bench.py --quick            # tiny sizes, a few seconds (run in CI)
    python benchmarks/bench.py --device cuda --precision bf16 --channels-last
    python benchmarks/bench.py --profile          # where the time goes, per contestant
    python benchmarks/bench.py --options          # fp32/bf16, channels-last, torch.compile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402  (the sibling module, importable however this script is run)

from ancer_cli.core.noise import Stream, input_generator  # noqa: E402
from ancer_cli.core.precision import Precision, prepare_model  # noqa: E402
from ancer_cli.core.smoothing import (  # noqa: E402
    certify,
    certify_many,
    sample_counts,
    sample_counts_many,
)
from ancer_cli.data import dataset_info, load_dataset  # noqa: E402
from ancer_cli.models import build_model  # noqa: E402
from ancer_cli.optimize import AncerConfig, optimize_ancer  # noqa: E402

SIGMA = 0.25
ALPHA = 0.001
SEED = 0


@dataclass(frozen=True)
class Case:
    """One benchmarked model and the sizes it is measured at."""

    arch: str
    dataset: str
    batch: int  # noisy samples per forward pass (certify)
    n0: int
    n: int
    inputs: int  # inputs certified per round (and packed together by certify_many)
    opt_inputs: int  # inputs optimized together
    opt_samples: int  # noisy samples per input and iteration
    opt_iterations: int  # iterations timed per round
    rounds: int = 3


# Sizes per device. The papers' N = 100,000 is used where a round stays under a minute; the
# overhead ratio R and the speed-ups do not depend on N once N >> batch.
CPU_CASES = (
    Case("cnn", "digits", 1000, 100, 100_000, 2, 10, 100, 5),
    Case("resnet20", "cifar10", 400, 100, 2_000, 2, 2, 100, 3),
    Case("resnet18", "cifar10", 200, 100, 1_000, 1, 1, 100, 2, rounds=2),
)
CUDA_CASES = (
    Case("cnn", "digits", 1000, 100, 100_000, 4, 50, 100, 10),
    Case("resnet20", "cifar10", 1000, 100, 100_000, 2, 16, 100, 10),
    Case("resnet110", "cifar10", 1000, 100, 20_000, 2, 4, 100, 5),
    Case("resnet50", "imagenet", 250, 100, 2_000, 2, 1, 100, 3),
)
QUICK_CASES = (
    Case("cnn", "digits", 100, 20, 300, 3, 2, 16, 2, rounds=2),
    Case("resnet20", "cifar10", 16, 4, 24, 2, 1, 4, 1, rounds=1),
)


# ---------------------------------------------------------------------------------------------
# measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one call: CUDA allocator peak, or the process's peak RSS on the CPU.

    On the CPU the kernel's high-water mark is reset through ``/proc/self/clear_refs`` before the
    call and compared with the resident size at its start (MiB above the baseline).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = Path("/proc/self/clear_refs").exists()

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    @contextlib.contextmanager
    def measure(self, out: list[float]) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield
            torch.cuda.synchronize(self.device)
            out.append((torch.cuda.max_memory_allocated(self.device) - base) / 2**20)
            return
        if not self.cpu_ok:
            yield
            out.append(math.nan)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.cpu_ok = False
        base = self._status("VmRSS")
        yield
        out.append((self._status("VmHWM") - base) / 2**20 if self.cpu_ok else math.nan)


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak(self) -> float:
        values = [v for v in self.peak_mib if not math.isnan(v)]
        return max(values) if values else math.nan


def interleaved(
    contestants: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, Timing]:
    """Run every contestant once per round (after one untimed warm-up each), alternating the order."""
    memory = PeakMemory(device)
    timings = {name: Timing() for name in contestants}
    for run in contestants.values():
        run()
    names = list(contestants)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            with memory.measure(timings[name].peak_mib):
                began = time.perf_counter()
                contestants[name]()
                synchronize(device)
                timings[name].seconds.append(time.perf_counter() - began)
    return timings


# ---------------------------------------------------------------------------------------------
# contestants


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def make_models(
    case: Case, device: torch.device, precision: Precision, channels_last: bool
) -> tuple[nn.Module, nn.Module, int, tuple[int, ...]]:
    """The frozen model (package and bound) and the reference's soft classifier, whose weights
    (the same values) still require gradients; plus the number of classes and the input shape."""
    info = dataset_info(case.dataset) if case.dataset != "imagenet" else _imagenet_info()
    torch.manual_seed(SEED)
    base = build_model(case.arch, info).to(device).eval()
    soft = nn.Sequential(copy.deepcopy(base), nn.Softmax(dim=1)).eval()
    model = prepare_model(frozen(base), precision, channels_last)
    soft_model = prepare_model(soft, precision, channels_last)
    return model, soft_model, info.num_classes, tuple(info.input_shape)


def _imagenet_info() -> Any:
    from ancer_cli.data import DatasetInfo, normalization

    mean, std = normalization("imagenet")
    return DatasetInfo(
        name="imagenet",
        input_shape=(3, 224, 224),
        num_classes=1000,
        mean=mean,
        std=std,
        default_arch="resnet50",
    )


def forward_bound(model: nn.Module, shape: tuple[int, ...], batch: int, samples: int, device: torch.device) -> Callable[[], object]:
    """``samples`` samples through the model in forward passes of ``batch``, random inputs."""
    inputs = torch.rand((batch, *shape), device=device)
    passes = max(1, round(samples / batch))

    def run() -> None:
        with torch.inference_mode():
            for _ in range(passes):
                model(inputs).argmax(1)

    run.samples = passes * batch  # type: ignore[attr-defined]
    return run


def backward_bound(
    model: nn.Module, shape: tuple[int, ...], batch: int, iterations: int, device: torch.device
) -> Callable[[], object]:
    """Forward+backward (gradient w.r.t. the input only: frozen weights), ``iterations`` times."""
    inputs = torch.rand((batch, *shape), device=device)

    def run() -> None:
        for _ in range(iterations):
            leaf = inputs.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(torch.softmax(model(leaf), 1)[:, 0].sum(), leaf)

    return run


# ---------------------------------------------------------------------------------------------
# the benchmark of one model


def bench_case(
    case: Case,
    device: torch.device,
    precision: Precision,
    channels_last: bool,
    rounds: int | None,
) -> dict[str, Any]:
    model, soft_model, num_classes, shape = make_models(case, device, precision, channels_last)
    rounds = case.rounds if rounds is None else rounds
    generator = torch.Generator(device=device).manual_seed(SEED)
    xs = torch.rand((case.inputs, *shape), device=device, generator=generator)
    indices = list(range(case.inputs))
    smooth = reference.CohenSmooth(model, num_classes, SIGMA, "l2")

    def reference_certify() -> None:
        for x in xs:
            smooth.certify(x, case.n0, case.n, ALPHA, case.batch)

    def package_certify() -> None:
        for i, x in zip(indices, xs, strict=True):
            generator = input_generator(SEED, i, device, Stream.certify)
            certify(model, x, SIGMA, "l2", case.n0, case.n, ALPHA, case.batch, generator)

    def package_certify_many() -> None:
        generators = [input_generator(SEED, i, device, Stream.certify) for i in indices]
        certify_many(
            model, xs, [SIGMA] * len(xs), "l2", case.n0, case.n, ALPHA, case.batch, generators
        )

    samples = case.inputs * (case.n0 + case.n)
    bound = forward_bound(model, shape, case.batch, samples, device)
    certify_times = interleaved(
        {
            "bound": bound,
            "reference": reference_certify,
            "ancer": package_certify,
            "ancer_many": package_certify_many,
        },
        rounds,
        device,
    )
    per_sample = certify_times["bound"].best / bound.samples  # type: ignore[attr-defined]

    # ANCER optimization: B inputs x M samples per forward+backward
    x_opt = torch.rand((case.opt_inputs, *shape), device=device, generator=generator)
    theta_iso = torch.full((case.opt_inputs,), SIGMA, device=device)
    config = AncerConfig(iterations=case.opt_iterations, samples=case.opt_samples)

    def reference_optimize() -> None:
        start = theta_iso.view(-1, 1, 1, 1).expand_as(x_opt).contiguous()
        reference.optimize_ancer(
            soft_model,
            x_opt,
            "l2",
            config.lr,
            start,
            config.iterations,
            config.samples,
            config.kappa,
        )

    def package_optimize() -> None:
        generators = [
            input_generator(SEED, i, device, Stream.ancer) for i in range(case.opt_inputs)
        ]
        optimize_ancer(model, x_opt, theta_iso, "l2", config, generators)

    optimize_times = interleaved(
        {
            "bound": backward_bound(
                model, shape, case.opt_inputs * case.opt_samples, case.opt_iterations, device
            ),
            "reference": reference_optimize,
            "ancer": package_optimize,
        },
        rounds,
        device,
    )

    def per_input(timing: Timing) -> float:
        return timing.best / case.inputs

    certify_row = {
        name: {
            "seconds_per_input": per_input(timing),
            "seconds_all_rounds": timing.seconds,
            "R": per_input(timing) / ((case.n0 + case.n) * per_sample),
            "speedup_vs_reference": certify_times["reference"].best / timing.best,
            "peak_mib": timing.peak,
        }
        for name, timing in certify_times.items()
        if name != "bound"
    }
    steps = case.opt_iterations
    optimize_row = {
        name: {
            "seconds_per_step": timing.best / steps,
            "seconds_all_rounds": timing.seconds,
            "ratio_to_bound": timing.best / optimize_times["bound"].best,
            "speedup_vs_reference": optimize_times["reference"].best / timing.best,
            "seconds_per_input_100_steps": timing.best / steps * 100 / case.opt_inputs,
            "peak_mib": timing.peak,
        }
        for name, timing in optimize_times.items()
    }
    return {
        "case": asdict(case),
        "forward_us_per_sample": per_sample * 1e6,
        "bound_peak_mib": certify_times["bound"].peak,
        "certify": certify_row,
        "optimize": optimize_row,
    }


# ---------------------------------------------------------------------------------------------
# checks: no regression in results


def check_identical_votes(
    model: nn.Module, num_classes: int, shape: tuple[int, ...], device: torch.device, n0: int, n: int, batch: int
) -> dict[str, Any]:
    """The reference, ``certify``, ``sample_counts`` and ``sample_counts_many`` fed the same
    per-input streams give identical vote counts, for scalar and per-pixel theta, l2 and l1."""
    generator = torch.Generator(device=device).manual_seed(1)
    xs = torch.rand((3, *shape), device=device, generator=generator)
    theta_map = 0.1 + 0.4 * torch.rand(shape, device=device, generator=generator)
    results = {}
    for label, theta, norm in (
        ("l2 scalar", SIGMA, "l2"),
        ("l2 per-pixel", theta_map, "l2"),
        ("l1 per-pixel", theta_map, "l1"),
    ):
        same = True
        for i, x in enumerate(xs):
            smooth = reference.CohenSmooth(
                model, num_classes, theta, norm, input_generator(SEED, i, device)
            )
            prediction, gap, ref_sel, ref_est = smooth.certify(x, n0, n, ALPHA, batch)
            stream = input_generator(SEED, i, device)
            pkg_sel = sample_counts(model, x, theta, norm, n0, batch, stream, num_classes)
            pkg_est = sample_counts(model, x, theta, norm, n, batch, stream, num_classes)
            cert = certify(model, x, theta, norm, n0, n, ALPHA, batch, input_generator(SEED, i, device))
            same &= np.array_equal(ref_sel, pkg_sel.cpu().numpy())
            same &= np.array_equal(ref_est, pkg_est.cpu().numpy())
            same &= cert.prediction == prediction and math.isclose(cert.gap, gap, rel_tol=1e-12)
        many = sample_counts_many(
            model,
            xs,
            [theta] * len(xs),
            norm,
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


def check_same_thetas(model: nn.Module, soft_model: nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """Largest relative difference between the package's and the reference's ANCER thetas when
    both are fed the same noise (they differ only by the float rounding of the geometric mean)."""
    batch, samples = 2, 8
    generator = torch.Generator(device=device).manual_seed(2)
    x = torch.rand((batch, *shape), device=device, generator=generator)
    theta_iso = torch.full((batch,), SIGMA, device=device)
    config = AncerConfig(iterations=5, samples=samples)
    package = optimize_ancer(
        model,
        x,
        theta_iso,
        "l2",
        config,
        [input_generator(SEED, i, device, Stream.ancer) for i in range(batch)],
    )
    streams = [input_generator(SEED, i, device, Stream.ancer) for i in range(batch)]

    def same_noise(new_batch: torch.Tensor, theta_repeated: torch.Tensor) -> torch.Tensor:
        eps = torch.cat(
            [
                torch.randn((samples, *shape), device=device, generator=stream)
                for stream in streams
            ]
        )
        return eps * theta_repeated

    ref = reference.optimize_ancer(
        soft_model,
        x,
        "l2",
        config.lr,
        theta_iso.view(-1, 1, 1, 1).expand_as(x).contiguous(),
        config.iterations,
        samples,
        config.kappa,
        same_noise,
    )
    return float(((package - ref).abs() / ref.abs()).max())


def train_digits(device: torch.device, epochs: int) -> nn.Module:
    """A digits cnn trained under noise (sigma 0.25), a few seconds on a CPU."""
    data = load_dataset("digits", "train")
    torch.manual_seed(SEED)
    model = build_model("cnn", data.info).to(device)
    images = torch.stack([data.dataset[i][0] for i in range(len(data.dataset))]).to(device)
    labels = torch.tensor([data.dataset[i][1] for i in range(len(data.dataset))], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=device, generator=generator)
        for start in range(0, len(order), 64):
            chosen = order[start : start + 64]
            noise = torch.randn(images[chosen].shape, device=device, generator=generator)
            loss = nn.functional.cross_entropy(model(images[chosen] + SIGMA * noise), labels[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return frozen(model)


def check_free_seed_agreement(
    device: torch.device, inputs: int, n: int, epochs: int
) -> dict[str, Any]:
    """Certified accuracy of the package and the reference (each with its own free random
    stream) on the same trained digits model and test inputs, with a two-proportion z-score."""
    model = train_digits(device, epochs)
    test = load_dataset("digits", "test")
    radii = (0.0, 0.25, 0.5)
    hits = {"reference": np.zeros(len(radii)), "ancer": np.zeros(len(radii))}
    torch.manual_seed(12345)  # the reference's global stream
    smooth = reference.CohenSmooth(model, 10, SIGMA, "l2")
    xs = torch.stack([test.dataset[i][0] for i in range(inputs)]).to(device)
    labels = [int(test.dataset[i][1]) for i in range(inputs)]
    certificates = certify_many(
        model,
        xs,
        [SIGMA] * inputs,
        "l2",
        100,
        n,
        ALPHA,
        1000,
        [input_generator(SEED, i, device) for i in range(inputs)],
    )
    for i in range(inputs):
        prediction, gap, _, _ = smooth.certify(xs[i], 100, n, ALPHA, 1000)
        for k, radius in enumerate(radii):
            hits["reference"][k] += prediction == labels[i] and SIGMA * gap >= radius
            cert = certificates[i]
            hits["ancer"][k] += cert.prediction == labels[i] and cert.radius >= radius
    z = []
    for k in range(len(radii)):
        p1, p2 = hits["reference"][k] / inputs, hits["ancer"][k] / inputs
        pooled = (p1 + p2) / 2
        se = math.sqrt(max(2 * pooled * (1 - pooled) / inputs, 1e-12))
        z.append((p2 - p1) / se)
    return {
        "inputs": inputs,
        "N": n,
        "radii": list(radii),
        "reference": (hits["reference"] / inputs).tolist(),
        "ancer": (hits["ancer"] / inputs).tolist(),
        "z": z,
        "agree": bool(all(abs(value) < 3 for value in z)),
    }


# ---------------------------------------------------------------------------------------------
# model options: precision, channels-last, torch.compile


def bench_options(
    case: Case, device: torch.device, rounds: int, try_compile: bool
) -> dict[str, dict[str, float]]:
    """Forward (certify batch) and forward+backward (optimize batch) time per sample for each
    precision x memory format (x torch.compile), relative to fp32 NCHW eager."""
    info = dataset_info(case.dataset) if case.dataset != "imagenet" else _imagenet_info()
    shape = tuple(info.input_shape)
    torch.manual_seed(SEED)
    base = frozen(build_model(case.arch, info).to(device))
    precisions = [Precision.fp32, Precision.bf16]
    if device.type == "cuda":
        precisions.append(Precision.fp16)
    variants: dict[str, nn.Module] = {}
    for precision in precisions:
        for channels_last in (False, True):
            name = f"{precision.value}{' channels-last' if channels_last else ''}"
            variants[name] = prepare_model(copy.deepcopy(base), precision, channels_last)
    if try_compile:
        compiled = torch.compile(copy.deepcopy(base), dynamic=False)
        variants["fp32 compile"] = compiled
    forward = {name: forward_bound(m, shape, case.batch, case.batch * 2, device) for name, m in variants.items()}
    batch = case.opt_inputs * case.opt_samples
    backward = {name: backward_bound(m, shape, batch, 2, device) for name, m in variants.items()}
    forward_times = interleaved(forward, rounds, device)
    backward_times = interleaved(backward, rounds, device)
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
# profile: where the time goes


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
    """Share of the wall time per category: top-level profiled ops, the rest is Python."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    run()
    with torch.profiler.profile(activities=activities) as prof:
        began = time.perf_counter()
        run()
        synchronize(device)
        wall = time.perf_counter() - began
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.cpu_parent is not None:
            continue
        category = _category(event.name)
        totals[category] = totals.get(category, 0.0) + event.cpu_time_total / 1e6
    totals["python + unprofiled"] = max(wall - sum(totals.values()), 0.0)
    return {"wall_seconds": wall, **{k: v / wall for k, v in sorted(totals.items())}}


def profile_case(case: Case, device: torch.device, precision: Precision, channels_last: bool) -> dict[str, Any]:
    model, soft_model, num_classes, shape = make_models(case, device, precision, channels_last)
    model, soft_model = Labelled(model), Labelled(soft_model)
    x = torch.rand(shape, device=device)
    n = min(case.n, 20 * case.batch)
    smooth = reference.CohenSmooth(model, num_classes, SIGMA, "l2")
    x_opt = torch.rand((case.opt_inputs, *shape), device=device)
    theta_iso = torch.full((case.opt_inputs,), SIGMA, device=device)
    config = AncerConfig(iterations=2, samples=case.opt_samples)
    generators = [input_generator(SEED, i, device, Stream.ancer) for i in range(case.opt_inputs)]
    return {
        "certify N": n,
        "reference certify": profile(lambda: smooth.certify(x, case.n0, n, ALPHA, case.batch), device),
        "ancer certify": profile(
            lambda: certify(model, x, SIGMA, "l2", case.n0, n, ALPHA, case.batch, input_generator(0, 0, device)),
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


# ---------------------------------------------------------------------------------------------
# report


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"# ancer benchmark  {m['date']}  device {m['device']}"
        f"{' (' + m['gpu'] + ')' if 'gpu' in m else ''}  cpu {m['cpu']} x{m['threads']} threads  "
        f"torch {m['torch']}  precision {report['precision']}"
        f"{' channels-last' if report['channels_last'] else ''}  load {m['load_average']}"
    )
    print()
    print("## certify (seconds per input; R = time / ((N0+N) x pure forward per sample))")
    print(
        f"| model | batch | N0+N | forward us/sample | reference s | ancer s | ancer_many s "
        f"| R ref | R ancer | R many | speed-up ancer | speed-up many | peak MiB ref/ancer/many/bound |"
    )
    print("|---" * 14 + "|")
    for row in report["cases"]:
        case, c = row["case"], row["certify"]
        print(
            f"| {case['arch']} | {case['batch']} | {case['n0']}+{case['n']} "
            f"| {row['forward_us_per_sample']:.1f} "
            f"| {c['reference']['seconds_per_input']:.4g} | {c['ancer']['seconds_per_input']:.4g} "
            f"| {c['ancer_many']['seconds_per_input']:.4g} | {c['reference']['R']:.3f} "
            f"| {c['ancer']['R']:.3f} | {c['ancer_many']['R']:.3f} "
            f"| {c['ancer']['speedup_vs_reference']:.2f}x | {c['ancer_many']['speedup_vs_reference']:.2f}x "
            f"| {c['reference']['peak_mib']:.0f}/{c['ancer']['peak_mib']:.0f}/"
            f"{c['ancer_many']['peak_mib']:.0f}/{row['bound_peak_mib']:.0f} |"
        )
    print()
    print("## ANCER optimization (seconds per step of B inputs x M samples; bound = frozen fwd+bwd)")
    print(
        "| model | B x M | bound s/step | reference s/step | ancer s/step | ancer / bound "
        "| reference / bound | speed-up | ancer s/input (100 steps) | peak MiB ref/ancer/bound |"
    )
    print("|---" * 10 + "|")
    for row in report["cases"]:
        case, o = row["case"], row["optimize"]
        print(
            f"| {case['arch']} | {case['opt_inputs']}x{case['opt_samples']} "
            f"| {o['bound']['seconds_per_step']:.4g} | {o['reference']['seconds_per_step']:.4g} "
            f"| {o['ancer']['seconds_per_step']:.4g} | {o['ancer']['ratio_to_bound']:.3f} "
            f"| {o['reference']['ratio_to_bound']:.3f} | {o['ancer']['speedup_vs_reference']:.2f}x "
            f"| {o['ancer']['seconds_per_input_100_steps']:.4g} "
            f"| {o['reference']['peak_mib']:.0f}/{o['ancer']['peak_mib']:.0f}/{o['bound']['peak_mib']:.0f} |"
        )
    if "checks" in report:
        checks = report["checks"]
        print()
        print("## no regression in results")
        for arch, votes in checks["identical_votes"].items():
            print(f"- same injected noise, {arch}: identical votes " + ", ".join(
                f"{label} {'yes' if ok else 'NO'}" for label, ok in votes.items()
            ))
        print(
            "- same injected noise, ANCER thetas: max relative difference "
            f"{checks['theta_max_relative_difference']:.2e} (float rounding of the geometric mean)"
        )
        free = checks["free_seeds"]
        print(
            f"- free seeds, trained digits cnn, {free['inputs']} inputs, N={free['N']}: certified "
            "accuracy at radius " + ", ".join(
                f"{r}: reference {a:.3f} / ancer {b:.3f} (z {z:+.2f})"
                for r, a, b, z in zip(free["radii"], free["reference"], free["ancer"], free["z"], strict=True)
            ) + f" -> {'agree' if free['agree'] else 'DISAGREE'} within sampling error"
        )
    if "options" in report:
        print()
        print("## model options (per sample; speed-up over fp32 NCHW eager)")
        print("| model | option | forward us | speed-up | fwd+bwd us | speed-up |")
        print("|---" * 6 + "|")
        for arch, options in report["options"].items():
            for name, o in options.items():
                print(
                    f"| {arch} | {name} | {o['forward_us_per_sample']:.1f} | {o['forward_speedup']:.2f}x "
                    f"| {o['fwd_bwd_us_per_sample']:.1f} | {o['fwd_bwd_speedup']:.2f}x |"
                )
    if "profile" in report:
        print()
        print("## profile (share of wall time)")
        for arch, contestants in report["profile"].items():
            for name, shares in contestants.items():
                if not isinstance(shares, dict):
                    continue
                parts = ", ".join(
                    f"{k} {v:.1%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if k != "wall_seconds" and v >= 0.001
                )
                print(f"- {arch} {name} ({shares['wall_seconds']:.3f} s): {parts}")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI: seconds)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    parser.add_argument("--models", default=None, help="comma-separated archs (default: all for the device)")
    parser.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    parser.add_argument("--channels-last", action="store_true", help="channels-last model weights")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default per model)")
    parser.add_argument("--n", type=int, default=None, help="override N (estimation samples)")
    parser.add_argument("--batch", type=int, default=None, help="override the certify batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-checks", action="store_true", help="skip the result checks")
    parser.add_argument("--options", action="store_true", help="also time precision/memory-format options")
    parser.add_argument("--compile", action="store_true", help="with --options: also torch.compile")
    parser.add_argument("--profile", action="store_true", help="profile each contestant")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    precision = Precision(args.precision)
    if args.quick:
        cases = QUICK_CASES
    else:
        cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    if args.models:
        wanted = args.models.split(",")
        pool = {c.arch: c for c in (*CPU_CASES, *CUDA_CASES)} | {c.arch: c for c in cases}
        cases = tuple(pool[name] for name in wanted)
    if args.n is not None or args.batch is not None:
        cases = tuple(
            Case(**{**asdict(c), "n": args.n or c.n, "batch": args.batch or c.batch}) for c in cases
        )
    report: dict[str, Any] = {
        "command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(device),
        "precision": precision.value,
        "channels_last": args.channels_last,
        "cases": [],
    }
    if not args.profile_only:
        for case in cases:
            print(f"... {case.arch}", file=sys.stderr, flush=True)
            report["cases"].append(bench_case(case, device, precision, args.channels_last, args.rounds))
        if not args.no_checks:
            identical = {}
            for case in cases:
                model, soft_model, num_classes, shape = make_models(case, device, precision, args.channels_last)
                identical[case.arch] = check_identical_votes(
                    model, num_classes, shape, device, 10, 50, 16
                ) if args.quick else check_identical_votes(
                    model, num_classes, shape, device, 100, 1000, 300
                )
            trained = train_digits(device, 2)
            trained = prepare_model(trained, precision, args.channels_last)
            identical["digits cnn, trained"] = check_identical_votes(
                trained, 10, (1, 8, 8), device, 100, 1000, 300
            )
            model, soft_model, _, shape = make_models(cases[0], device, precision, args.channels_last)
            report["checks"] = {
                "identical_votes": identical,
                "theta_max_relative_difference": check_same_thetas(model, soft_model, shape, device),
                "free_seeds": check_free_seed_agreement(
                    device, 20 if args.quick else 200, 200 if args.quick else 2000, 2 if args.quick else 10
                ),
            }
        if args.options:
            report["options"] = {
                case.arch: bench_options(case, device, args.rounds or 3, args.compile) for case in cases
            }
    if args.profile or args.profile_only:
        report["profile"] = {
            case.arch: profile_case(case, device, precision, args.channels_last) for case in cases
        }
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
