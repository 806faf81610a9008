"""Benchmark: sequential (anytime-valid) certification against fixed-N Clopper-Pearson.

For each setting it certifies the same inputs with Cohen et al.'s fixed ``N`` and sequentially:

* radius mode at each R of ``--radii`` (one run per R): mean and median samples per input and
  certified accuracy at R, against fixed N's certified accuracy at R (with its sampling error:
  the paired difference's standard error over inputs);
* adaptive mode: mean and median samples, average certified radius against fixed N's.

Settings: an analytic linear two-class model whose pA is known in closed form (so false
certificates are counted against the truth), and, given ``--runs DIR`` (what
``benchmarks/optimize_quality.py --export DIR`` writes: ``DIR/{l2,l1}/model.pt``, the default
objective's thetas and their fixed-N certificates ``certify/{fixed,isotropic,ancer}.csv``), the
digits models with fixed sigma, isotropic and ANCER thetas, l2 and l1, the fixed-N certificates
reused (the memory pass on for per-input thetas, as in ``ancer certify``).

    python benchmarks/sequential.py --quick                       # seconds (CI runs it)
    python benchmarks/optimize_quality.py --N 100000 --export runs/export
    python benchmarks/sequential.py --runs runs/export --json sequential.json

Samples are counted, not timed, so the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ancer_cli.certify import CertifyRequest, plan_certify_inputs
from ancer_cli.core.choices import Norm, Sampling, theta_from_sigma
from ancer_cli.data import DatasetInfo, LoadedData, load_dataset
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.inputs import in_memory_inputs
from ancer_cli.models import load_model
from ancer_cli.results import read_results
from ancer_cli.run.spec import InputsSpec
from ancer_cli.runtime import retain_freed_memory
from ancer_cli.settings import CertifyConfig, Sequential


@dataclass(frozen=True)
class Sizes:
    inputs: int
    cap: int
    radii: tuple[float, ...]
    batch: int


FULL = Sizes(inputs=200, cap=100_000, radii=(0.25, 0.5, 0.75), batch=1000)
QUICK = Sizes(inputs=12, cap=2_000, radii=(0.25,), batch=500)


class Linear2(nn.Module):
    """Class 1 iff ``w.x + b > 0``: under ``N(0, sigma^2 I)`` noise ``pA = Phi(|m| / (sigma
    ||w||))`` with margin ``m = w.x + b``, and the exact certified l2 radius is ``|m| / ||w||``."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)


def analytic_problem(count: int, sigma: float) -> tuple[Linear2, LoadedData, np.ndarray]:
    """Inputs whose exact radius ``|m| / ||w||`` spreads over [0, 4 sigma] (pA from 1/2 to
    ``Phi(4)``), labelled by the true class; returns the model, the data and the exact radii."""
    g = torch.Generator().manual_seed(0)
    shape = (1, 8, 8)
    w = torch.randn(shape, generator=g) / 8
    direction = w.flatten() / w.norm()
    radii = torch.linspace(0.0, 4.0 * sigma, count, dtype=torch.float64)
    signs = torch.where(torch.arange(count) % 2 == 0, 1.0, -1.0).double()
    base = torch.rand((count, *shape), generator=g).double().flatten(1)
    # move each input so that its signed distance to the plane w.x + b = 0 (b = 0) is +-radius
    offsets = (signs * radii)[:, None] - (base @ direction.double())[:, None]
    xs = (base + offsets * direction.double()).float().reshape(count, *shape)
    labels = (signs > 0).long()
    info = DatasetInfo("analytic", shape, 2, (0.0,), (1.0,), "linear")
    data = LoadedData(TensorDataset(xs, labels), info, "test")
    exact = (xs.flatten(1).double() @ w.flatten().double()).abs().numpy() / float(w.norm())
    return Linear2(w, 0.0), data, exact


def certify_once(
    model: nn.Module,
    data: LoadedData,
    thetas: Any,
    indices: list[int],
    norm: Norm,
    sizes: Sizes,
    out: Path,
    sequential: Sequential | None,
    memory: bool,
) -> dict[str, Any]:
    """One certify run through the library (float noise, seed 0, on the CPU); returns the frame
    and the wall time."""
    config = CertifyConfig(Sampling(n_estimation=sizes.cap, batch_size=sizes.batch), sequential)
    session = Session(SINGLE, torch.device("cpu"))
    inputs = in_memory_inputs(model, data, thetas, norm=norm, indices=indices, sound=False)
    began = time.perf_counter()
    request = CertifyRequest(  # each run replaces the previous one's files
        out=out, inputs=InputsSpec(seed=0), config=config, memory=memory, force=True
    )
    plan_certify_inputs(inputs, request, session).execute(session)
    return {"frame": read_results(out), "seconds": time.perf_counter() - began}


def accuracy_at(frame: Any, radius: float, column: str = "radius") -> np.ndarray:
    return ((frame["correct"] == 1) & (frame[column] >= radius)).to_numpy(dtype=float)


def compare(
    name: str,
    model: nn.Module,
    data: LoadedData,
    thetas: Any,
    norm: Norm,
    sizes: Sizes,
    folder: Path,
    memory: bool,
    fixed_frame: Any | None = None,
    exact: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fixed N, radius mode at each R, adaptive mode, on the same inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    indices = list(range(sizes.inputs))
    cap = 100 + sizes.cap
    if fixed_frame is None:
        fixed = certify_once(
            model, data, thetas, indices, norm, sizes, folder / "fixed.csv", None, memory
        )
        fixed_frame = fixed["frame"]
    fixed_frame = fixed_frame[fixed_frame["idx"].isin(indices)].reset_index(drop=True)
    result: dict[str, Any] = {"setting": name, "inputs": len(indices), "cap": cap, "radius": []}
    for radius in sizes.radii:
        run = certify_once(
            model, data, thetas, indices, norm, sizes, folder / f"radius{radius:g}.csv",
            Sequential(radii=(radius,)), memory,
        )  # fmt: skip
        frame = run["frame"]
        ours, theirs = accuracy_at(frame, radius), accuracy_at(fixed_frame, radius)
        difference = ours - theirs
        entry = {
            "R": radius,
            "mean_samples": float(frame["samples"].mean()),
            "median_samples": float(frame["samples"].median()),
            "fewer": cap / float(frame["samples"].mean()),
            "certified_accuracy": float(ours.mean()),
            "fixed_certified_accuracy": float(theirs.mean()),
            "difference_pp": 100 * float(difference.mean()),
            "difference_se_pp": 100 * float(difference.std(ddof=1) / math.sqrt(len(difference))),
        }
        if exact is not None:
            truth = (exact >= radius).astype(float)
            entry["exact_certified_accuracy"] = float(truth.mean())
            entry["false_certificates"] = int(((ours == 1) & (truth == 0)).sum())
            entry["fixed_false_certificates"] = int(((theirs == 1) & (truth == 0)).sum())
        result["radius"].append(entry)
    run = certify_once(
        model, data, thetas, indices, norm, sizes, folder / "adaptive.csv", Sequential(), memory
    )
    frame = run["frame"]
    acr = float((frame["radius"] * frame["correct"]).mean())
    fixed_acr = float((fixed_frame["radius"] * fixed_frame["correct"]).mean())
    result["adaptive"] = {
        "mean_samples": float(frame["samples"].mean()),
        "median_samples": float(frame["samples"].median()),
        "fewer": cap / float(frame["samples"].mean()),
        "acr": acr,
        "fixed_acr": fixed_acr,
        "acr_ratio": acr / fixed_acr if fixed_acr else math.nan,
        "stops": {str(k): int(v) for k, v in frame["stop"].value_counts().items()},
    }
    if exact is not None:
        result["adaptive"]["false_certificates"] = int(
            ((frame["correct"] == 1) & (frame["radius"] > exact)).sum()
        )
    return result


def digits_settings(runs: Path, sizes: Sizes) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments of :func:`compare`) for each norm and method found under ``runs``: the
    layout ``benchmarks/optimize_quality.py --export`` writes (``{norm}/model.pt``,
    ``{norm}/thetas.pt`` with the default objective's isotropic and ANCER thetas,
    ``{norm}/certify/{fixed,isotropic,ancer}.csv`` certified with fixed N)."""
    settings = []
    data = load_dataset("digits", "test")
    for norm in (Norm.l2, Norm.l1):
        base = runs / norm.value
        if not (base / "model.pt").exists():
            continue
        loaded = load_model(base / "model.pt", torch.device("cpu"))
        thetas = torch.load(base / "thetas.pt", weights_only=True)
        sigma = loaded.sigma or 0.25
        sources: dict[str, tuple[Any, bool]] = {
            "fixed": (theta_from_sigma(sigma, norm), False),
            "isotropic": (_rows_of(thetas["isotropic"]), True),
            "ancer": (_rows_of(thetas["ancer"]), True),
        }
        for method, (source, memory) in sources.items():
            previous = base / "certify" / f"{method}.csv"
            settings.append(
                (
                    f"digits {norm.value} {method}",
                    dict(
                        model=loaded.module, data=data, thetas=source, norm=norm, sizes=sizes,
                        folder=runs / "sequential" / norm.value / method, memory=memory,
                        fixed_frame=read_results(previous) if previous.exists() else None,
                    ),
                )
            )  # fmt: skip
    return settings


def _rows_of(table: torch.Tensor) -> Any:
    """A theta source from a tensor holding one theta per dataset index (row k: input k)."""
    return lambda idx: table[idx]


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | R | mean samples | median | fewer than fixed N | certified acc. at R "
        "(sequential / fixed N) | difference (pp, +- s.e.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for entry in result["radius"]:
            extra = ""
            if "exact_certified_accuracy" in entry:
                extra = (
                    f" (exact {entry['exact_certified_accuracy']:.3f}; false "
                    f"{entry['false_certificates']} / {entry['fixed_false_certificates']})"
                )
            lines.append(
                f"| {result['setting']} | {entry['R']:g} | {entry['mean_samples']:.0f} | "
                f"{entry['median_samples']:.0f} | {entry['fewer']:.1f}x | "
                f"{entry['certified_accuracy']:.3f} / {entry['fixed_certified_accuracy']:.3f}{extra} | "
                f"{entry['difference_pp']:+.1f} +- {entry['difference_se_pp']:.1f} |"
            )
    lines += [
        "",
        "| setting | adaptive: mean samples | median | fewer than fixed N | ACR (adaptive / fixed N) "
        "| ratio | stops |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        a = result["adaptive"]
        stops = ", ".join(f"{k} {v}" for k, v in sorted(a["stops"].items()))
        lines.append(
            f"| {result['setting']} | {a['mean_samples']:.0f} | {a['median_samples']:.0f} | "
            f"{a['fewer']:.1f}x | {a['acr']:.4f} / {a['fixed_acr']:.4f} | {a['acr_ratio']:.4f} "
            f"| {stops} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument(
        "--runs", type=Path, help="the folder of benchmarks/optimize_quality.py --export"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/sequential"), help="work folder")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--inputs", type=int, help="inputs per setting (default 200)")
    args = parser.parse_args(argv)
    retain_freed_memory()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sizes = QUICK if args.quick else FULL
    if args.inputs:
        sizes = Sizes(args.inputs, sizes.cap, sizes.radii, sizes.batch)
    results = []
    model, data, exact = analytic_problem(sizes.inputs, 0.25)
    results.append(
        compare(
            "analytic l2 (sigma 0.25)", model, data, 0.25, Norm.l2, sizes,
            args.out / "analytic", memory=False, exact=exact,
        )
    )  # fmt: skip
    print(f"analytic done ({sizes.inputs} inputs)", file=sys.stderr)
    if args.runs is not None:
        for name, arguments in digits_settings(args.runs, sizes):
            results.append(compare(name, **arguments))
            print(f"{name} done", file=sys.stderr)
    text = markdown(results)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps({"sizes": sizes.__dict__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
