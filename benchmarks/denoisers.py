"""Benchmark: denoised smoothing on digits -- a classifier trained without noise, certified
through a denoiser, against one trained under noise.

Trained here (``--out``; kept with ``--keep``): a clean classifier (``train --sigma 0``), a
classifier under noise for each ``--sigmas`` value, an ``mse`` denoiser and a ``classifier``
denoiser (the clean classifier frozen), both conditioned on the noise-level map and trained over
noise levels up to the largest sigma certified (``--denoiser-sigma``) for 300 epochs. Certified
for each sigma, with the same seed, N0, N and alpha:

* ``clean``: the clean classifier alone;
* ``clean+mse`` and ``clean+classifier``: the clean classifier behind each denoiser;
* ``noise-trained``: the classifier trained under that sigma;

and, for the first sigma, the clean classifier with the ``classifier`` denoiser and thetas
optimized through it (``optimize --denoiser``): isotropic and ANCER (memory pass on).

Reported per run: certified accuracy at radius 0, 0.25, 0.5, 0.75, ACR, proxy ACR (the ANCER
proxy radius; equal to ACR for a fixed sigma and isotropic thetas), abstentions and seconds per
certificate. Files go to ``--out``.

    python benchmarks/denoisers.py --quick                   # seconds (CI runs it)
    python benchmarks/denoisers.py --inputs 200 --N 100000 --out runs/denoisers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ancer_cli.analysis.metrics import (
    Metric,
    abstention_rate,
    average_certified_radius,
    certified_accuracy,
)
from ancer_cli.results import read_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commands import ancer, finished  # noqa: E402  (the sibling module)

ROOT = Path(__file__).resolve().parent.parent
RADII = (0.0, 0.25, 0.5, 0.75)


def measure(path: Path) -> dict[str, float]:
    """Certified accuracy at :data:`RADII`, ACR, proxy ACR, abstentions and s/certificate.

    Seconds per certificate are the mean of the results' ``time`` column (the seconds one process
    spent on each input), which stays right for a run resumed or split under torchrun, where the
    sidecar's ``seconds_this_run`` covers only the last part or counts wall time across ranks."""
    frame = read_results(path)
    row = {f"{r:g}": certified_accuracy(frame, r) for r in RADII}
    row["acr"] = average_certified_radius(frame)
    row["proxy"] = average_certified_radius(frame, Metric.proxy)
    row["abstain"] = abstention_rate(frame) * len(frame)
    row["seconds"] = float(frame["time"].mean()) if len(frame) else float("nan")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--N", type=int, default=100_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=30, help="classifier training epochs")
    parser.add_argument("--denoiser-epochs", type=int, default=300)
    parser.add_argument(
        "--denoiser-sigma", type=float, help="largest noise level the denoisers train on "
        "(default: the largest of --sigmas)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "denoisers")
    parser.add_argument("--keep", action="store_true", help="keep finished files in --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.N, args.epochs, args.denoiser_epochs = min(args.inputs, 3), 500, 1, 1
        args.sigmas = args.sigmas[:1]
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = ("--device", "cpu")

    def train(target: Path, *words: object) -> Path:
        if not (args.keep and target.exists()):
            ancer("train", *words, *device, "--out", target, "--force")
        return target

    def certify(target: Path, *words: object) -> Path:
        if args.keep and finished(target, args.inputs, args.N):
            print(f"keeping {target}", file=sys.stderr, flush=True)
        else:
            ancer("certify", *words, "--N", args.N, "--alpha", args.alpha, "--seed", 0,
                   *device, "--out", target, "--force")  # fmt: skip
        return target

    clean = train(out / "clean.pt", "--sigma", 0, "--epochs", args.epochs)
    noisy = {s: train(out / f"noise-{s:g}.pt", "--sigma", s, "--epochs", args.epochs)
             for s in args.sigmas}  # fmt: skip
    top = max(args.sigmas) if args.denoiser_sigma is None else args.denoiser_sigma
    denoising = ("--denoiser", "--sigma", top, "--epochs", args.denoiser_epochs)
    mse = train(out / "denoiser-mse.pt", *denoising)
    by_classifier = train(out / "denoiser-classifier.pt", *denoising,
                          "--objective", "classifier", "--classifier", clean)  # fmt: skip
    runs: list[tuple[str, float, Path]] = []
    for s in args.sigmas:
        fixed = ("--sigma", s, "--max", args.inputs)
        for name, words in (
            ("clean", ("--model", clean)),
            ("clean+mse", ("--model", clean, "--denoiser", mse)),
            ("clean+classifier", ("--model", clean, "--denoiser", by_classifier)),
            ("noise-trained", ("--model", noisy[s])),
        ):
            runs.append((name, s, certify(out / f"{name}-{s:g}.csv", *words, *fixed)))
    s = args.sigmas[0]
    thetas = out / f"thetas-{s:g}"
    if not (args.keep and (thetas / "manifest.json").exists()):
        small = ("--iso-samples", 16, "--samples", 8, "--guard-samples", 64) if args.quick else ()
        ancer("optimize", "--model", clean, "--denoiser", by_classifier, "--sigma", s,
               "--max", args.inputs, *device, "--out", thetas, "--force", *small)  # fmt: skip
    for name, folder in (("isotropic", thetas / "isotropic"), ("ancer", thetas)):
        target = out / f"clean+classifier-{name}-{s:g}.csv"
        runs.append((f"clean+classifier, {name} thetas", s,
                     certify(target, "--thetas", folder, "--denoiser", by_classifier)))  # fmt: skip

    header = ["base classifier", "sigma", *(f"acc@{r:g}" for r in RADII), "ACR", "proxy ACR",
              "abstained", "s/cert"]  # fmt: skip
    print(f"digits, first {args.inputs} test inputs, N0 = 100, N = {args.N:,}, alpha = "
          f"{args.alpha:g}, l2, seed 0, {args.threads} thread(s)")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, s, path in runs:
        m = measure(path)
        cells = [name, f"{s:g}", *(f"{m[f'{r:g}']:.3f}" for r in RADII), f"{m['acr']:.4f}",
                 f"{m['proxy']:.4f}", f"{m['abstain']:.0f}", f"{m['seconds']:.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
