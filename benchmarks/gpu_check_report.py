"""The two Python steps of ``gpu_check.sh``: ``probe`` the machine, ``summarize`` the run.

``probe`` (needs PyTorch) checks that the packages the GPU check imports are there, resolves
``--device`` and writes what it found as JSON; it prints the resolved device (``cuda`` or
``cpu``) on stdout and, when the check cannot run here, one line on stderr and exits 1.

``summarize`` needs only the standard library, so a summary is written whatever broke: it reads
the steps ``gpu_check.sh`` recorded (a tab-separated file: name, status, seconds, detail), the
probe's JSON, pytest's JUnit XML and ``gpu_check_bench.py``'s JSON and markdown, and writes
``gpu-check.json`` and ``gpu-check.md``. Exit code 0 when no gating check failed, else 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

FORMAT = "ancer-gpu-check/1"
REQUIRED = ("torch", "torchvision", "numpy", "scipy", "typer", "rich", "pandas", "sklearn")
OPTIONAL = ("pytest", "matplotlib", "hypothesis")  # the check runs without the last two


# ---------------------------------------------------------------------------------------------
# probe


DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def _version(name: str) -> str | None:
    """The installed version of the package imported as ``name``, or None where it is absent
    (found without importing it: the optional ones are slow to import and not needed)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def probe(device: str, quick: bool) -> tuple[dict[str, Any], str | None]:
    """What the machine has, the resolved device, and why the check cannot run (or None)."""
    packages = {name: _version(name) for name in (*REQUIRED, *OPTIONAL)}
    try:  # the one optional package the check runs: it must import, not only be installed
        import pytest  # noqa: F401
    except ImportError:
        packages["pytest"] = None
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
    }
    missing = [name for name in REQUIRED if packages[name] is None]
    if missing:
        names = ", ".join(DISTRIBUTIONS.get(name, name) for name in missing)
        return found, f"missing Python packages: {names}; install them and run the check again"
    import torch

    try:
        import ancer_cli
    except ImportError as error:
        return found, f"cannot import ancer_cli ({error}); run with PYTHONPATH=src"
    found["ancer_cli"] = str(Path(ancer_cli.__file__).resolve().parent)
    found["torch_cuda"] = torch.version.cuda
    found["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        found["cuda_devices"] = [
            {
                "name": torch.cuda.get_device_name(k),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(k))),
                "memory_gib": round(torch.cuda.get_device_properties(k).total_memory / 2**30, 1),
            }
            for k in range(torch.cuda.device_count())
        ]
        found["bf16_supported"] = torch.cuda.is_bf16_supported()
    wanted = device.strip().lower()
    if wanted == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    elif wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            return found, f"--device {device}: no CUDA device is visible to PyTorch here"
        resolved = "cuda"
    elif wanted == "cpu":
        resolved = "cpu"
    else:
        return found, f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:K"
    found["device"] = resolved
    if resolved == "cuda":
        found["gpu"] = torch.cuda.get_device_name(0)
    if resolved == "cpu" and not quick:
        return found, (
            "no CUDA device here: the full GPU check needs one "
            "(--device cpu --quick rehearses its steps on the CPU)"
        )
    return found, None


# ---------------------------------------------------------------------------------------------
# summarize


def read_steps(path: Path) -> list[dict[str, Any]]:
    steps = []
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
            steps.append(
                {
                    "name": name,
                    "status": status,
                    "gating": True,
                    "seconds": float(seconds) if seconds else None,
                    "detail": detail,
                }
            )
    return steps


def read_junit(path: Path) -> dict[str, Any] | None:
    """Each test case's id (``file::name``), outcome, seconds and message."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return None
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (element.get("message") or "").strip().splitlines()[:1]
                message = message[0][:300] if message else ""
                break
        module = (case.get("classname") or "").replace(".", "/")
        tests.append(
            {
                "id": f"{module}.py::{case.get('name')}" if module else str(case.get("name")),
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
                "message": message,
            }
        )
    counts = {key: 0 for key in ("passed", "failed", "error", "skipped")}
    for test in tests:
        counts[test["outcome"]] += 1
    return {"counts": counts, "tests": tests}


def _load_json(path: Path | None) -> Any:
    if path is None or not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def votes_check(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """The benchmark's identical-votes comparison as a check of its own. Informational, not
    gating: on a GPU a forward pass of a different batch size may pick another convolution
    algorithm, so a packed pass can flip a vote whose logits tie to rounding."""
    rows = ((bench or {}).get("gpu") or {}).get("rows") or []
    if not rows:
        return None
    differing = [
        f"{row['name']} {row['option']}: {label}"
        for row in rows
        for label, same in row.get("identical_votes", {}).items()
        if not same
    ]
    detail = (
        f"reference and ancer votes identical in all {len(rows)} model/option pairs"
        if not differing
        else "votes differ: " + "; ".join(differing)
    )
    return {
        "name": "identical-votes",
        "status": "passed" if not differing else "failed",
        "gating": False,
        "seconds": None,
        "detail": detail,
    }


def summarize(args: argparse.Namespace) -> int:
    steps = read_steps(args.steps)
    environment = _load_json(args.env) or {}
    junit = read_junit(args.junit) if args.junit else None
    bench = _load_json(args.bench)
    bench_markdown = (
        args.bench_markdown.read_text()
        if args.bench_markdown and args.bench_markdown.exists()
        else ""
    )
    checks = list(steps)
    votes = votes_check(bench)
    if votes is not None:
        checks.append(votes)
    failed = [c for c in checks if c["gating"] and c["status"] == "failed"]
    if args.final:
        verdict = "failed" if failed else "passed"
    else:
        verdict = "failed" if failed else "running"
    finished = datetime.datetime.now(datetime.timezone.utc)
    started = datetime.datetime.fromtimestamp(args.started, datetime.timezone.utc)
    summary = {
        "format": FORMAT,
        "verdict": verdict,
        "command": args.command,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "seconds": round((finished - started).total_seconds(), 1),
        "options": {
            "device": args.device,
            "resolved_device": environment.get("device"),
            "quick": args.quick,
            "out": str(args.out),
            "budget_seconds": args.budget,
        },
        "environment": environment,
        "checks": checks,
        "cuda_tests": {"files": args.test_files, **(junit or {"counts": None, "tests": []})},
        "targets": ((bench or {}).get("gpu") or {}).get("targets"),
        "benchmark": bench,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "gpu-check.json", json.dumps(summary, indent=2, default=str) + "\n")
    _write(args.out / "gpu-check.md", render_markdown(summary, bench_markdown))
    if args.final:
        if failed:
            names = ", ".join(f"{c['name']} ({c['detail']})" for c in failed)
            print(f"gpu_check: FAILED: {names}; see {args.out / 'gpu-check.md'}", file=sys.stderr)
            return 1
        skipped = [c["name"] for c in checks if c["status"] == "skipped"]
        print(
            f"gpu_check: passed ({len(checks) - len(skipped)} checks passed"
            + (f", skipped: {', '.join(skipped)}" if skipped else "")
            + f"); wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'}"
        )
    return 0


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _machine_line(environment: dict[str, Any]) -> str:
    packages = environment.get("packages") or {}
    parts = []
    devices = environment.get("cuda_devices") or []
    for device in devices:
        parts.append(
            f"{device['name']} (compute capability {device['capability']}, "
            f"{device['memory_gib']} GiB)"
        )
    if devices and environment.get("torch_cuda"):
        parts.append(f"CUDA {environment['torch_cuda']}")
    elif "cuda_available" in environment and not devices:
        parts.append("no CUDA device visible")
    if packages.get("torch"):
        parts.append(f"torch {packages['torch']}")
    if environment.get("python"):
        parts.append(f"Python {environment['python']}")
    if environment.get("cpu_count"):
        parts.append(f"{environment['cpu_count']} CPUs")
    return ", ".join(parts) or "unknown (the probe did not run)"


def render_markdown(summary: dict[str, Any], bench_markdown: str) -> str:
    environment = summary["environment"]
    options = summary["options"]
    rehearsal = options.get("resolved_device") == "cpu"
    title = summary["verdict"].upper() + (" (CPU rehearsal)" if rehearsal else "")
    lines = [
        f"# ancer GPU check: {title}",
        "",
        f"`{summary['command']}`, started {summary['started']}, {summary['seconds']:.0f} s",
        "",
        f"Machine: {_machine_line(environment)}.",
    ]
    packages = environment.get("packages") or {}
    if packages:
        present = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
        absent = [name for name, version in packages.items() if not version]
        lines.append(f"Packages: {present}" + (f"; absent: {', '.join(absent)}" if absent else ""))
    lines += ["", "## Checks", "", "| check | status | seconds | detail |", "|---|---|---|---|"]
    for check in summary["checks"]:
        status = check["status"] + ("" if check["gating"] else " (informational)")
        seconds = "-" if check["seconds"] is None else f"{check['seconds']:.1f}"
        lines.append(f"| {check['name']} | {status} | {seconds} | {check['detail']} |")
    tests = summary["cuda_tests"]
    if tests.get("counts"):
        counts = tests["counts"]
        lines += [
            "",
            "## CUDA tests",
            "",
            ", ".join(f"{value} {key}" for key, value in counts.items() if value)
            + f" (pytest -m cuda on {', '.join(tests['files'])})",
            "",
        ]
        ran = [t for t in tests["tests"] if t["outcome"] != "skipped"]
        if ran:
            lines += ["| test | outcome | seconds |", "|---|---|---|"]
            for test in tests["tests"]:
                outcome = test["outcome"] + (f": {test['message']}" if test["message"] else "")
                lines.append(f"| `{test['id']}` | {outcome} | {test['seconds']:.2f} |")
        else:
            reasons = sorted({t["message"] for t in tests["tests"]})
            lines.append(f"All skipped: {'; '.join(reasons)}.")
    targets = summary.get("targets")
    if targets:
        lines += [
            "",
            "## Targets (measured figures, never pass/fail gates of this check)",
            "",
            "| target | measured | met |",
            "|---|---|---|",
        ]
        for target in targets:
            value = target["value"]
            figure = "-" if value is None else f"{value:.4g}{target.get('unit', '')}"
            if target.get("option"):
                figure += f" ({target['option']}, N = {target['N']:,})"
            met = {True: "yes", False: "no", None: "not evaluated"}[target["met"]]
            lines.append(f"| {target['target']} | {figure} | {met} |")
        if rehearsal:
            lines += ["", "Not evaluated on the CPU at quick sizes, where they mean nothing."]
    if bench_markdown:
        lines += ["", bench_markdown.rstrip()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command_name", required=True)
    p = commands.add_parser("probe", help="check the machine and resolve --device")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, required=True)
    s = commands.add_parser("summarize", help="write gpu-check.json and gpu-check.md")
    s.add_argument("--steps", type=Path, required=True)
    s.add_argument("--env", type=Path, required=True)
    s.add_argument("--junit", type=Path, default=None)
    s.add_argument("--bench", type=Path, default=None)
    s.add_argument("--bench-markdown", type=Path, default=None)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    s.add_argument("--device", default="auto")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--budget", type=float, default=None)
    s.add_argument("--started", type=float, required=True, help="Unix time the check started")
    s.add_argument("--test-files", nargs="*", default=[])
    s.add_argument("--final", action="store_true", help="the last call: verdict and exit code")
    args = parser.parse_args(argv)
    if args.command_name == "probe":
        found, problem = probe(args.device, args.quick)
        args.json.write_text(json.dumps(found, indent=2, default=str) + "\n")
        if problem is not None:
            print(f"gpu_check: {problem}", file=sys.stderr)
            return 1
        print(found["device"])
        return 0
    return summarize(args)


if __name__ == "__main__":
    sys.exit(main())
