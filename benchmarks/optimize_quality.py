"""Quality benchmark: the certified search and guarded ANCER against the reference optimization.

For each norm, on the embedded digits data: a model trained with ``ancer train``'s defaults
(cnn, sigma 0.25, 30 epochs), the first ``--inputs`` test inputs optimized

* **reference** -- the faithful published algorithms and schedules (``optimize_isotropic`` with
  ``IsotropicConfig()``: 900 steps x 100 samples; ``optimize_ancer`` with ``AncerConfig()``:
  100 steps x 100 samples), exactly as ``ancer optimize`` runs them (batches of 50, per-input
  streams ``Stream.isotropic`` and ``Stream.ancer``);
* **new** -- ``search_isotropic`` (``IsotropicSearchConfig()``) then ``optimize_ancer_guarded``
  (``GuardedAncerConfig()``), streams ``Stream.isotropic``, ``Stream.ancer``, ``Stream.guard``,
  scored under float noise (``Noise(norm)``), the law the certification below draws;

then fixed sigma, both isotropic and both ANCER thetas certified with CERTIFY (``--N``,
``--N0``, ``--alpha``) and the memory pass (a certify run of the in-memory model; off for fixed
sigma, as in ``ancer certify``), with float noise. Prints one markdown table per norm --
certified accuracy on ``radius`` at 0, 0.25, 0.5, 0.75, the average certified radius on
``radius`` and on ``radius_proxy``, abstentions, forward-equivalents per input (a backward pass
counts as two forwards) and optimization wall time per input -- and the targets with paired
standard errors.

Everything is seeded (training, optimization and certification seed 0); results are cached
under ``--work`` (models, reference thetas per batch, certificates), so a rerun only computes
what is missing. ``--search key=value`` / ``--ancer key=value`` override fields of the new
configs (for experiments; the cache of the new stage is keyed by the configs).

    python benchmarks/optimize_quality.py --inputs 200 --N 10000             # ~1.5 h on 1 core
    python benchmarks/optimize_quality.py --inputs 200 --N 100000 --norm l2 --norm l1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ancer_cli.artifacts import sha256_file
from ancer_cli.certify import CertifyRequest, plan_certify_inputs
from ancer_cli.core.choices import Norm, Sampling, theta_from_sigma
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import InputStreams, Stream, input_generator
from ancer_cli.core.optimize.config import (
    AncerConfig,
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
)
from ancer_cli.core.optimize.published import optimize_ancer, optimize_isotropic
from ancer_cli.core.optimize.search import optimize_certified
from ancer_cli.data import LoadedData, load_dataset
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.inputs import in_memory_inputs
from ancer_cli.models import load_model
from ancer_cli.results import read_results, results_sidecar_path
from ancer_cli.run.spec import InputsSpec
from ancer_cli.settings import CertifyConfig, TrainConfig
from ancer_cli.train import train

SIGMA = 0.25
SEED = 0
BATCH = 50  # inputs optimized together, as ``ancer optimize --batch-size`` defaults to
RADII = (0.0, 0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Schedule:
    """The reference schedule (the published one unless ``--quick``) and the training epochs."""

    isotropic: IsotropicConfig = IsotropicConfig()
    ancer: AncerConfig = AncerConfig()
    epochs: int = TrainConfig(arch="cnn").epochs

    @property
    def iso_forwards(self) -> int:
        return self.isotropic.forward_equivalents

    @property
    def forwards(self) -> int:
        return self.iso_forwards + self.ancer.forward_equivalents

    @property
    def tag(self) -> str:
        """File-name suffix of a non-published schedule (the published one has none)."""
        if self == Schedule(epochs=self.epochs):
            return ""
        return f"-{self.isotropic.iterations}x{self.isotropic.samples}-" + (
            f"{self.ancer.iterations}x{self.ancer.samples}"
        )


QUICK = Schedule(
    IsotropicConfig(iterations=3, samples=16), AncerConfig(iterations=3, samples=16), epochs=2
)


@dataclass
class Thetas:
    """Optimized thetas of the inputs ``0 .. K-1`` and what they cost."""

    isotropic: torch.Tensor  # (K,)
    ancer: torch.Tensor  # (K, C, H, W)
    iso_forwards: np.ndarray  # (K,) forward-equivalents of the isotropic stage
    total_forwards: np.ndarray  # (K,) both stages
    iso_seconds: float  # wall time of the isotropic stage, all inputs
    total_seconds: float
    accepted: np.ndarray | None = None  # new only: the guard kept ANCER's theta


def get_model(work: Path, norm: Norm, epochs: int, device: torch.device) -> Path:
    """``ancer train --dataset digits --sigma 0.25 [--norm l1]`` (cached in ``work``)."""
    path = work / f"model-{norm.value}-{epochs}.pt"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        config = TrainConfig(arch="cnn", norm=norm, sigma=SIGMA, epochs=epochs, seed=SEED)
        for report in train(
            config, load_dataset("digits", "train"), load_dataset("digits", "test"), device, path
        ):
            last = report
        print(f"trained {path}: clean {last.clean_accuracy:.3f}", file=sys.stderr)
    return path


def batches(count: int) -> list[list[int]]:
    return [list(range(s, min(s + BATCH, count))) for s in range(0, count, BATCH)]


def inputs(data: LoadedData, batch: list[int], device: torch.device) -> torch.Tensor:
    return torch.stack([data.dataset[i][0] for i in batch]).to(device, torch.float32)


def reference_thetas(
    model: nn.Module,
    data: LoadedData,
    norm: Norm,
    count: int,
    schedule: Schedule,
    folder: Path,
    device: torch.device,
) -> Thetas:
    """The faithful algorithms with the published schedules, cached per batch of 50."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for batch in batches(count):
        path = folder / f"reference-{norm.value}-{batch[0]}{schedule.tag}.pt"
        if not path.exists():
            x = inputs(data, batch, device)
            began = time.perf_counter()
            start = torch.full((len(batch),), theta_from_sigma(SIGMA, norm), device=device)
            gens = [input_generator(SEED, i, device, Stream.isotropic) for i in batch]
            iso = optimize_isotropic(model, x, start, norm, schedule.isotropic, gens)
            middle = time.perf_counter()
            gens = [input_generator(SEED, i, device, Stream.ancer) for i in batch]
            theta = optimize_ancer(model, x, iso, norm, schedule.ancer, gens)
            end = time.perf_counter()
            torch.save(
                {
                    "indices": batch,
                    "isotropic": iso.cpu(),
                    "ancer": theta.cpu(),
                    "iso_seconds": middle - began,
                    "ancer_seconds": end - middle,
                },
                path,
            )
        part = torch.load(path, weights_only=True)
        # a cached batch may hold more inputs than asked for (an earlier, larger run)
        keep = [k for k, i in enumerate(part["indices"]) if i < count]
        share = len(keep) / len(part["indices"])
        parts.append((part, keep, share))
    iso = torch.cat([p["isotropic"][keep] for p, keep, _ in parts])
    anc = torch.cat([p["ancer"][keep] for p, keep, _ in parts])
    return Thetas(
        isotropic=iso,
        ancer=anc,
        iso_forwards=np.full(count, schedule.iso_forwards),
        total_forwards=np.full(count, schedule.forwards),
        iso_seconds=sum(p["iso_seconds"] * s for p, _, s in parts),
        total_seconds=sum((p["iso_seconds"] + p["ancer_seconds"]) * s for p, _, s in parts),
    )


def new_thetas(
    model: nn.Module,
    data: LoadedData,
    norm: Norm,
    count: int,
    search: IsotropicSearchConfig,
    ancer: GuardedAncerConfig,
    device: torch.device,
) -> Thetas:
    """The certified search and guarded ANCER, in the same batches of 50.

    The search alone is run (and timed) first; the full run repeats it, bit-identically, so
    the ANCER wall time includes the search, as the reference's includes its isotropic stage.
    """
    noise = Noise(norm)  # float noise: the law these thetas are certified with
    isos, ancers, iso_fw, total_fw, accepted = [], [], [], [], []
    iso_seconds = total_seconds = 0.0
    for batch in batches(count):
        x = inputs(data, batch, device)
        start = torch.full((len(batch),), theta_from_sigma(SIGMA, norm), device=device)
        began = time.perf_counter()
        streams = InputStreams(SEED, batch, device)
        only_search = optimize_certified(
            model, x, start, noise, CertifiedSearchConfig(search, None), streams
        )
        middle = time.perf_counter()
        found = optimize_certified(
            model, x, start, noise, CertifiedSearchConfig(search, ancer), streams
        )
        end = time.perf_counter()
        assert torch.equal(only_search.theta_isotropic, found.theta_isotropic)
        assert found.theta is not None and found.ancer is not None
        iso_seconds += middle - began
        total_seconds += end - middle
        isos.append(found.theta_isotropic.cpu())
        ancers.append(found.theta.cpu())
        iso_fw.append(found.search.forward_equivalents.cpu().numpy())
        total_fw.append(found.forward_equivalents.cpu().numpy())
        accepted.append(found.ancer.guard.accepted.cpu().numpy())
    return Thetas(
        isotropic=torch.cat(isos),
        ancer=torch.cat(ancers),
        iso_forwards=np.concatenate(iso_fw),
        total_forwards=np.concatenate(total_fw),
        iso_seconds=iso_seconds,
        total_seconds=total_seconds,
        accepted=np.concatenate(accepted),
    )


def certify_rows(
    model: nn.Module,
    data: LoadedData,
    count: int,
    theta: torch.Tensor | float,
    norm: Norm,
    config: CertifyConfig,
    memory: bool,
    out: Path,
    device: torch.device,
) -> pd.DataFrame:
    """CERTIFY (and the memory pass) of inputs ``0 .. count-1`` with float noise, seed
    ``SEED``; rows as ``ancer certify``."""
    if isinstance(theta, torch.Tensor):
        source: Callable[[int], torch.Tensor] | float = rows_of(theta.to(device))
    else:
        source = float(theta)  # a fixed theta, as ``--sigma``
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = results_sidecar_path(out)
    complete = sidecar.exists() and json.loads(sidecar.read_text()).get("complete", False)
    if not complete:  # a run cut short resumes where it stopped
        inputs = in_memory_inputs(
            model, data, source, norm=norm, indices=range(count), sound=False, device=device
        )
        request = CertifyRequest(
            out=out,
            inputs=InputsSpec(seed=SEED),
            config=config,
            memory=memory,
            resume=sidecar.exists(),
        )
        session = Session(SINGLE, device)
        plan_certify_inputs(inputs, request, session).execute(session)
    return read_results(out)


def rows_of(table: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """A theta source from a tensor holding one theta per dataset index (row k: input k)."""
    return lambda idx: table[idx]


def theta_key(theta: torch.Tensor) -> str:
    return hashlib.sha256(theta.double().numpy().tobytes()).hexdigest()[:12]


def summary_row(name: str, rows: pd.DataFrame, forwards: float, seconds: float) -> dict[str, Any]:
    correct = rows["correct"] == 1
    row: dict[str, Any] = {"method": name}
    for radius in RADII:
        row[f"acc@{radius:g}"] = float((correct & (rows["radius"] >= radius)).mean())
    row["ACR"] = float((rows["radius"] * correct).mean())
    row["ACR proxy"] = float((rows["radius_proxy"] * correct).mean())
    row["abstain"] = int((rows["predict"] == -1).sum())
    row["fwd-eq/input"] = forwards
    row["s/input"] = seconds
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            value = row[key]
            if isinstance(value, float) and key.startswith(("acc", "ACR")):
                cells.append(f"{value:.3f}")
            elif key == "fwd-eq/input":
                cells.append(f"{value:,.0f}")
            elif key == "s/input":
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Mean of ``a - b`` over the same inputs and its standard error."""
    difference = a.to_numpy() - b.to_numpy()
    return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(len(difference)))


def targets(results: dict[str, pd.DataFrame], new: Thetas, reference_forwards: int) -> list[str]:
    """The targets of the new defaults, each with its paired difference and standard error."""
    fixed, lines = results["fixed"], []

    def credit(rows: pd.DataFrame, column: str) -> pd.Series:
        return rows[column] * (rows["correct"] == 1)

    mean, se = paired(credit(results["isotropic/new"], "radius"), credit(fixed, "radius"))
    lines.append(
        f"- isotropic/new ACR - fixed ACR = {mean:+.4f} (paired SE {se:.4f}): "
        f"{'met' if mean >= -2 * se else 'NOT met'} (>= 0 within 2 SE)"
    )
    mean, se = paired(
        credit(results["ancer/new"], "radius_proxy"),
        credit(results["ancer/reference"], "radius_proxy"),
    )
    lines.append(
        f"- ancer/new proxy ACR - ancer/reference proxy ACR = {mean:+.4f} (paired SE {se:.4f}): "
        f"{'met' if mean >= -2 * se else 'NOT met'} (>= 0 within 2 SE)"
    )
    count = len(fixed)
    for name in ("isotropic/new", "ancer/new"):
        drop = int(fixed["correct"].sum() - results[name]["correct"].sum())
        lines.append(
            f"- clean accuracy, {name} vs fixed: {drop:+d} inputs fewer of {count}: "
            f"{'met' if drop <= math.ceil(count / 100) else 'NOT met'} (at most 1 in 100)"
        )
    strong = (fixed["correct"] == 1) & (fixed["radius"] >= 0.25)
    for name in ("isotropic/reference", "ancer/reference", "isotropic/new", "ancer/new"):
        lost = results[name].loc[strong & (results[name]["predict"] == -1), "idx"].tolist()
        verdict = "" if name.endswith("reference") else (": met" if not lost else ": NOT met")
        lines.append(
            f"- {name}: inputs fixed sigma certifies at radius >= 0.25 that abstain: "
            f"{len(lost)} {lost[:10]}{verdict}"
        )
    ratio = reference_forwards / float(new.total_forwards.mean())
    lines.append(
        f"- forward-equivalents: reference {reference_forwards:,} per input, new mean "
        f"{new.total_forwards.mean():,.0f} (max {new.total_forwards.max():,}): {ratio:.1f}x fewer"
        f": {'met' if ratio >= 10 else 'NOT met'} (>= 10x)"
    )
    if new.accepted is not None:
        lines.append(f"- guard kept ANCER's theta for {int(new.accepted.sum())} of {count} inputs")
    return lines


def overrides(config: Any, pairs: list[str]) -> Any:
    types = {f.name: f.type for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown field {key!r} of {type(config).__name__}: {list(types)}")
        kind = type(getattr(config, key))
        if kind is bool:
            changes[key] = value.lower() in ("1", "true", "yes")
        else:
            changes[key] = kind(float(value)) if kind is int else kind(value)
    return replace(config, **changes)


def run_norm(
    norm: Norm,
    args: argparse.Namespace,
    search: IsotropicSearchConfig,
    ancer: GuardedAncerConfig,
    schedule: Schedule,
    device: torch.device,
) -> str:
    """Optimize, certify and tabulate one norm; returns the markdown report."""
    work = Path(args.work)
    model_path = get_model(work, norm, schedule.epochs, device)
    model = load_model(model_path, device).module
    data = load_dataset("digits", "test")
    count = args.inputs
    folder = work / norm.value / sha256_file(model_path)[:12]
    reference = reference_thetas(model, data, norm, count, schedule, folder, device)
    new = new_thetas(model, data, norm, count, search, ancer, device)
    config = CertifyConfig(Sampling(args.N0, args.N, args.alpha, args.certify_batch))
    tag = f"N{args.N}-N0{args.N0}-a{args.alpha:g}-b{args.certify_batch}-n{count}"
    results: dict[str, pd.DataFrame] = {}
    table = []
    fixed = theta_from_sigma(SIGMA, norm)
    results["fixed"] = certify_rows(
        model, data, count, fixed, norm, config, False, folder / f"fixed-{tag}.csv", device
    )
    table.append(summary_row("fixed", results["fixed"], 0, 0.0))
    for name, thetas in (("reference", reference), ("new", new)):
        for stage, theta, forwards, seconds in (
            ("isotropic", thetas.isotropic, thetas.iso_forwards, thetas.iso_seconds),
            ("ancer", thetas.ancer, thetas.total_forwards, thetas.total_seconds),
        ):
            key = f"{stage}/{name}"
            out = folder / f"{stage}-{theta_key(theta)}-{tag}.csv"
            results[key] = certify_rows(model, data, count, theta, norm, config, True, out, device)
            table.append(summary_row(key, results[key], float(np.mean(forwards)), seconds / count))
    header = (
        f"### digits, {norm.value}, sigma {SIGMA}: first {count} test inputs, CERTIFY N0 = "
        f"{args.N0}, N = {args.N:,}, alpha = {args.alpha:g}, memory pass on optimized thetas"
    )
    lines = targets(results, new, schedule.forwards)
    if args.export is not None:
        export(Path(args.export) / norm.value, model_path, new, results, folder, tag)
    return "\n".join([header, "", markdown(table), "", *lines])


def export(
    target: Path,
    model_path: Path,
    new: Thetas,
    results: dict[str, pd.DataFrame],
    folder: Path,
    tag: str,
) -> None:
    """The new defaults' model, thetas and fixed-N certificates, for benchmarks/sequential.py:
    ``model.pt``, ``thetas.pt`` (``{"isotropic": (K,), "ancer": (K, C, H, W)}``) and
    ``certify/{fixed,isotropic,ancer}.csv``."""
    (target / "certify").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, target / "model.pt")
    torch.save({"isotropic": new.isotropic, "ancer": new.ancer}, target / "thetas.pt")
    sources = {
        "fixed": folder / f"fixed-{tag}.csv",
        "isotropic": folder / f"isotropic-{theta_key(new.isotropic)}-{tag}.csv",
        "ancer": folder / f"ancer-{theta_key(new.ancer)}-{tag}.csv",
    }
    for name, source in sources.items():
        shutil.copyfile(source, target / "certify" / f"{name}.csv")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/optimize-quality", help="cache folder")
    parser.add_argument("--norm", action="append", choices=[n.value for n in Norm])
    parser.add_argument("--inputs", type=int, default=200, help="first K test inputs")
    parser.add_argument("--N", type=int, default=100_000, help="CERTIFY estimation samples")
    parser.add_argument("--N0", type=int, default=100, help="CERTIFY selection samples")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--certify-batch", type=int, default=1000, help="samples per pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--search", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ancer", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the configs and tables here")
    parser.add_argument(
        "--export",
        help="write the new defaults' model, thetas and certificates here (for "
        "benchmarks/sequential.py --runs)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seconds, numbers meaningless: 2 training epochs, 4 inputs, N = 200, tiny schedules",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    search = overrides(IsotropicSearchConfig(), args.search)
    ancer = overrides(GuardedAncerConfig(), args.ancer)
    schedule = Schedule()
    if args.quick:
        schedule, args.inputs, args.N = QUICK, min(args.inputs, 4), min(args.N, 200)
        search = replace(search, samples=64, samples_per_pass=64)
        ancer = replace(ancer, iterations=3, samples=16, guard_samples=64)
    print(f"search: {search}\nancer: {ancer}\nreference: {schedule}\n")
    reports = {}
    for name in args.norm or ["l2", "l1"]:
        reports[name] = run_norm(Norm(name), args, search, ancer, schedule, device)
        print(reports[name] + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"search": asdict(search), "ancer": asdict(ancer), "reports": reports}, indent=2
            )
        )


if __name__ == "__main__":
    main()
