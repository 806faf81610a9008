"""Benchmark: what committing a run costs -- hashing its inputs and model -- and the check that
the model is a function of one input, against what certifying costs.

Before a run draws its seed it hashes every input it certifies (the exact tensor the noise is
added to: :func:`~ancer_cli.run.commit.tensor_digest`), each theta, and the model and denoiser
files; before certifying it runs :func:`~ancer_cli.models.checks.check_per_input`. Measured:

* inputs: an image folder of ``--images`` PNGs of ``--size`` pixels (smooth 8-bit RGB images,
  written here), and of ``--large-images`` at 224 x 224: the folder's loading (its header
  survey), one decoding pass (what certify reads anyway), the commitment (a decoding pass and the
  hashes: what committing adds), and the hashes alone on tensors already in memory; seconds in
  all and per input;
* files: SHA-256 of a file the size of a resnet50 checkpoint (``--file-mb``);
* the check: :func:`check_per_input` on the digits cnn, resnet20 (32 x 32) and resnet50
  (224 x 224), with random weights in eval mode, against one forward pass of a 1,000-input
  batch, the unit certify repeats about ``N / 1000`` times per input.

    python benchmarks/commitment.py --quick        # seconds (CI runs it)
    python benchmarks/commitment.py                # 10,000 + 1,000 PNGs, the three models
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ancer_cli.artifacts import sha256_file
from ancer_cli.data import load_dataset
from ancer_cli.data.base import info_for
from ancer_cli.models import build_model
from ancer_cli.models.checks import check_per_input
from ancer_cli.run.commit import commit_inputs, tensor_digest


def write_folder(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """``root/test/<class>/<i>.png``: ``count`` smooth 8-bit RGB images in 10 classes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / "test" / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        image.save(folder / f"{i:05d}.png")
    return root


def timed(work):  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    value = work()
    return value, time.perf_counter() - began


def folder_costs(count: int, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        root = write_folder(Path(scratch), count, size)
        data, loading = timed(lambda: load_dataset("folder", "test", root))
        indices = list(range(data.size))
        tensors, decoding = timed(lambda: [data.dataset[i][0] for i in indices])
        _, committing = timed(lambda: commit_inputs(indices, lambda i: data.dataset[i][0], None))
        _, hashing = timed(lambda: [tensor_digest(t) for t in tensors])
    return {"images": count, "size": size, "load": loading, "decode": decoding,
            "commit": committing, "hash": hashing}  # fmt: skip


def check_costs(arch: str, shape: tuple[int, int, int]) -> dict[str, float]:
    info = info_for("digits" if arch == "cnn" else "cifar10", shape, 10)
    model = build_model(arch, info).eval()
    inputs = torch.rand(2, *shape)
    with torch.inference_mode():
        model(torch.rand(8, *shape))  # warm-up
        _, forward = timed(lambda: model(torch.rand(1000 if arch != "resnet50" else 100, *shape)))
    if arch == "resnet50":
        forward *= 10  # a 1,000-input batch, from ten of 100
    check, seconds = timed(lambda: check_per_input(model, inputs, arch))
    return {"arch": arch, "check": seconds, "items": check.items, "forward_1000": forward}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--large-images", type=int, default=1_000)
    parser.add_argument("--file-mb", type=int, default=98, help="resnet50's checkpoint: 98 MB")
    parser.add_argument("--models", default="cnn,resnet20,resnet50")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.large_images, args.file_mb, args.models = 20, 2, 1, "cnn"
    torch.set_num_threads(1)
    folder_costs(2, 8)  # imports (torchvision, PIL plugins) before anything is timed

    print(f"inputs (one thread, {os.cpu_count()} cores)")
    print("| images | size | load (survey) s | decode s | commit s | hash alone s | "
          "commit per input ms | hash per input us |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for count, size in ((args.images, args.size), (args.large_images, 224)):
        row = folder_costs(count, size)
        print(f"| {count:,} | {size}x{size} | {row['load']:.2f} | {row['decode']:.2f} | "
              f"{row['commit']:.2f} | {row['hash']:.3f} | {1e3 * row['commit'] / count:.3f} | "
              f"{1e6 * row['hash'] / count:.1f} |")  # fmt: skip

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.pt"
        path.write_bytes(os.urandom(args.file_mb << 20))
        _, seconds = timed(lambda: sha256_file(path))
    print(f"\nSHA-256 of a {args.file_mb} MB file: {seconds:.3f} s")

    shapes = {"cnn": (1, 8, 8), "resnet20": (3, 32, 32), "resnet50": (3, 224, 224)}
    print("\n| model | check s | inputs forwarded | one forward of 1,000 s | check / forward |")
    print("|---|---|---|---|---|")
    for arch in args.models.split(","):
        row = check_costs(arch, shapes[arch])
        print(f"| {arch} | {row['check']:.3f} | {row['items']} | {row['forward_1000']:.3f} | "
              f"{row['check'] / row['forward_1000']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
