"""``ancer accuracy`` end to end through Typer's CliRunner.

Expected numbers come from an independent computation with the ``csv`` module.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner, Result

from ancer_cli.cli import app

COHEN = Path("/work/shared/reference/cohen2019")
CIFAR_025 = COHEN / "cifar10_resnet110_noise_0.25_sigma_0.25.tsv"
CIFAR_050 = COHEN / "cifar10_resnet110_noise_0.50_sigma_0.50.tsv"
IMAGENET_050 = COHEN / "imagenet_resnet50_noise_0.50_sigma_0.50.tsv"

needs_cohen = pytest.mark.skipif(not CIFAR_025.exists(), reason="Cohen et al.'s files absent")

ANCER_FILE = (
    "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
    "0\t3\t3\t0.412\t0.953\t1\t0.25\t0:00:02.512345\n"
    "1\t8\t8\t0.81\t1.44\t1\t0.31\t0:00:02.401000\n"
    "2\t8\t1\t0.6\t0.7\t0\t0.2\t0:00:02.450000\n"
    "3\t0\t-1\t0.0\t0.0\t0\t0.25\t0:00:02.600000\n"
)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["accuracy", *map(str, args)])


def independent(path: Path, radii: tuple[float, ...], column: str = "radius") -> dict[str, object]:
    """Certified accuracy, ACR, clean accuracy, abstention and count with the csv module."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    n = len(rows)
    good = [float(row[column]) for row in rows if row["correct"] == "1"]
    return {
        "inputs": n,
        "certified_accuracy": {repr(r): sum(v >= r for v in good) / n for r in radii},
        "average_certified_radius": sum(good) / n,
        "clean_accuracy": len(good) / n,
        "abstention_rate": sum(row["predict"] == "-1" for row in rows) / n,
    }


@pytest.fixture
def ancer_file(tmp_path: Path) -> Path:
    path = tmp_path / "ancer" / "certification.tsv"
    path.parent.mkdir()
    path.write_text(ANCER_FILE)
    return path


def assert_one_error_line(result: Result, *fragments: str) -> None:
    """Exit code 1 through a clean exit (an uncaught exception also gives 1 in CliRunner)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------
# outputs


@needs_cohen
def test_json_matches_independent_computation() -> None:
    radii = (0.0, 0.25, 0.5, 0.75, 1.0)
    args = [CIFAR_025, IMAGENET_050, "--format", "json"] + [f"--radius={r}" for r in radii]
    result = run(*args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["metric"] == "radius" and payload["radii"] == list(radii)
    for path in (CIFAR_025, IMAGENET_050):
        entry = payload["files"][path.name]
        expected = independent(path, radii)
        assert entry["path"] == str(path)
        assert entry["inputs"] == expected["inputs"]
        assert entry["certified_accuracy"] == expected["certified_accuracy"]
        assert entry["clean_accuracy"] == expected["clean_accuracy"]
        assert entry["abstention_rate"] == expected["abstention_rate"]
        assert entry["average_certified_radius"] == pytest.approx(
            expected["average_certified_radius"], rel=1e-12
        )
        assert entry["median_time_seconds"] > 0
    cifar = payload["files"][CIFAR_025.name]["certified_accuracy"]
    assert [cifar[k] for k in ("0.25", "0.5", "0.75", "1.0")] == [0.6, 0.428, 0.266, 0.0]


@needs_cohen
def test_default_table() -> None:
    result = run(CIFAR_025)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for fragment in (
        "certified accuracy at 0.25",
        "0.600",
        "0.428",
        "0.266",
        "certified accuracy at 3",
        "average certified radius",
        "0.429",
        "clean accuracy",
        "0.748",
        "abstention rate",
        "0.086",
        "inputs",
        "500",
        "median time per input (s)",
        "16.90",
    ):
        assert fragment in text
    assert result.stderr == ""


@needs_cohen
def test_markdown_side_by_side_with_labels() -> None:
    result = run(CIFAR_025, CIFAR_050, "--label", "s25", "--label", "s50", "-r", "0.5", "-r", "1")
    assert result.exit_code == 0, result.output
    result = run(
        CIFAR_025, CIFAR_050, "--label", "s25", "--label", "s50", "-r", "1", "-r", "0.5",
        "--format", "markdown",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| metric: radius | s25 | s50 |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert lines[2] == "| certified accuracy at 0.5 | **0.428** | 0.414 |"
    assert lines[3] == "| certified accuracy at 1 | 0.000 | **0.234** |"
    assert "| inputs | 500 | 500 |" in lines


@needs_cohen
def test_markdown_single_file_has_no_bold() -> None:
    result = run(CIFAR_025, "--format", "markdown")
    assert result.exit_code == 0
    assert "**" not in result.stdout
    assert "| certified accuracy at 0.25 | 0.600 |" in result.stdout


@needs_cohen
def test_csv() -> None:
    result = run(CIFAR_025, CIFAR_050, "--format", "csv", "-r", "0.25", "-r", "0.75")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["quantity", CIFAR_025.name, CIFAR_050.name]
    table = {row[0]: row[1:] for row in rows[1:]}
    for index, path in enumerate((CIFAR_025, CIFAR_050)):
        expected = independent(path, (0.25, 0.75))
        for radius in ("0.25", "0.75"):
            got = float(table[f"certified accuracy at {radius}"][index])
            assert got == expected["certified_accuracy"][radius]
        assert int(table["inputs"][index]) == 500
        assert float(table["abstention rate"][index]) == expected["abstention_rate"]
    assert float(table["certified accuracy at 0.25"][0]) == 0.6


def test_duplicate_file_names_get_parent_folders(tmp_path: Path) -> None:
    for folder in ("run1", "run2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.tsv").write_text(ANCER_FILE)
    result = run(tmp_path / "run1/results.tsv", tmp_path / "run2/results.tsv", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "quantity,run1/results.tsv,run2/results.tsv"


def test_proxy_metric_on_ancer_file(ancer_file: Path) -> None:
    result = run(ancer_file, "--metric", "proxy", "--format", "json", "-r", "0.9", "-r", "1.0")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["files"]["certification.tsv"]
    expected = independent(ancer_file, (0.9, 1.0), column="radius_proxy")
    assert entry["certified_accuracy"] == {"0.9": 0.5, "1.0": 0.25}
    assert entry["certified_accuracy"] == expected["certified_accuracy"]
    assert entry["average_certified_radius"] == pytest.approx((0.953 + 1.44) / 4)
    assert entry["median_time_seconds"] == pytest.approx(2.48117250)
    assert json.loads(result.stdout)["metric"] == "proxy"


# ---------------------------------------------------------------------------------------------
# plot


@needs_cohen
def test_plot_png_two_files(tmp_path: Path) -> None:
    plot = tmp_path / "curve.png"
    result = run(CIFAR_025, CIFAR_050, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert plot.exists() and plot.stat().st_size > 10_000
    assert str(plot) in result.stderr
    pixels = imread(plot)[..., :3]
    colours = {tuple(c) for c in np.round(pixels.reshape(-1, 3) * 255).astype(int).tolist()}
    assert len(colours) > 10
    # matplotlib's first two default colours: C0 blue and C1 orange, one line each
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        distance = np.abs(np.round(pixels * 255) - np.array(rgb)).sum(axis=-1)
        assert (distance <= 12).sum() > 50, rgb


def test_plot_pdf_and_force(ancer_file: Path, tmp_path: Path) -> None:
    plot = tmp_path / "curve.pdf"
    assert run(ancer_file, "--plot", plot).exit_code == 0
    assert plot.read_bytes()[:5] == b"%PDF-"
    again = run(ancer_file, "--plot", plot)
    assert_one_error_line(again, str(plot), "--force")
    assert run(ancer_file, "--plot", plot, "--force").exit_code == 0


def test_plot_bad_suffix_is_usage_error(ancer_file: Path, tmp_path: Path) -> None:
    result = run(ancer_file, "--plot", tmp_path / "curve.svg")
    assert result.exit_code == 2
    assert not (tmp_path / "curve.svg").exists()


def test_plot_missing_folder(ancer_file: Path, tmp_path: Path) -> None:
    assert_one_error_line(run(ancer_file, "--plot", tmp_path / "no" / "c.png"), "does not exist")


# ---------------------------------------------------------------------------------------------
# errors


@needs_cohen
def test_proxy_metric_on_cohen_file_fails() -> None:
    assert_one_error_line(run(CIFAR_025, "--metric", "proxy"), str(CIFAR_025), "radius_proxy")


HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["is empty"]),
        (HEADER, ["no rows"]),
        ("idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n", ["lacks column", "radius"]),
        (HEADER + "0\t1\t1\t0.5\t1\t1.0\n1\t1\t1\tfar\t1\t1.0\n", ["line 3", "column radius"]),
        (HEADER + "0\t1\t1\t0.5\tyes\t1.0\n", ["line 2", "column correct"]),
        (HEADER + "0\t1\t1\t0.5\t2\t1.0\n", ["line 2", "column correct", "0 or 1"]),
        (HEADER + "0\t1\t1\t0.5\t1\tlater\n", ["line 2", "column time"]),
        (HEADER + "0\t1\t1\t0.5\t1\t1.0\t9\n", ["more fields"]),
        ("\x00\xff\xfe binary", ["cannot be parsed"]),
    ],
    ids=[
        "empty",
        "header-only",
        "missing-column",
        "text-radius",
        "text-correct",
        "correct-not-0-1",
        "bad-time",
        "extra-field",
        "binary",
    ],
)
def test_malformed_files(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(text.encode("latin-1"))
    assert_one_error_line(run(path), str(path), *fragments)


def test_missing_file_and_directory(tmp_path: Path, ancer_file: Path) -> None:
    assert_one_error_line(run(ancer_file, tmp_path / "absent.tsv"), "absent.tsv", "does not exist")
    assert_one_error_line(run(tmp_path), str(tmp_path), "directory")


@pytest.mark.parametrize("radius", ["-1", "-0.25", "nan", "inf"])
def test_bad_radius_is_usage_error(ancer_file: Path, radius: str) -> None:
    result = run(ancer_file, f"--radius={radius}")
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "--radius" in result.output


def test_label_count_must_match(ancer_file: Path) -> None:
    result = run(ancer_file, ancer_file, "--label", "only-one")
    assert result.exit_code == 2
    assert "--label" in result.output
    result = run(ancer_file, ancer_file, "--label", "same", "--label", "same")
    assert result.exit_code == 2


def test_unknown_metric_and_format(ancer_file: Path) -> None:
    assert run(ancer_file, "--metric", "volume").exit_code == 2
    assert run(ancer_file, "--format", "xml").exit_code == 2


def test_help_lists_every_option() -> None:
    result = CliRunner().invoke(app, ["accuracy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--radius", "--metric", "--label", "--format", "--plot", "--force"):
        assert option in result.stdout
