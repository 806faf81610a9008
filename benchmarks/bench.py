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
    python benchmarks/bench.py --sections profile                  # where the time goes
    python benchmarks/bench.py --sections options --compile        # bf16, channels-last, compile
    python benchmarks/bench.py --sections gpu --device cuda        # the GPU check (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402  (the sibling module, importable however this script is run)

from ancer_cli.core.noise import Stream, input_generator  # noqa: E402
from ancer_cli.core.optimize import AncerConfig, optimize_ancer  # noqa: E402
from ancer_cli.core.precision import Precision, prepare_model, retain_freed_memory  # noqa: E402
from ancer_cli.core.smoothing import (  # noqa: E402
    certify,
    certify_many,
    sample_counts,
    sample_counts_many,
)
from ancer_cli.data import dataset_info, load_dataset  # noqa: E402
from ancer_cli.models import build_model  # noqa: E402

SIGMA = 0.25
ALPHA = 0.001
SEED = 0


@dataclass(frozen=True)
class Case:
    """One benchmarked model and the sizes it is measured at (``opt_inputs == 0``: certify only)."""

    arch: str
    dataset: str
    batch: int  # noisy samples per forward pass (certify)
    n0: int
    n: int
    inputs: int  # inputs certified per round (and packed together by certify_many)
    opt_inputs: int = 0  # inputs optimized together
    opt_samples: int = 100  # noisy samples per input and iteration
    opt_iterations: int = 0  # iterations timed per round
    rounds: int = 3
    note: str = ""
    image_size: int | None = None  # height = width of the inputs, if not the dataset's

    @property
    def name(self) -> str:
        return f"{self.arch} ({self.note})" if self.note else self.arch


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

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.enabled = enabled
        self.cpu_ok = Path("/proc/self/clear_refs").exists()

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    @contextlib.contextmanager
    def measure(self, out: list[float]) -> Iterator[None]:
        if not self.enabled:
            yield
            out.append(math.nan)
            return
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
    contestants: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    measure_memory: bool = True,
) -> dict[str, Timing]:
    """Run every contestant once per round (after one untimed warm-up each), alternating the
    order; peak memory too unless ``measure_memory`` is false (a retaining host allocator keeps
    freed memory resident, so the CPU high-water mark would only show growth)."""
    memory = PeakMemory(device, measure_memory)
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
    if case.image_size is not None:
        info = replace(info, input_shape=(info.input_shape[0], case.image_size, case.image_size))
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


def forward_bound(
    model: nn.Module, shape: tuple[int, ...], batch: int, samples: int, device: torch.device
) -> Callable[[], object]:
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
            torch.autograd.grad(torch.softmax(model(leaf), 1)[:, 0].sum(), leaf)

    return run


# ---------------------------------------------------------------------------------------------
# the benchmark of one model


def bench_case(
    case: Case,
    device: torch.device,
    precision: Precision,
    channels_last: bool,
    rounds: int | None,
    measure_memory: bool,
    many: bool = True,
    models: tuple[nn.Module, nn.Module, int, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Certify (and, with ``opt_inputs``, ANCER optimization) timings of one case; ``many``:
    also ``certify_many`` (pointless for one input); ``models``: what :func:`make_models` gives,
    if already built."""
    if models is None:
        models = make_models(case, device, precision, channels_last)
    model, soft_model, num_classes, shape = models
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
    certify_contestants: dict[str, Callable[[], object]] = {
        "bound": bound,
        "reference": reference_certify,
        "ancer": package_certify,
    }
    if many:
        certify_contestants["ancer_many"] = package_certify_many
    certify_times = interleaved(certify_contestants, rounds, device, measure_memory)
    per_sample = certify_times["bound"].best / bound.samples  # type: ignore[attr-defined]

    def per_input(timing: Timing) -> float:
        return timing.best / case.inputs

    result: dict[str, Any] = {
        "name": case.name,
        "case": asdict(case),
        "forward_us_per_sample": per_sample * 1e6,
        "bound_peak_mib": certify_times["bound"].peak,
        "certify": {
            name: {
                "seconds_per_input": per_input(timing),
                "seconds_all_rounds": timing.seconds,
                "R": per_input(timing) / ((case.n0 + case.n) * per_sample),
                "speedup_vs_reference": certify_times["reference"].best / timing.best,
                "peak_mib": timing.peak,
            }
            for name, timing in certify_times.items()
            if name != "bound"
        },
    }
    if case.opt_inputs == 0:
        return result

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
        measure_memory,
    )
    steps = case.opt_iterations
    result["optimize"] = {
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
    return result


# ---------------------------------------------------------------------------------------------
# checks: no regression in results


def check_identical_votes(
    model: nn.Module,
    num_classes: int,
    shape: tuple[int, ...],
    device: torch.device,
    n0: int,
    n: int,
    batch: int,
    inputs: int = 3,
) -> dict[str, Any]:
    """The reference, ``certify``, ``sample_counts`` and ``sample_counts_many`` fed the same
    per-input streams give identical vote counts, for scalar and per-pixel theta, l2 and l1."""
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
        for i, x in enumerate(xs):
            smooth = reference.CohenSmooth(
                model, num_classes, theta, norm, input_generator(SEED, i, device)
            )
            prediction, gap, ref_sel, ref_est = smooth.certify(x, n0, n, ALPHA, batch)
            stream = input_generator(SEED, i, device)
            pkg_sel = sample_counts(model, x, theta, norm, n0, batch, stream, num_classes)
            pkg_est = sample_counts(model, x, theta, norm, n, batch, stream, num_classes)
            cert = certify(
                model, x, theta, norm, n0, n, ALPHA, batch, input_generator(SEED, i, device)
            )
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


def check_same_thetas(
    model: nn.Module, soft_model: nn.Module, shape: tuple[int, ...], device: torch.device
) -> float:
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
            [torch.randn((samples, *shape), device=device, generator=stream) for stream in streams]
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
            loss = nn.functional.cross_entropy(
                model(images[chosen] + SIGMA * noise), labels[chosen]
            )
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


def run_checks(
    cases: tuple[Case, ...],
    device: torch.device,
    precision: Precision,
    channels_last: bool,
    quick: bool,
) -> dict[str, Any]:
    """Identical votes with injected noise (each benchmarked model and a trained digits cnn),
    the same thetas, and agreement of certified accuracies with free seeds."""
    identical = {}
    for case in cases:
        model, _, num_classes, shape = make_models(case, device, precision, channels_last)
        sizes = (
            (4, 12, 8)
            if quick and case.arch != "cnn"
            else (10, 50, 16)
            if quick
            else (100, 1000, 300)
        )
        identical[case.arch] = check_identical_votes(model, num_classes, shape, device, *sizes)
    trained = prepare_model(train_digits(device, 2), precision, channels_last)
    identical["cnn trained on digits"] = check_identical_votes(
        trained, 10, (1, 8, 8), device, *((20, 200, 64) if quick else (100, 1000, 300))
    )
    model, soft_model, _, shape = make_models(cases[0], device, precision, channels_last)
    return {
        "identical_votes": identical,
        "theta_max_relative_difference": check_same_thetas(model, soft_model, shape, device),
        "free_seeds": check_free_seed_agreement(
            device, 20 if quick else 200, 200 if quick else 2000, 2 if quick else 10
        ),
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
        variants["fp32 compile"] = torch.compile(copy.deepcopy(base), dynamic=False)
        channels_last_copy = prepare_model(copy.deepcopy(base), Precision.fp32, True)
        variants["fp32 channels-last compile"] = torch.compile(channels_last_copy, dynamic=False)
    forward = {
        name: forward_bound(m, shape, case.batch, case.batch * 2, device)
        for name, m in variants.items()
    }
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
    """Share of the wall time per category: top-level profiled ops, the rest is Python; and the
    minor page faults of the run (fresh pages the kernel had to map and zero)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    run()
    with torch.profiler.profile(activities=activities) as prof:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        began = time.perf_counter()
        run()
        synchronize(device)
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
        "reference certify": profile(
            lambda: smooth.certify(x, case.n0, n, ALPHA, case.batch), device
        ),
        "ancer certify": profile(
            lambda: certify(
                model, x, SIGMA, "l2", case.n0, n, ALPHA, case.batch, input_generator(0, 0, device)
            ),
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
# the GPU check (benchmarks/gpu_check.sh): CIFAR and ImageNet nets in the CLI's speed options


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
    if args.n is not None or args.batch is not None:
        cases = tuple(replace(c, n=args.n or c.n, batch=args.batch or c.batch) for c in cases)
    return cases


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
            models = make_models(case, device, precision, channels_last)
            row = bench_case(
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
            f"| {versus_fp32} | {_mib(c['reference']['peak_mib'])} / "
            f"{_mib(c['ancer']['peak_mib'])} / {_mib(row['bound_peak_mib'])} |"
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
        "load_average": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        # "fp32" is PyTorch's default: convolutions may use TF32, matrix products do not
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        info["cuda_runtime"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mib(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def print_phase(phase: dict[str, Any]) -> None:
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
            f"| {_mib(c['reference']['peak_mib'])} / {_mib(c['ancer']['peak_mib'])} / "
            f"{_mib(c['ancer_many']['peak_mib'])} / {_mib(row['bound_peak_mib'])} |"
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
            f"| {_mib(o['reference']['peak_mib'])} / {_mib(o['ancer']['peak_mib'])} / "
            f"{_mib(o['bound']['peak_mib'])} |"
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


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    gpu = (
        f" ({m['gpu']}, cuDNN TF32 {'on' if m.get('cudnn_allow_tf32') else 'off'})"
        if "gpu" in m
        else ""
    )
    print(f"## ancer benchmark, {m['date']}")
    print()
    print(f"`{report['command']}`")
    print()
    print(
        f"device {m['device']}{gpu}, cpu {m['cpu']} with {m['threads']} torch threads, "
        f"torch {m['torch']}, precision {report['precision']}"
        f"{', channels-last' if report['channels_last'] else ''}; load average "
        f"{_load(m['load_average'])} at the start, {_load(m.get('load_average_end'))} at the end"
    )
    print()
    for phase in report["phases"]:
        print_phase(phase)
        print()
    print_allocator_gain(report["phases"])
    if "gpu" in report:
        print_gpu_section(report["gpu"])
    if "checks" in report:
        checks = report["checks"]
        print("### no regression in results")
        print()
        for name, votes in checks["identical_votes"].items():
            verdicts = ", ".join(f"{label} {'yes' if ok else 'NO'}" for label, ok in votes.items())
            print(f"- same injected noise, {name}: identical votes to the reference: {verdicts}")
        print(
            "- same injected noise, ANCER thetas: largest relative difference to the reference "
            f"{checks['theta_max_relative_difference']:.1e} (float rounding of the geometric mean)"
        )
        free = checks["free_seeds"]
        accuracies = ", ".join(
            f"r={r}: {a:.3f} vs {b:.3f} (z {z:+.2f})"
            for r, a, b, z in zip(
                free["radii"], free["reference"], free["ancer"], free["z"], strict=True
            )
        )
        print(
            f"- free seeds, cnn trained on digits, {free['inputs']} test inputs, N={free['N']}: "
            f"certified accuracy reference vs ancer {accuracies}: "
            f"{'agree' if free['agree'] else 'DISAGREE'} within sampling error"
        )
        print()
    if "options" in report:
        print("### model options, per sample (speed-up over fp32 NCHW eager)")
        print()
        print("| model | option | forward us | speed-up | forward+backward us | speed-up |")
        print("|---" * 6 + "|")
        for arch, options in report["options"].items():
            for name, o in options.items():
                print(
                    f"| {arch} | {name} | {o['forward_us_per_sample']:.1f} "
                    f"| {o['forward_speedup']:.2f}x | {o['fwd_bwd_us_per_sample']:.1f} "
                    f"| {o['fwd_bwd_speedup']:.2f}x |"
                )
        print()
    if "profile" in report:
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


def _load(values: Any) -> str:
    return "?" if not values else " ".join(f"{v:.2f}" for v in values)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI: seconds)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    parser.add_argument("--models", default=None, help="comma-separated archs (default: all)")
    parser.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights")
    parser.add_argument(
        "--allocator",
        default="both",
        choices=["both", "default", "retained"],
        help="host allocator phases: glibc's defaults, then freed memory retained (CPU only)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default per case)")
    parser.add_argument("--n", type=int, default=None, help="override N (estimation samples)")
    parser.add_argument("--batch", type=int, default=None, help="override the certify batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--sections",
        default="bench,checks",
        help="comma-separated: bench (the timings), checks (no regression in results), options "
        "(precision, channels-last, torch.compile), profile (where the time goes), gpu (the GPU "
        "check: resnet110 and resnet50 in fp32, bf16 and bf16 channels-last, and the targets)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="gpu: seconds after which the remaining models and options are skipped (listed)",
    )
    parser.add_argument("--compile", action="store_true", help="options: also torch.compile")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="write the printed report here too"
    )
    return parser.parse_args(argv)


def select_cases(args: argparse.Namespace, device: torch.device) -> tuple[Case, ...]:
    cases = QUICK_CASES if args.quick else CUDA_CASES if device.type == "cuda" else CPU_CASES
    if args.models:
        wanted = args.models.split(",")
        pool = [*cases, *CPU_CASES, *CUDA_CASES]
        cases = tuple(next(c for c in pool if c.arch == name) for name in wanted)
    if args.n is not None or args.batch is not None:
        cases = tuple(replace(c, n=args.n or c.n, batch=args.batch or c.batch) for c in cases)
    return cases


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    precision = Precision(args.precision)
    cases = select_cases(args, device)
    allocators = {
        "both": ["glibc default", "retained"],
        "default": ["glibc default"],
        "retained": ["retained"],
    }[args.allocator]
    if device.type == "cuda":  # the host allocator does not matter there
        allocators = ["retained"]
    arguments = argv if argv is not None else sys.argv[1:]
    report: dict[str, Any] = {
        "command": " ".join(["python benchmarks/bench.py", *arguments]),
        "machine": machine(device),
        "precision": precision.value,
        "channels_last": args.channels_last,
        "phases": [],
    }
    sections = set(args.sections.split(","))
    unknown = sections - {"bench", "checks", "options", "profile", "gpu"}
    if unknown:
        raise SystemExit(f"unknown --sections {', '.join(sorted(unknown))}")
    for allocator in allocators if "bench" in sections else allocators[-1:]:
        if allocator == "retained":
            report["machine"]["retained"] = retain_freed_memory()
        if "bench" not in sections:
            break
        phase: dict[str, Any] = {"allocator": allocator, "cases": []}
        for case in cases:
            print(f"... {allocator}: {case.name}", file=sys.stderr, flush=True)
            phase["cases"].append(
                bench_case(
                    case,
                    device,
                    precision,
                    args.channels_last,
                    args.rounds,
                    measure_memory=allocator != "retained" or device.type == "cuda",
                )
            )
        report["phases"].append(phase)
    if "checks" in sections:
        print("... checks", file=sys.stderr, flush=True)
        report["checks"] = run_checks(cases, device, precision, args.channels_last, args.quick)
    if "options" in sections:
        print("... options", file=sys.stderr, flush=True)
        report["options"] = {
            case.arch: bench_options(case, device, args.rounds or 3, args.compile)
            for case in cases
            if not case.note
        }
    if "profile" in sections:
        print("... profile", file=sys.stderr, flush=True)
        report["profile"] = {
            case.name: profile_case(case, device, precision, args.channels_last)
            for case in cases
            if not case.note
        }
    if "gpu" in sections:

        def save_so_far(section: dict[str, Any]) -> None:
            report["gpu"] = section
            write_report(report, args.json, args.markdown)

        gpu_section(
            select_gpu_cases(args), device, args.rounds, args.quick, args.time_budget, save_so_far
        )
    report["machine"]["load_average_end"] = os.getloadavg()
    report["complete"] = True
    print_report(report)
    write_report(report, args.json, args.markdown)
    return report


def render_report(report: dict[str, Any]) -> str:
    """What :func:`print_report` prints, as a string."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_report(report)
    return text.getvalue()


def write_report(report: dict[str, Any], json_path: Path | None, markdown: Path | None) -> None:
    """The report as JSON and as markdown, each file replaced whole (an interrupted run leaves
    the last complete version)."""
    for path, text in (
        (json_path, lambda: json.dumps(report, indent=2, default=str)),
        (markdown, lambda: render_report(report)),
    ):
        if path is None:
            continue
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text())
        os.replace(partial, path)


if __name__ == "__main__":
    main()
