"""Benchmark: the training methods of ``ancer train`` on digits -- Gaussian augmentation,
consistency regularization, MACER and SmoothAdv, each at its paper's defaults.

For each method (``--methods``) and each sigma (``--sigmas``): ``ancer train --training METHOD
--sigma S`` (``--epochs``; seconds per epoch timed around the in-process run, after an untimed
warm-up run, and kept beside the model), ``ancer certify`` of the first ``--inputs`` test inputs
at that fixed sigma (seed 0, N0 = 100, ``--N``, ``--alpha``), and with ``--ancer`` (the default)
``ancer optimize`` (ANCER thetas, isotropic stage first) and ``ancer certify --thetas`` of the
same inputs.

Reported per run: certified accuracy at radius 0, 0.25, 0.5, 0.75 and 1.0, ACR, proxy ACR (the
ANCER proxy radius; equal to ACR for a fixed sigma) and the training seconds per epoch (the
same for a method's fixed-sigma and ANCER rows). Files go to ``--out``; ``--keep`` reuses the
finished ones (a model trained for the asked epochs with its timing file, a certify run of the
asked inputs and N, a thetas folder with its manifest).

``--sweep METHOD=V1,V2`` also trains METHOD with its main weight (``MAIN_WEIGHT``: consistency's
lambda, MACER's lambda, SmoothAdv's eps) set to each value and certifies it at fixed sigma (rows
named ``METHOD w=V``; files ``METHOD-SIGMA-wV``): what the issue asks where a method misses its
target at a paper's defaults.

    python benchmarks/training.py --quick                    # seconds (CI runs it)
    python benchmarks/training.py --out runs/training --keep # the full run (hours on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ancer_cli.analysis.metrics import Metric, average_certified_radius, certified_accuracy
from ancer_cli.results import read_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commands import ancer, finished  # noqa: E402  (the sibling module)

ROOT = Path(__file__).resolve().parent.parent
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
METHODS = ("noise", "consistency", "macer", "smoothadv")
QUICK_SETTINGS = {  # one cheap epoch per method: the script's plumbing, not the methods' results
    "noise": ("--batch-size", 256),
    "consistency": ("--batch-size", 256),
    "macer": ("--batch-size", 256, "--noisy-samples", 2),
    "smoothadv": ("--batch-size", 256, "--noisy-samples", 1, "--smoothadv-steps", 1),
}
MAIN_WEIGHT = {
    "consistency": "--consistency-weight",
    "macer": "--macer-weight",
    "smoothadv": "--smoothadv-eps",
}
QUICK_OPTIMIZE = ("--iso-samples", 16, "--iterations", 2, "--samples", 8, "--guard-samples", 32)


def measure(path: Path) -> dict[str, float]:
    """Certified accuracy at :data:`RADII`, ACR and proxy ACR of a results file."""
    frame = read_results(path)
    row = {f"{r:g}": certified_accuracy(frame, r) for r in RADII}
    row["acr"] = average_certified_radius(frame)
    row["proxy"] = average_certified_radius(frame, Metric.proxy)
    return row


def trained(model: Path, timing: Path, epochs: int) -> bool:
    """Whether ``model`` is a checkpoint of ``epochs`` epochs whose training time was kept."""
    if not (model.exists() and timing.exists()):
        return False
    checkpoint = torch.load(model, map_location="cpu", weights_only=True)
    return checkpoint.get("epoch") == epochs and json.loads(timing.read_text())["epochs"] == epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--inputs", type=int, default=500, help="first test inputs certified")
    parser.add_argument("--N", type=int, default=100_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument(
        "--ancer", action=argparse.BooleanOptionalAction, default=True,
        help="also optimize ANCER thetas and certify with them",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "training")
    parser.add_argument("--keep", action="store_true", help="keep finished files in --out")
    parser.add_argument(
        "--sweep", nargs="+", default=[], metavar="METHOD=V1,V2",
        help="also train METHOD with its main weight at each value (fixed sigma only)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.N, args.epochs, args.sigmas = min(args.inputs, 2), 200, 1, args.sigmas[:1]
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = ("--device", "cpu")

    warm = args.quick  # the first run in a process pays one-time costs: not a method's

    sweep: dict[str, list[float]] = {}
    for item in args.sweep:
        method, _, values = item.partition("=")
        if method not in MAIN_WEIGHT or not values:
            parser.error(
                f"--sweep {item}: expected METHOD=V1,V2 with METHOD in {list(MAIN_WEIGHT)}"
            )
        sweep[method] = [float(value) for value in values.split(",")]

    def train(method: str, sigma: float, weight: float | None = None) -> tuple[Path, float]:
        nonlocal warm
        name = f"{method}-{sigma:g}" + ("" if weight is None else f"-w{weight:g}")
        model = out / f"{name}.pt"
        timing = model.with_suffix(".time.json")
        if args.keep and trained(model, timing, args.epochs):
            print(f"keeping {model}", file=sys.stderr, flush=True)
        else:
            if not warm:
                ancer("train", "--epochs", 1, *device, "--out", out / "warm-up.pt", "--force")
                warm = True
            extra = QUICK_SETTINGS[method] if args.quick else ()
            if weight is not None:
                extra = (*extra, MAIN_WEIGHT[method], weight)
            began = time.perf_counter()
            ancer("train", "--training", method, "--sigma", sigma, "--epochs", args.epochs,
                  *extra, *device, "--out", model, "--force")  # fmt: skip
            seconds = time.perf_counter() - began
            timing.write_text(json.dumps({"seconds": seconds, "epochs": args.epochs}) + "\n")
        record = json.loads(timing.read_text())
        return model, record["seconds"] / record["epochs"]

    def certify(target: Path, *words: object) -> Path:
        if args.keep and finished(target, args.inputs, args.N):
            print(f"keeping {target}", file=sys.stderr, flush=True)
        else:
            ancer("certify", *words, "--max", args.inputs, "--N", args.N, "--alpha", args.alpha,
                  "--seed", 0, *device, "--out", target, "--force")  # fmt: skip
        return target

    runs: list[tuple[str, float, str, Path, float]] = []
    for sigma in args.sigmas:
        for method in args.methods:
            model, per_epoch = train(method, sigma)
            fixed = certify(out / f"{method}-{sigma:g}.csv", "--model", model, "--sigma", sigma)
            runs.append((method, sigma, "fixed", fixed, per_epoch))
            if not args.ancer:
                continue
            thetas = out / f"{method}-{sigma:g}-thetas"
            if not (args.keep and (thetas / "manifest.json").exists()):
                small = QUICK_OPTIMIZE if args.quick else ()
                ancer("optimize", "--model", model, "--sigma", sigma, "--max", args.inputs,
                      *small, *device, "--out", thetas, "--force")  # fmt: skip
            target = out / f"{method}-{sigma:g}-ancer.csv"
            runs.append((method, sigma, "ancer", certify(target, "--thetas", thetas), per_epoch))
        for method, weights in sweep.items():
            for weight in weights:
                model, per_epoch = train(method, sigma, weight)
                fixed = certify(model.with_suffix(".csv"), "--model", model, "--sigma", sigma)
                runs.append((f"{method} w={weight:g}", sigma, "fixed", fixed, per_epoch))

    header = ["training", "sigma", "thetas", *(f"acc@{r:g}" for r in RADII), "ACR",
              "proxy ACR", "s/epoch"]  # fmt: skip
    print(f"digits, first {args.inputs} test inputs, {args.epochs} epoch(s), N0 = 100, "
          f"N = {args.N:,}, alpha = {args.alpha:g}, l2, seed 0, "
          f"{args.threads} thread(s)")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for method, sigma, thetas, path, per_epoch in runs:
        m = measure(path)
        cells = [method, f"{sigma:g}", thetas, *(f"{m[f'{r:g}']:.3f}" for r in RADII),
                 f"{m['acr']:.4f}", f"{m['proxy']:.4f}", f"{per_epoch:.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
