"""Kill certify and optimize with SIGKILL at several moments; --resume must give exactly the
output of an uninterrupted run (rows ignoring the time column, theta files byte for byte).
Only the killed runs need a process of their own: the references, the resumed runs and the
other runs here go through CliRunner in the test process (one thread, as the killed ones)."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import assert_domain_error, invoke, ok

ANCER = [sys.executable, "-m", "ancer_cli"]
CERTIFY = (
    *("--N0", "20", "--N", "3000", "--batch-size", "500", "--max", "14", "--seed", "0"),
    *("--device", "cpu"),
)
OPTIMIZE = (
    "--max",
    "9",
    "--batch-size",
    "3",
    "--iso-samples",
    "128",
    "--iterations",
    "15",
    "--samples",
    "16",
    "--guard-samples",
    "128",
    "--device",
    "cpu",
)


def _rows(path: Path) -> list[list[str]]:
    """Every field but ``time`` (the 8th), including the sequential columns after it."""
    return [
        [f for i, f in enumerate(line.split("\t")) if i != 7]
        for line in path.read_text().splitlines()
    ]


def _kill_when(args: list[str], ready, deadline: float = 120.0) -> None:
    """Start the command and SIGKILL it as soon as ``ready()`` holds (or it ends by itself)."""
    process = subprocess.Popen(
        [*ANCER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    began = time.monotonic()
    try:
        while process.poll() is None and time.monotonic() - began < deadline:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except (FileNotFoundError, UnicodeDecodeError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--radius", "0.5"), ("--sequential",)], ids=str)
def test_certify_killed_at_random_moments_resumes_exactly(
    model_path: Path, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    reference = tmp_path / "reference.csv"
    ok("certify", "--model", model_path, "--sigma", "0.25", "--out", reference, *CERTIFY, *mode)
    expected = _rows(reference)
    rng = random.Random(1)
    for trial, rows_before_kill in enumerate(rng.sample(range(1, 14), 3)):
        out = tmp_path / f"killed{trial}.csv"
        args = [
            "certify",
            "--model",
            str(model_path),
            "--sigma",
            "0.25",
            "--out",
            str(out),
            *CERTIFY,
            *mode,
        ]
        _kill_when(args, lambda out=out, k=rows_before_kill: _lines(out) >= k + 1)
        assert out.exists()
        ok(*args, "--resume")
        assert _rows(out) == expected, f"trial {trial}: killed after {rows_before_kill} rows"
        assert '"complete": true' in (tmp_path / f"killed{trial}.csv.json").read_text()


@pytest.mark.slow
def test_certify_killed_mid_line_keeps_no_half_row(model_path: Path, tmp_path: Path) -> None:
    """A file cut in mid-write, as a kill leaves it (in-process: nothing is killed here)."""
    reference = tmp_path / "reference.csv"
    args = ["certify", "--model", str(model_path), "--sigma", "0.25", *CERTIFY]
    ok(*args, "--out", reference)
    out = tmp_path / "cut.csv"
    ok(*args, "--out", out)
    text = out.read_text()
    out.write_text(text[: text.index("\n", len(text) // 2) - 5])  # a crash in mid-write
    sidecar = Path(str(out) + ".json")
    sidecar.write_text(sidecar.read_text().replace('"complete": true', '"complete": false'))
    ok(*args, "--out", out, "--resume")
    assert _rows(out) == _rows(reference)


@pytest.mark.slow
def test_optimize_killed_at_random_moments_resumes_exactly(
    model_path: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    ok("optimize", "--model", model_path, "--out", reference, *OPTIMIZE)
    names = sorted(p.relative_to(reference) for p in reference.rglob("theta_*.pt"))
    assert len(names) == 18
    rng = random.Random(2)
    for trial, files_before_kill in enumerate(rng.sample(range(1, 17), 3)):
        out = tmp_path / f"killed{trial}"
        args = ["optimize", "--model", str(model_path), "--out", str(out), *OPTIMIZE]
        _kill_when(
            args, lambda out=out, k=files_before_kill: len(list(out.rglob("theta_*.pt"))) >= k
        )
        ok(*args, "--resume")
        assert sorted(p.relative_to(out) for p in out.rglob("theta_*.pt")) == names
        for name in names:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (trial, name)
        assert not list(out.rglob("*.tmp")), "temporaries of killed writes are cleaned up"
        for manifest in (out / "manifest.json", out / "isotropic" / "manifest.json"):
            assert '"complete": true' in manifest.read_text()


@pytest.mark.slow
def test_resume_refuses_other_arguments(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    args = ["certify", "--model", str(model_path), "--sigma", "0.25", "--out", str(out), *CERTIFY]
    ok(*args)
    other = invoke(
        "certify", "--model", model_path, "--sigma", "0.5", "--out", out, *CERTIFY, "--resume"
    )
    assert_domain_error(other, "sigma")  # exit code 1, one error line, no traceback
    assert_domain_error(invoke(*args, "--seed", "3", "--resume"), "seed")
