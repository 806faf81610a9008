"""Seconds per denoised certificate on the CPU with ``--channels-last`` (the classifier's and the
DnCNN's weights channels-last) against the default layout, side by side in one process.

    python benchmarks/denoiser_layout.py MODEL DENOISER [--inputs 4] [--N 20000] [--rounds 3]

Certifies the first ``--inputs`` digits test inputs at a fixed sigma through the denoiser with each
layout in turn (the composed classifier as ``certify --denoiser`` builds it, with and without
``prepare_model(..., channels_last=True)``), ``--rounds`` interleaved rounds after a warm-up
(``harness.interleaved``), one thread, and prints the best seconds per certificate of each, the
ratio and whether both layouts gave the same predictions and radii (they differ only by rounding
inside the convolutions, so a vote may flip on a sample at the boundary).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ancer_cli.certify import certify_dataset
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.precision import prepare_model
from ancer_cli.data import load_dataset
from ancer_cli.inputs import in_memory_inputs
from ancer_cli.models import load_model
from ancer_cli.models.denoisers import DenoisedClassifier, load_denoiser
from ancer_cli.runtime import retain_freed_memory
from ancer_cli.settings import CertifyConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import interleaved  # noqa: E402  (the sibling module)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("denoiser", type=Path)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--N", type=int, default=20_000)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    retain_freed_memory()  # as the CLI does at start-up
    cpu = torch.device("cpu")
    composed = {
        name: DenoisedClassifier(
            load_model(args.model, cpu).module,
            load_denoiser(args.denoiser, cpu).module,
            Norm.l2,
            theta=args.sigma,
            fixed=True,
        )
        for name in ("default", "channels-last")
    }
    composed["channels-last"] = prepare_model(composed["channels-last"], channels_last=True)
    data = load_dataset("digits", "test")
    indices = list(range(args.inputs))
    config = CertifyConfig(Sampling(n_selection=100, n_estimation=args.N))
    seeds = dict.fromkeys(indices, 0)
    rows: dict[str, list[tuple[int, float]]] = {}

    def contestant(name: str) -> Callable[[], object]:
        # sound noise wherever the data has a grid, as `certify` draws it by default
        inputs = in_memory_inputs(composed[name], data, args.sigma, norm=Norm.l2, indices=indices)

        def run() -> object:
            found = list(certify_dataset(inputs, indices, config, seeds, cpu, None))
            rows[name] = [(r.predict, round(r.radius, 6)) for r in found]
            return found

        return run

    timings = interleaved(
        {name: contestant(name) for name in composed},
        args.rounds, cpu, measure_memory=False,
    )  # fmt: skip
    print(f"digits, first {args.inputs} test inputs, sigma {args.sigma:g}, N0 = 100, N = {args.N:,}, "
          f"sound noise, seed 0, 1 thread; best of {args.rounds} interleaved rounds")  # fmt: skip
    for name, timing in timings.items():
        print(f"{name:>13}: {timing.best / args.inputs:.3f} s/cert")
    ratio = timings["default"].best / timings["channels-last"].best
    print(f"default / channels-last: {ratio:.2f}x")
    print(f"same predictions and radii: {rows['default'] == rows['channels-last']}")


if __name__ == "__main__":
    main()
