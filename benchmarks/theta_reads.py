"""How often one certify run reads each theta file (the memory pass included).

    python benchmarks/theta_reads.py MODEL THETAS [--N 1000]

Certifies every input that has a theta with the memory pass, counting the ``torch.load`` calls
on ``theta_*.pt`` files, and prints reads per input (1.00: each file is read once per run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from ancer_cli.cli import app

reads: dict[str, int] = {}
_load = torch.load


def _counting_load(source: Any, *args: Any, **kwargs: Any) -> Any:
    name = Path(str(source)).name if isinstance(source, (str, Path)) else ""
    if name.startswith("theta_"):
        reads[name] = reads.get(name, 0) + 1
    return _load(source, *args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("thetas", type=Path)
    parser.add_argument("--N", type=int, default=1000, help="estimation samples per input")
    args = parser.parse_args(argv)
    torch.load = _counting_load  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as folder:
        result = CliRunner().invoke(
            app,
            ["certify", "--thetas", str(args.thetas), "--model", str(args.model), "--N0", "100",
             "--N", str(args.N), "--memory", "--out", f"{folder}/r.csv", "--device", "cpu"],
        )  # fmt: skip
    if result.exit_code != 0:
        print(result.output, file=sys.stderr)
        return result.exit_code
    total = sum(reads.values())
    print(
        f"{total} theta file reads for {len(reads)} files: {total / max(len(reads), 1):.2f} per input"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
