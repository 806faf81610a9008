"""The README's library example runs as written.

The example is the ``python`` code block that follows the ``<!-- library-example -->`` marker in
README.md; it must be there, and it must run without error on the CPU in a few seconds. It runs in
a fresh interpreter, as a user would run it, so that nothing the test session imported before
changes what it sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- library-example -->"
BLOCK = re.compile(rf"{re.escape(MARKER)}\s*\n```python\n(.*?)\n```", re.DOTALL)


def library_examples() -> list[str]:
    """The code of every ``python`` block placed right after the library-example marker."""
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_a_library_example() -> None:
    assert library_examples(), f"README.md has no ```python block right after {MARKER}"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(library_examples())))
def test_library_example_runs(index: int, tmp_path: Path) -> None:
    code = library_examples()[index]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=environment,
    )
    assert result.returncode == 0, f"README library example {index} failed:\n{result.stderr}"
    assert result.stdout.strip(), "the example prints its results"
