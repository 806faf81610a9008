"""Benchmark: certified against empirical robust accuracy, and what the attack costs.

For a results file (by default: the model certified at fixed sigma on the first digits test
inputs), ``ancer attack`` runs the SmoothAdv attack in the certificates' own norm at eps 0.25,
0.5, 0.75 and 1.0 and in l-infinity at eps 1/16 and 2/16 (one and two steps of the digits' grid),
and the same eps with ``--random`` perturbations of the same norm (the baseline the attack must
beat). For each threat and eps it prints the certified accuracy (``radius``, or ``radius_linf``
for l-infinity: ``ancer accuracy --attack``), the empirical accuracy under the attack and under
random perturbations, the gap, and the attack's cost per input and eps: forward-equivalents (the
attack's gradient steps and evaluations, and PREDICT's samples) and seconds. Files go to ``--out``.

    python benchmarks/attack.py --quick                                        # seconds (CI)
    python benchmarks/attack.py --results runs/demo/fixed.csv --out runs/attack
    python benchmarks/attack.py --model runs/demo/model.pt --inputs 100 --N 10000 --out runs/attack
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

import torch

from ancer_cli.analysis.attacks import compare_attack
from ancer_cli.core.attack_settings import AttackConfig
from ancer_cli.results import read_attack_results, read_results_record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commands import ancer  # noqa: E402  (the sibling module)

ROOT = Path(__file__).resolve().parent.parent
OWN_EPS = (0.25, 0.5, 0.75, 1.0)
"""eps of the attack in the certificates' own norm (l2, or l1 for an l1 run)"""
LINF_EPS = (Fraction(1, 16), Fraction(2, 16))
"""eps of the l-infinity attack: one and two steps of the digits' 1/16 grid"""


def cost(path: Path) -> dict[float, tuple[float, float]]:
    """Forward-equivalents and seconds per input of each eps of an attack file."""
    arguments = json.loads(Path(f"{path}.json").read_text())["arguments"]
    rows = read_attack_results(path)
    settings = arguments.get("attack")
    attack = 0 if settings is None else AttackConfig(**settings).forward_equivalents
    return {
        float(eps): (
            (attack if eps > 0 else 0) + arguments["N"],
            float(rows[rows["eps"] == eps]["time"].mean()),
        )
        for eps in sorted(set(rows["eps"]))
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--results", type=Path, help="a certify results file (default: certify)")
    parser.add_argument("--model", type=Path, help="the model to certify (default: train one)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--inputs", type=int, default=100, help="inputs certified (no --results)")
    parser.add_argument("--N", type=int, default=10_000, help="PREDICT's (and certify's) N")
    parser.add_argument("--steps", type=int, default=AttackConfig.steps)
    parser.add_argument("--samples", type=int, default=AttackConfig.samples)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "attack")
    parser.add_argument("--keep", action="store_true", help="keep finished attack files in --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.N, args.steps, args.samples = min(args.inputs, 4), 200, 2, 4
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run = ("--device", args.device, "--batch-size", args.batch_size)
    results = args.results
    if results is None:
        model = args.model
        if model is None:
            model = out / "model.pt"
            if not model.exists():
                ancer("train", "--epochs", 1 if args.quick else 20, "--device", args.device,
                      "--out", model)  # fmt: skip
        results = out / "fixed.csv"
        ancer("certify", "--model", model, "--sigma", args.sigma, "--max", args.inputs,
              "--N", args.N, "--seed", 0, "--out", results, "--force", *run)  # fmt: skip
    norm = ((read_results_record(results) or {}).get("arguments") or {}).get("norm") or "l2"
    attack = ("--steps", args.steps, "--samples", args.samples, "--N", args.N, "--seed", 0)
    table = []
    for threat, eps in ((norm, OWN_EPS), ("linf", LINF_EPS)):
        files = {}
        for perturbation in ("smoothadv", "random"):
            path = out / f"attack-{threat}-{perturbation}.csv"
            record = read_results_record(path) if args.keep and path.exists() else None
            if record is not None and record.get("complete") is True:
                print(f"keeping {path}", file=sys.stderr)
                files[perturbation] = path
                continue
            ancer("attack", results, "--threat", threat, *(w for e in eps for w in ("--eps", e)),
                  *(("--random",) if perturbation == "random" else ()), *attack, *run,
                  "--out", path, "--force")  # fmt: skip
            files[perturbation] = path
        attacked = compare_attack(results, files["smoothadv"])
        randomly = compare_attack(results, files["random"])
        spent = cost(files["smoothadv"])
        for e in attacked.eps:
            table.append(
                (threat, e, attacked.certified[e], attacked.empirical[e], randomly.empirical[e],
                 attacked.gap[e], *spent[e])
            )  # fmt: skip
    print(f"results {results}: {attacked.inputs} inputs; attack: {args.steps} steps, "
          f"{args.samples} draws, PREDICT N={args.N}")  # fmt: skip
    header = ["threat", "eps", "certified", "empirical (attack)", "empirical (random)", "gap",
              "fwd-eq/input", "s/input"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for threat, e, certified, empirical, random, gap, forward, seconds in table:
        name = str(Fraction(e).limit_denominator(255)) if threat == "linf" else f"{e:g}"
        cells = [threat, name, f"{certified:.3f}", f"{empirical:.3f}", f"{random:.3f}",
                 f"{gap:.3f}", f"{forward:,.0f}", f"{seconds:.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
