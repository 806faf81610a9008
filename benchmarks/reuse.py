"""Benchmark: ``certify --reuse`` (incremental smoothing) against certifying a changed model afresh.

On digits, the original CNN is certified once (fixed sigma, and ANCER thetas with the memory
pass); then four changed versions of it are certified twice each, side by side: from the earlier
run (``--reuse``) and from scratch (plain ``certify`` with the same seed, N0, N and alpha):

* ``bf16``: the same file under ``--precision bf16``;
* ``int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers (a TorchScript file);
* ``pruned``: 30% of the conv and linear weights zeroed by global magnitude
  (``torch.nn.utils.prune``);
* ``finetuned``: one more epoch of training under noise (SGD, lr 0.01).

Each reuse run takes a rule: ``--tolerances`` (``--reuse-tolerance``) and, with
``--radii-rule``, ``--reuse-radius`` at the reported radii 0.25, 0.5 and 0.75 instead.
Reported per variant, noise and rule: noisy inputs evaluated per input (forward samples: a regenerated
draw counts twice, both models see it), seconds per input, certified accuracy at radius 0, 0.25,
0.5, 0.75 and the average certified radius (ACR), reuse and from scratch; and how many rows each
route took. Files go to ``--out``. ``--no-scratch`` skips the runs from scratch (the costly part:
``N0 + N`` samples per input each) and compares with the original model's run instead.

    python benchmarks/reuse.py --quick                       # seconds (CI runs it)
    python benchmarks/reuse.py --model runs/demo/model.pt --inputs 200 --N 100000 --out runs/reuse
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from ancer_cli.core.choices import REUSE_TOLERANCE as DEFAULT_TOLERANCE
from ancer_cli.core.noise import input_generator
from ancer_cli.data import load_dataset
from ancer_cli.models import load_model
from ancer_cli.results import read_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commands import ancer, extendable, finished  # noqa: E402  (the sibling module)

ROOT = Path(__file__).resolve().parent.parent
RADII = (0.0, 0.25, 0.5, 0.75)
VARIANTS = ("bf16", "int8", "pruned", "finetuned")


def _save_script(module: nn.Module, path: Path) -> Path:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.rand(4, 1, 8, 8))
        torch.jit.save(traced, str(path))
    return path


def _finetune(module: nn.Module, sigma: float, seed: int = 0) -> nn.Module:
    """One epoch of cross-entropy on noisy digits training images."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    data = load_dataset("digits", "train", None).dataset
    xs = torch.stack([data[i][0] for i in range(len(data))])  # type: ignore[arg-type]
    ys = torch.tensor([int(data[i][1]) for i in range(len(data))])  # type: ignore[arg-type]
    generator = input_generator(seed, 0, "cpu")
    order = torch.randperm(len(xs), generator=generator)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    module.train()
    for start in range(0, len(xs), 64):
        batch = order[start : start + 64]
        noisy = xs[batch] + sigma * torch.randn(xs[batch].shape, generator=generator)
        loss = nn.functional.cross_entropy(module(noisy), ys[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def make_variants(
    model: Path, out: Path, sigma: float, keep: bool = False
) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """The changed models: file and extra certify options for each variant. With ``keep`` a
    variant file already in ``out`` is used as it is (TorchScript files differ byte for byte
    each time they are saved, and certify ties its results to the model file's hash)."""

    def fresh() -> nn.Module:
        return load_model(model, torch.device("cpu")).module

    def int8() -> nn.Module:
        return torch.ao.quantization.quantize_dynamic(fresh(), {nn.Linear}, dtype=torch.qint8)

    def pruned() -> nn.Module:
        module = fresh()
        weights = [(m, "weight") for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=0.3)
        for layer, name in weights:
            prune.remove(layer, name)
        return module

    def saved(name: str, build: Callable[[], nn.Module]) -> Path:
        path = out / f"{name}.pt"
        return path if keep and path.exists() else _save_script(build(), path)

    return {
        "bf16": (model, ("--precision", "bf16")),
        "int8": (saved("int8", int8), ()),
        "pruned": (saved("pruned", pruned), ()),
        "finetuned": (saved("finetuned", lambda: _finetune(fresh(), sigma)), ()),
    }


def measure(path: Path) -> dict[str, float]:
    """Certified accuracy at :data:`RADII`, ACR, samples and seconds per input of one file."""
    frame = read_results(path)
    record = json.loads(Path(str(path) + ".json").read_text())
    n = len(frame)
    samples = (
        float(frame["samples"].mean())
        if "samples" in frame.columns
        else record["arguments"]["N0"] + record["arguments"]["N"]
    )
    row = {
        f"{r:g}": float(((frame["radius"] >= r) & (frame["correct"] == 1)).mean()) for r in RADII
    }
    row["acr"] = float((frame["radius"] * frame["correct"]).mean())
    row["samples"] = samples
    # an extended run (--resume with a larger --max) timed only the rows it added
    row["seconds"] = record["totals"]["seconds_this_run"] / max(
        n - record["totals"].get("resumed_rows", 0), 1
    )
    routes = record["totals"].get("routes")
    row["routes"] = (
        "/".join(str(routes[k]) for k in ("reuse", "scratch", "abstain")) if routes else ""
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--model", type=Path, help="the original model (default: train one)")
    parser.add_argument("--thetas", type=Path, help="its ANCER thetas (default: optimize)")
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--N", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reuse")
    parser.add_argument(
        "--noises", nargs="+", choices=("fixed", "ancer"), default=["fixed", "ancer"]
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--tolerances", type=float, nargs="+", default=[DEFAULT_TOLERANCE],
        help="--reuse-tolerance values to run (each its own reuse file)",
    )  # fmt: skip
    parser.add_argument(
        "--radii-rule",
        action="store_true",
        help="also run --reuse-radius at each reported radius above 0, with no tolerance",
    )
    parser.add_argument(
        "--no-scratch",
        dest="scratch",
        action="store_false",
        help="skip the runs from scratch (N0 + N samples per input each): compare with the "
        "original model's run instead",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep finished result files of an earlier call in --out (extend those with fewer inputs)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.N, args.batch_size = min(args.inputs, 4), 5000, 500
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = out / "model.pt"
        if not model.exists():
            ancer("train", "--epochs", 1 if args.quick else 20, "--device", "cpu", "--out", model)
    thetas = args.thetas
    if thetas is None:
        thetas = out / "thetas"
        if not (thetas / "manifest.json").exists():
            small = ("--objective", "reference", "--iso-iterations", 5, "--iterations", 5,
                     "--samples", 8, "--iso-samples", 8) if args.quick else ()  # fmt: skip
            ancer("optimize", "--model", model, "--out", thetas, "--max", args.inputs,
                   "--device", "cpu", "--force", *small)  # fmt: skip
    variants = make_variants(model, out, args.sigma, keep=args.keep)
    # from scratch, a variant is certified with the original's thetas: a folder without the
    # manifest (which ties them to the original model's hash), as original ANCER folders are
    plain = out / "thetas-plain"
    plain.mkdir(exist_ok=True)
    for theta_file in thetas.glob("theta_*.pt"):
        (plain / theta_file.name).write_bytes(theta_file.read_bytes())
    sampling = ("--N", args.N, "--batch-size", args.batch_size, "--device", "cpu")
    noises = {
        "fixed": ("--model", model, "--sigma", args.sigma, "--max", args.inputs),
        "ancer": ("--thetas", thetas, "--max", args.inputs),
    }
    rows = []

    def certify(target: Path, *words: object, extend: bool = True) -> None:
        if args.keep and finished(target, args.inputs, args.N):
            print(f"keeping {target}", file=sys.stderr, flush=True)
            return
        mode = "--force"
        if args.keep and extend and extendable(target, args.inputs, args.N):
            print(f"extending {target} to {args.inputs} inputs", file=sys.stderr, flush=True)
            mode = "--resume"
        ancer("certify", *words, mode, "--out", target)

    for noise in args.noises:
        source = noises[noise]
        earlier = out / f"{noise}-original.csv"
        certify(earlier, *source, "--seed", 0, *sampling)
        for name in args.variants:
            path, extra = variants[name]
            scratch = out / f"{noise}-{name}.csv"
            # the variant as the model (a TorchScript file does not record its dataset)
            scratch_source = ("--model", path, "--dataset", "digits", "--norm", "l2")
            scratch_source += source[2:] if noise == "fixed" else ("--thetas", plain, *source[2:])
            if args.scratch:
                certify(scratch, *scratch_source, *extra, "--seed", 1, *sampling)
            rules = [(f"{t:g}", ("--reuse-tolerance", t)) for t in args.tolerances]
            if args.radii_rule:
                rules.append(("radii", tuple(w for r in RADII[1:] for w in ("--reuse-radius", r))))
            for label, rule in rules:
                suffix = "" if label == f"{DEFAULT_TOLERANCE:g}" else f"-{label}"
                reused = out / f"{noise}-{name}-reuse{suffix}.csv"
                # with the memory pass, more inputs may change the earlier rows: start over
                certify(reused, "--reuse", earlier, "--model", path, *extra, "--seed", 1,
                        *rule, *sampling[4:], extend=noise == "fixed")  # fmt: skip
                compared = measure(scratch if args.scratch else earlier)
                rows.append((noise, name, label, measure(reused), compared))
                print(f"{noise} {name} {label}: {rows[-1][3:]}", file=sys.stderr)
    other = "scratch" if args.scratch else "original"
    header = ["noise", "variant", "rule", "routes r/s/a", "samples reuse", f"samples {other}",
              "s/input reuse", f"s/input {other}"]  # fmt: skip
    header += [f"acc@{r:g} reuse/{other}" for r in RADII] + [f"ACR reuse/{other}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for noise, name, tolerance, reuse, scratch in rows:
        cells = [noise, name, tolerance, reuse["routes"], f"{reuse['samples']:.0f}",
                 f"{scratch['samples']:.0f}", f"{reuse['seconds']:.3f}",
                 f"{scratch['seconds']:.3f}"]  # fmt: skip
        cells += [f"{reuse[f'{r:g}']:.3f}/{scratch[f'{r:g}']:.3f}" for r in RADII]
        cells.append(f"{reuse['acr']:.4f}/{scratch['acr']:.4f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
