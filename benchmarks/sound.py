"""Benchmark: floating-point-sound sampling (``certify --sound``) against float noise.

Two measurements, side by side in one run:

* ``--sections time``: seconds per certificate (CERTIFY with ``N0 = 100`` and ``N``) with float
  and with sound noise, alternating inputs and modes, on the digits CNN (1x8x8, grid 1/16) and a
  CIFAR-size ResNet-110 (3x32x32, grid 1/255, random weights: the time does not depend on them);
  the ratio sound / float.
* ``--sections accuracy`` (needs ``--model`` and ``--thetas``, e.g. the demo's
  ``runs/demo/model.pt`` and an ``ancer optimize --max 200`` folder): ``ancer certify`` float and
  ``--sound`` for fixed sigma, the isotropic and the ANCER thetas (the memory pass on for the
  thetas, as by default), then ``ancer accuracy`` of the six files. Files go to ``--out`` and an
  interrupted run resumes (each certify is resumable).

    python benchmarks/sound.py --quick                                  # seconds (CI runs it)
    python benchmarks/sound.py --sections time --N 10000 --inputs 3
    python benchmarks/sound.py --sections accuracy --model runs/demo/model.pt \\
        --thetas runs/sound/thetas --inputs 200 --N 100000 --out runs/sound
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import input_generator
from ancer_cli.core.smoothing import certify
from ancer_cli.data import dataset_info
from ancer_cli.models.architectures import build_model

ROOT = Path(__file__).resolve().parent.parent
CASES = (("digits", "cnn", 16), ("cifar10", "resnet110", 255))
METHODS = ("fixed", "isotropic", "ancer")
RADII = ("0", "0.25", "0.5", "0.75")


def time_case(dataset: str, arch: str, levels: int, inputs: int, n: int, batch: int) -> dict:
    """Seconds per certificate, float and sound, on ``inputs`` random on-grid images; the two
    modes alternate input by input (first float, then sound, then the other order)."""
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = build_model(arch, info).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    grid = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, levels + 1, tuple(info.input_shape), generator=grid).float() / levels
        for _ in range(inputs)
    ]
    seconds: dict[str, list[float]] = {"float": [], "sound": []}
    modes = {"float": Noise(Norm.l2), "sound": Noise(Norm.l2, levels)}
    sampling = Sampling(100, n, 0.001, batch)

    def one(mode: str, index: int) -> None:
        generator = input_generator(0, index, "cpu")
        began = time.perf_counter()
        # the law (on the grid: its budget tau) is part of each certificate's time
        law = modes[mode].law(0.25, images[index].shape)
        certify(model, images[index], law, sampling, generator)
        seconds[mode].append(time.perf_counter() - began)

    one("float", 0)  # warm-up, untimed
    seconds["float"].clear()
    for index in range(inputs):
        order = ("float", "sound") if index % 2 == 0 else ("sound", "float")
        for mode in order:
            one(mode, index)
        print(f"  {dataset}/{arch} input {index + 1}/{inputs} done", file=sys.stderr, flush=True)
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    return {
        "case": f"{dataset} {arch} (grid 1/{levels})",
        "float": median["float"],
        "sound": median["sound"],
        "ratio": median["sound"] / median["float"],
    }


def time_section(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(f"## Time per certificate (N0 = 100, N = {args.N}, batch {args.batch_size}, "
          f"{args.threads} threads, median of {args.inputs} inputs)\n")  # fmt: skip
    print("| model | float s | sound s | sound / float |\n|---|---|---|---|")
    for dataset, arch, levels in CASES[: 1 if args.quick else 2]:
        row = time_case(dataset, arch, levels, args.inputs, args.N, args.batch_size)
        print(
            f"| {row['case']} | {row['float']:.3f} | {row['sound']:.3f} | {row['ratio']:.3f} |",
            flush=True,
        )
    print()


def _ancer(*words: object) -> None:
    command = [sys.executable, "-m", "ancer_cli", *map(str, words)]
    print("$ ancer " + " ".join(map(str, words)), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def accuracy_section(args: argparse.Namespace) -> None:
    if args.model is None or args.thetas is None:
        raise SystemExit("--sections accuracy needs --model and --thetas")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sources = {
        "fixed": ("--model", args.model, "--sigma", args.sigma, "--max", args.inputs),
        "isotropic": ("--thetas", args.thetas / "isotropic"),
        "ancer": ("--thetas", args.thetas),
    }
    files, labels = [], []
    for method in METHODS:
        for mode in ("float", "sound"):
            path = out / f"{method}-{mode}.csv"
            done = path.with_name(path.name + ".json")
            again = ("--resume",) if path.exists() or done.exists() else ()
            if not (done.exists() and '"complete": true' in done.read_text()):
                _ancer(
                    "certify", *sources[method], "--N", args.N, "--seed", 0, "--device", "cpu",
                    "--out", path, "--sound" if mode == "sound" else "--no-sound", *again,
                )  # fmt: skip
            files.append(path)
            labels += ["--label", f"{method} {mode}"]
    radii = [word for radius in RADII for word in ("--radius", radius)]
    _ancer("accuracy", *files, *labels, *radii, "--format", "markdown")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="time", help="time, accuracy or time,accuracy")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--inputs", type=int, default=3)
    parser.add_argument("--N", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--thetas", type=Path)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sound")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.N, args.batch_size = 2, 400, 200
    sections = set(args.sections.split(","))
    if "time" in sections:
        time_section(args)
    if "accuracy" in sections:
        accuracy_section(args)


if __name__ == "__main__":
    main()
