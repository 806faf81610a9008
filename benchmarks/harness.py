"""What the benchmarks share: timing harness, set-up of one measured case, report files.

* **timing** -- :func:`interleaved` runs every contestant once per round (after one untimed
  warm-up), alternating the order, and records seconds and peak memory (:class:`PeakMemory`);
  the fastest round, the least disturbed by other processes, is what the tables report;
* **set-up** -- a benchmarked model and its sizes (:class:`Case`), the models every contestant
  shares (:func:`make_models`), the forward and forward+backward bounds on random inputs, and
  :func:`bench_case`, the side-by-side timing of the reference, the package and the bound for
  one case (certify, and ANCER optimization where the case has ``opt_inputs``);
* **report** -- the machine record, the common command-line options, the header every report
  starts with, and :func:`write_report` (JSON and markdown, each replaced whole).

Timings are never pass/fail gates.
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
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402  (the sibling module, importable however this script is run)

from ancer_cli.core.choices import Norm, Precision, Sampling  # noqa: E402
from ancer_cli.core.law import NoiseLaw  # noqa: E402
from ancer_cli.core.noise import Stream, input_generator  # noqa: E402
from ancer_cli.core.optimize import AncerConfig, optimize_ancer  # noqa: E402
from ancer_cli.core.precision import prepare_model  # noqa: E402
from ancer_cli.core.smoothing import certify, certify_many  # noqa: E402
from ancer_cli.data import dataset_info  # noqa: E402
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
    info = case_info(case)
    torch.manual_seed(SEED)
    base = build_model(case.arch, info).to(device).eval()
    soft = nn.Sequential(copy.deepcopy(base), nn.Softmax(dim=1)).eval()
    model = prepare_model(frozen(base), precision, channels_last)
    soft_model = prepare_model(soft, precision, channels_last)
    return model, soft_model, info.num_classes, tuple(info.input_shape)


def case_info(case: Case) -> Any:
    """The dataset description a case's model is built for (its ``image_size`` applied)."""
    info = dataset_info(case.dataset) if case.dataset != "imagenet" else _imagenet_info()
    if case.image_size is not None:
        info = replace(info, input_shape=(info.input_shape[0], case.image_size, case.image_size))
    return info


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
# the side-by-side measurement of one case


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
    law, sampling = NoiseLaw(Norm.l2, SIGMA), Sampling(case.n0, case.n, ALPHA, case.batch)

    def reference_certify() -> None:
        for x in xs:
            smooth.certify(x, case.n0, case.n, ALPHA, case.batch)

    def package_certify() -> None:
        for i, x in zip(indices, xs, strict=True):
            generator = input_generator(SEED, i, device, Stream.certify)
            certify(model, x, law, sampling, generator)

    def package_certify_many() -> None:
        generators = [input_generator(SEED, i, device, Stream.certify) for i in indices]
        certify_many(model, xs, [law] * len(xs), sampling, generators)

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
# command line and report


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark entry point takes."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI: seconds)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    parser.add_argument("--models", default=None, help="comma-separated archs (default: all)")
    parser.add_argument("--n", type=int, default=None, help="override N (estimation samples)")
    parser.add_argument("--batch", type=int, default=None, help="override the certify batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="write the printed report here too"
    )


def resize(cases: tuple[Case, ...], args: argparse.Namespace) -> tuple[Case, ...]:
    """``cases`` with ``--n`` and ``--batch`` applied."""
    if args.n is None and args.batch is None:
        return cases
    return tuple(replace(c, n=args.n or c.n, batch=args.batch or c.batch) for c in cases)


def start(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and resolve ``--device``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def new_report(
    script: str,
    argv: list[str] | None,
    device: torch.device,
    precision: Precision,
    channels_last: bool,
) -> dict[str, Any]:
    """The record a report starts from: the command that made it and the machine."""
    arguments = argv if argv is not None else sys.argv[1:]
    return {
        "command": " ".join([f"python benchmarks/{script}", *arguments]),
        "machine": machine(device),
        "precision": precision.value,
        "channels_last": channels_last,
    }


def finish(report: dict[str, Any]) -> None:
    report["machine"]["load_average_end"] = os.getloadavg()
    report["complete"] = True


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


def mib(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def _load(values: Any) -> str:
    return "?" if not values else " ".join(f"{v:.2f}" for v in values)


def print_header(report: dict[str, Any]) -> None:
    """The title, the command and the machine line every report starts with."""
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


Printer = Callable[[dict[str, Any]], None]


def render_report(report: dict[str, Any], printer: Printer) -> str:
    """What ``printer`` prints for ``report``, as a string."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        printer(report)
    return text.getvalue()


def write_report(
    report: dict[str, Any], json_path: Path | None, markdown: Path | None, printer: Printer
) -> None:
    """The report as JSON and as markdown (what ``printer`` prints), each file replaced whole
    (an interrupted run leaves the last complete version)."""
    for path, text in (
        (json_path, lambda: json.dumps(report, indent=2, default=str)),
        (markdown, lambda: render_report(report, printer)),
    ):
        if path is None:
            continue
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text())
        os.replace(partial, path)
