"""What a newcomer meets first: ``ancer --help``, ``ancer COMMAND -h``, and the message for the
usual first mistake, a results table given as ``--model``."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner, Result

from ancer_cli.cli import app
from tests.helpers import RESULT_HEADER, assert_domain_error, invoke

COMMANDS = [
    "train", "optimize", "certify", "recertify", "predict", "attack", "audit", "accuracy", "show",
    "verify",
]  # fmt: skip


def wide_help(*args: str, columns: int = 200) -> Result:
    """``ancer ARGS...`` on a terminal ``columns`` wide (200: no line needs to wrap)."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result


def panel_rows(text: str, title: str) -> list[str]:
    """The rows of the help panel called ``title``, frame stripped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"╭─ {title} "))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        rows.append(line.strip("│ ").strip())
    return rows


def test_every_command_is_listed() -> None:
    group = get_command(app)
    assert sorted(group.commands) == sorted(COMMANDS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("columns", [200, 80])
def test_each_command_is_one_complete_sentence_on_one_line(columns: int) -> None:
    rows = panel_rows(wide_help("--help", columns=columns).stdout, "Commands")
    assert [row.split()[0] for row in rows] == COMMANDS  # no continuation lines, even at 80
    group = get_command(app)
    for row in rows:
        name, summary = row.split(maxsplit=1)
        assert summary[0].isupper() and summary.endswith("."), row
        docstring = inspect.cleandoc(group.commands[name].help or "")  # type: ignore[attr-defined]
        assert docstring.splitlines()[0] == summary, f"{name}: summary is not the first line"


@pytest.mark.parametrize("args", [[], *([command] for command in COMMANDS)])
def test_help_shows_no_type_beside_flags(args: list[str]) -> None:
    text = wide_help(*args, "-h").stdout
    assert "<bool>" not in text
    help_row = next(row for row in panel_rows(text, "Options") if row.startswith("--help"))
    assert help_row.split() == ["--help", "-h", "Show", "this", "message", "and", "exit."]
    if args and args != ["verify"]:  # every command that writes has --force; its row is the
        # flag and its help, nothing between
        force_row = next(row for row in panel_rows(text, "Output") if "--force" in row)
        assert force_row.split()[:2] == ["--force", "Overwrite"]


@pytest.mark.parametrize("command", ["certify", "predict", "optimize"])
def test_results_table_as_model_says_what_it_is(tmp_path: Path, command: str) -> None:
    results = tmp_path / "results.tsv"
    results.write_text(RESULT_HEADER + "\n0\t7\t7\t0.5\t0.5\t1\t0.25\t0.01\t0.0625\n")
    out = tmp_path / "out"
    noise = ("--sigma", 0.25) if command != "optimize" else ()
    result = invoke(command, "--model", results, *noise, "--dataset", "digits", "--out", out)
    line = assert_domain_error(
        result, f"{results} is a text file (it looks like a results table", "not a model"
    )
    assert "checkpoint written by ancer train" in line and "run code" not in line


def test_train_help_shows_every_option_name_whole_at_80_columns() -> None:
    # train has many options, its methods' grouped in panels of their own: none may be cut.
    text = wide_help("train", "--help", columns=80).stdout
    command = get_command(app).commands["train"]  # type: ignore[attr-defined]
    names = [name for param in command.params for name in param.opts if name.startswith("--")]
    assert "--smoothadv-warmup" in names and "--consistency-weight" in names
    tokens = {token for line in text.splitlines() for token in line.strip("│ ").split()}
    assert [name for name in names if name not in tokens] == []
    for panel in ("Consistency", "MACER", "SmoothAdv"):
        assert any(line.startswith(f"╭─ {panel} (--training ") for line in text.splitlines())


def test_first_mistakes_get_one_line_that_says_what_to_do(model_path: Path, tmp_path: Path):
    """A denoiser given as --model, a folder as --out, --max 0, and a noise level above the
    denoiser's trained range: each answered in one line that names the fix."""
    from tests.cli.test_denoised import save_random_denoiser

    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    result = invoke("certify", "--model", denoiser, "--sigma", 0.25, "--out", tmp_path / "r.csv")
    assert_domain_error(result, "is a denoiser", "pass it as --denoiser")
    folder = tmp_path / "results"
    folder.mkdir()
    for extra in ((), ("--force",)):
        result = invoke("certify", "--model", model_path, "--sigma", 0.25, "--max", 2,
                        "--device", "cpu", "--out", folder, *extra)  # fmt: skip
        assert_domain_error(result, "is a folder; give the file to write", "results.csv")
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("results.*"))
    result = invoke("certify", "--model", model_path, "--sigma", 0.25, "--max", 0)
    assert result.exit_code == 2 and "--max must be >= 1" in result.stderr
    result = invoke("certify", "--model", model_path, "--sigma", 1.5, "--denoiser", denoiser,
                    "--max", 1, "--N0", 10, "--N", 20, "--device", "cpu",
                    "--out", tmp_path / "high.csv")  # fmt: skip
    assert result.exit_code == 0
    assert "caution: noise level 1.5 exceeds the largest the denoiser" in result.stderr


def test_help_version_and_usage_errors_never_import_torch() -> None:
    """``ancer --help``, every ``ancer CMD --help``, ``--version`` and a usage error run in a
    fresh interpreter without PyTorch (or numpy) imported: what keeps them under half a second."""
    script = (
        "import sys\n"
        "from ancer_cli.cli import app\n"
        f"calls = [['--help'], ['--version'], ['certify', '--max', '0'], "
        f"*([name, '--help'] for name in {COMMANDS!r})]\n"
        "for words in calls:\n"
        "    try:\n"
        "        app(words, prog_name='ancer')\n"
        "    except SystemExit as done:\n"
        "        assert done.code == (2 if '--max' in words else 0), (words, done.code)\n"
        "heavy = sorted(name for name in ('torch', 'numpy') if name in sys.modules)\n"
        "print('imported:', heavy, file=sys.stderr)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported: []" in done.stderr
