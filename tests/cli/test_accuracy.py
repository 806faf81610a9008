"""``ancer accuracy`` end to end through Typer's CliRunner.

Expected numbers come from an independent computation with the ``csv`` module.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner, Result

from ancer_cli.cli import app
from tests.helpers import CERTIFY_FAST, assert_usage_error, ok

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


def test_plot_folder_blocked_by_a_file(ancer_file: Path, tmp_path: Path) -> None:
    (tmp_path / "no").write_text("a file where the folder of --plot should be")
    assert_one_error_line(
        run(ancer_file, "--plot", tmp_path / "no" / "c.png"), "cannot create folder"
    )


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
    for option in (
        "--radius",
        "--metric",
        "--label",
        "--format",
        "--high-probability",
        "--rho",
        "--alpha",
        "--plot",
        "--plot-metric",
        "--plot-max-radius",
        "--hist",
        "--cdf",
        "--force",
    ):
        assert option in result.stdout


# ---------------------------------------------------------------------------------------------
# LaTeX, high-probability bounds, more plots


def independent_false_certificates(rows: int, alpha: float, rho: float) -> int:
    """min{k : P[Binomial(rows, alpha) > k] <= rho}, summing the binomial pmf with math.comb."""
    below = 0.0
    for k in range(rows + 1):
        below += math.comb(rows, k) * alpha**k * (1 - alpha) ** (rows - k)
        if 1.0 - below <= rho * (1 - 1e-9):
            return k
    return rows


@needs_cohen
def test_latex_table() -> None:
    result = run(CIFAR_025, CIFAR_050, "-r", "0.5", "-r", "1", "--format", "latex")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == r"\begin{tabular}{lrr}"
    assert lines[2] == (
        r"metric: radius & cifar10\_resnet110\_noise\_0.25\_sigma\_0.25.tsv & "
        r"cifar10\_resnet110\_noise\_0.50\_sigma\_0.50.tsv \\"
    )
    assert r"certified accuracy at 0.5 & \textbf{0.428} & 0.414 \\" in lines
    assert r"certified accuracy at 1 & 0.000 & \textbf{0.234} \\" in lines
    assert lines[-1] == r"\end{tabular}"


@needs_cohen
def test_high_probability_json_matches_formula() -> None:
    radii = (0.0, 0.25, 0.5, 0.75, 1.0)
    args = [CIFAR_025, IMAGENET_050, "--format", "json", "--high-probability", "--rho", "0.01"]
    result = run(*args, *[f"--radius={r}" for r in radii])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for path in (CIFAR_025, IMAGENET_050):
        entry = payload["files"][path.name]
        rows = entry["inputs"]
        k = independent_false_certificates(rows, 0.001, 0.01)
        high = entry["high_probability"]
        assert (high["alpha"], high["rho"], high["false_certificates"]) == (0.001, 0.01, k)
        expected = independent(path, radii)["certified_accuracy"]
        for key, value in expected.items():
            count = round(value * rows)
            assert high["certified_accuracy"][key] == max(0, count - k) / rows


@needs_cohen
def test_high_probability_rows_in_table() -> None:
    result = run(CIFAR_025, "--high-probability", "-r", "0.5", "--format", "markdown")
    assert result.exit_code == 0, result.output
    k = independent_false_certificates(500, 0.001, 0.001)
    assert k == 4
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "| metric: radius, bounds hold w.p. 0.999 | cifar10_resnet110_noise_0.25_sigma_0.25.tsv |"
    )
    assert f"| high-probability certified accuracy at 0.5 | {(214 - k) / 500:.3f} |" in lines
    assert "| alpha (per certificate) | 0.001 |" in lines
    assert "| false certificates (at most) | 4 |" in lines
    table = run(CIFAR_025, "--high-probability", "-r", "0.5")
    assert table.exit_code == 0 and "high-probability certified accuracy at 0.5" in table.stdout


def test_high_probability_alpha_from_sidecar_and_option(ancer_file: Path) -> None:
    sidecar = ancer_file.parent / (ancer_file.name + ".json")
    sidecar.write_text(json.dumps({"arguments": {"alpha": 0.3}, "memory": {"enabled": False}}))
    result = run(ancer_file, "--high-probability", "--rho", "0.2", "--format", "json", "-r", "0")
    assert result.exit_code == 0, result.output
    high = json.loads(result.stdout)["files"]["certification.tsv"]["high_probability"]
    k = independent_false_certificates(4, 0.3, 0.2)
    assert (high["alpha"], high["false_certificates"]) == (0.3, k)
    assert high["certified_accuracy"] == {"0.0": max(0, 2 - k) / 4}
    override = run(ancer_file, "--high-probability", "--alpha", "0.01", "--format", "json")
    high = json.loads(override.stdout)["files"]["certification.tsv"]["high_probability"]
    assert high["alpha"] == 0.01 and high["rho"] == 0.001
    # one row reassigned by the memory pass: 3 independent certificates, plus that row
    sidecar.write_text(json.dumps({"arguments": {"alpha": 0.3}, "memory": {"reassigned": 1}}))
    result = run(ancer_file, "--high-probability", "--rho", "0.2", "--format", "json", "-r", "0")
    high = json.loads(result.stdout)["files"]["certification.tsv"]["high_probability"]
    k0 = independent_false_certificates(3, 0.3, 0.2)
    assert k0 > 0 and high["reassigned"] == 1 and high["false_certificates"] == min(4, k0 + 1)


@pytest.mark.parametrize("option", ["--rho", "--alpha"])
@pytest.mark.parametrize("value", ["0", "1", "-0.1", "nan"])
def test_bad_rho_and_alpha_are_usage_errors(ancer_file: Path, option: str, value: str) -> None:
    result = run(ancer_file, "--high-probability", f"{option}={value}")
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_alpha_needs_high_probability(ancer_file: Path) -> None:
    result = run(ancer_file, "--alpha", "0.01")
    assert result.exit_code == 2 and "--high-probability" in result.output


def test_hist_and_both_metrics(ancer_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.tsv"
    other.write_text(ANCER_FILE.replace("0.953", "2.5").replace("\t1.44\t", "\t0.9\t"))
    curve, hist = tmp_path / "curve.png", tmp_path / "radii.png"
    result = run(
        ancer_file, other, "--plot", curve, "--plot-metric", "both",
        "--plot-max-radius", "3", "--hist", hist,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(curve) in result.stderr and str(hist) in result.stderr
    for path, shape in ((curve, (660, 960, 3)), (hist, (630, 1650, 3))):
        pixels = np.round(imread(path)[..., :3] * 255).astype(int)
        assert pixels.shape == shape
        for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
            assert (np.abs(pixels - np.array(rgb)).sum(axis=-1) <= 12).sum() > 30, (path, rgb)
    again = run(ancer_file, "--hist", hist)
    assert_one_error_line(again, str(hist), "--force")
    assert run(ancer_file, "--hist", hist, "--cdf", "--force").exit_code == 0


def test_plot_and_hist_options_are_checked(ancer_file: Path, tmp_path: Path) -> None:
    assert run(ancer_file, "--hist", tmp_path / "r.svg").exit_code == 2
    assert run(ancer_file, "--plot", tmp_path / "c.png", "--plot-max-radius", "0").exit_code == 2
    same = tmp_path / "same.png"
    assert run(ancer_file, "--plot", same, "--hist", same).exit_code == 2
    assert run(ancer_file, "--plot-metric", "volume").exit_code == 2
    assert not same.exists()


@needs_cohen
def test_plot_proxy_of_cohen_file_fails(tmp_path: Path) -> None:
    result = run(CIFAR_025, "--plot", tmp_path / "c.png", "--plot-metric", "proxy")
    assert_one_error_line(result, str(CIFAR_025), "radius_proxy")
    assert not (tmp_path / "c.png").exists()


# ---------------------------------------------------------------------------------------------
# fresh runs of this tool


@pytest.fixture(scope="module")
def fresh_results(
    tmp_path_factory: pytest.TempPathFactory, model_path: Path, thetas_dir: Path
) -> tuple[Path, Path]:
    """Fixed-sigma and ANCER results of the session's digits model, certified now."""
    folder = tmp_path_factory.mktemp("fresh")
    fixed, ancer = folder / "fixed.tsv", folder / "ancer.tsv"
    ok("certify", "--model", model_path, "--sigma", "0.25", "--max", 6, "--alpha", "0.01",
       "--out", fixed, *CERTIFY_FAST)  # fmt: skip
    ok("certify", "--thetas", thetas_dir, "--out", ancer, *CERTIFY_FAST)
    return fixed, ancer


def test_fresh_runs_match_independent_computation(fresh_results: tuple[Path, Path]) -> None:
    fixed, ancer = fresh_results
    radii = (0.0, 0.1, 0.25, 0.5)
    args = [fixed, ancer, "--format", "json", "--high-probability", "--rho", "0.1"]
    result = run(*args, *[f"--radius={r}" for r in radii])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for path, alpha in ((fixed, 0.01), (ancer, 0.001)):
        entry = payload["files"][path.name]
        expected = independent(path, radii)
        for key in ("inputs", "certified_accuracy", "clean_accuracy", "abstention_rate"):
            assert entry[key] == expected[key], key
        assert entry["average_certified_radius"] == pytest.approx(
            expected["average_certified_radius"], rel=1e-12
        )
        proxy = independent(path, radii, column="radius_proxy")
        assert entry["average_certified_radius_proxy"] == pytest.approx(
            proxy["average_certified_radius"], rel=1e-12
        )
        with open(path, newline="") as handle:
            times = sorted(float(row["time"]) for row in csv.DictReader(handle, delimiter="\t"))
        middle = len(times) // 2
        median = times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2
        assert entry["median_time_seconds"] == pytest.approx(median)
        high = entry["high_probability"]
        k = independent_false_certificates(entry["inputs"], alpha, 0.1)
        assert (high["alpha"], high["false_certificates"]) == (alpha, k)
        for key, value in expected["certified_accuracy"].items():
            count = round(value * entry["inputs"])
            assert high["certified_accuracy"][key] == max(0, count - k) / entry["inputs"]


def test_fresh_runs_markdown_and_plots(fresh_results: tuple[Path, Path], tmp_path: Path) -> None:
    fixed, ancer = fresh_results
    curve, hist = tmp_path / "curve.png", tmp_path / "radii.pdf"
    result = run(
        fixed, ancer, "--label", "fixed", "--label", "ancer", "--metric", "proxy",
        "--format", "markdown", "--plot", curve, "--hist", hist, "-r", "0.25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| metric: proxy | fixed | ancer |"
    for path, column in ((fixed, 1), (ancer, 2)):
        expected = independent(path, (0.25,), column="radius_proxy")
        row = next(line for line in lines if line.startswith("| certified accuracy at 0.25 |"))
        cell = row.strip("|").split("|")[column].strip().strip("*")
        assert cell == f"{expected['certified_accuracy']['0.25']:.3f}"
    assert curve.stat().st_size > 10_000 and hist.read_bytes()[:5] == b"%PDF-"


# ---------------------------------------------------------------------------------------------
# l-infinity boxes

LINF_FILE = (
    "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\tradius_linf\n"
    "0\t3\t3\t0.412\t0.412\t1\t0.25\t1.0\t0.0515\n"
    "1\t8\t8\t0.81\t0.81\t1\t0.25\t1.0\t0.10125\n"
    "2\t8\t1\t0.6\t0.6\t0\t0.25\t1.0\t0.075\n"
    "3\t0\t-1\t0.0\t0.0\t0\t0.25\t1.0\t0.0\n"
)


def test_linf_metric_reads_radius_linf_at_fractions_of_the_grid(tmp_path: Path) -> None:
    path = tmp_path / "linf.tsv"
    path.write_text(LINF_FILE)
    payload = json.loads(run(path, "--metric", "linf", "--format", "json").stdout)
    assert payload["metric"] == "linf" and payload["column"] == "radius_linf"
    assert payload["radii"] == [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]  # the default
    (entry,) = payload["files"].values()
    assert entry["certified_accuracy"] == {
        repr(r): a
        for r, a in zip(payload["radii"], [0.5, 0.5, 0.5, 0.5, 0.5, 0.25], strict=True)
    }
    assert entry["average_certified_radius"] == pytest.approx((0.0515 + 0.10125) / 4)
    payload = json.loads(
        run(path, "--metric", "linf", "-r", "13/255", "-r", "0.06", "--format", "json").stdout
    )
    (entry,) = payload["files"].values()
    assert entry["certified_accuracy"] == {repr(0.06): 0.25, repr(13 / 255): 0.5}
    assert_usage_error(run(path, "-r", "1/0"), "fraction such as 8/255")


def test_linf_metric_names_the_column_a_file_lacks(ancer_file: Path) -> None:
    assert_one_error_line(
        run(ancer_file, "--metric", "linf"), str(ancer_file), "no radius_linf column"
    )


# ---------------------------------------------------------------------------------------------
# certified against empirical accuracy (--attack)

ATTACK_HEADER = "idx\tlabel\teps\tpredict\tcorrect\tnorm_l2\tnorm_l1\tnorm_linf\ttime\n"


def attack_file(tmp_path: Path, threat: str, rows: list[tuple[int, int, float, int]]) -> Path:
    """An attack file of (idx, label, eps, correct) rows and its sidecar naming ``threat``."""
    path = tmp_path / f"attack-{threat}.tsv"
    lines = [
        f"{i}\t{y}\t{e!r}\t{y if c else -1}\t{c}\t{e}\t{e}\t{e}\t0.1\n" for i, y, e, c in rows
    ]
    path.write_text(ATTACK_HEADER + "".join(lines))
    Path(f"{path}.json").write_text(json.dumps({"arguments": {"threat": threat, "N": 1000}}))
    return path


@pytest.fixture
def linf_results(tmp_path: Path) -> Path:
    path = tmp_path / "linf.tsv"
    path.write_text(LINF_FILE)
    Path(f"{path}.json").write_text(json.dumps({"arguments": {"norm": "l2"}}))
    return path


def test_attack_comparison_at_the_attack_eps(linf_results: Path, tmp_path: Path) -> None:
    # radii 0.412, 0.81 correct, 0.6 wrong, one abstention; the attack keeps 2 at 0.25, 1 at 0.5
    rows = [(i, y, e, c) for e, correct in ((0.25, (1, 1, 0, 0)), (0.5, (0, 1, 0, 0)))
            for (i, y), c in zip([(0, 3), (1, 8), (2, 8), (3, 0)], correct, strict=True)]  # fmt: skip
    attack = attack_file(tmp_path, "l2", rows)
    payload = json.loads(run(linf_results, "--attack", attack, "--format", "json").stdout)
    assert payload["threat"] == "l2" and payload["column"] == "radius"
    assert payload["eps"] == [0.25, 0.5] and payload["inputs"] == 4
    assert payload["certified_accuracy"] == {"0.25": 0.5, "0.5": 0.25}
    assert payload["empirical_accuracy"] == {"0.25": 0.5, "0.5": 0.25}
    assert payload["gap"] == {"0.25": 0.0, "0.5": 0.0}
    table = run(linf_results, "--attack", attack, "--format", "csv").stdout.splitlines()
    assert table[0] == "quantity,certified (lower),empirical (upper),gap"
    assert table[1:] == ["eps 0.25,0.5,0.5,0.0", "eps 0.5,0.25,0.25,0.0"]
    plot = tmp_path / "gap.png"
    assert run(linf_results, "--attack", attack, "--plot", plot).exit_code == 0
    assert imread(plot).shape[2] in (3, 4)


def test_linf_attack_is_compared_with_radius_linf(linf_results: Path, tmp_path: Path) -> None:
    eps = 8 / 255  # 0.0314: radius_linf 0.0515 and 0.10125 are certified there
    rows = [(0, 3, eps, 1), (1, 8, eps, 1), (2, 8, eps, 0), (3, 0, eps, 0)]
    payload = json.loads(
        run(linf_results, "--attack", attack_file(tmp_path, "linf", rows), "--format", "json")
        .stdout
    )
    assert payload["column"] == "radius_linf" and payload["metric"] == "linf"
    assert payload["certified_accuracy"] == {repr(eps): 0.5}
    assert payload["empirical_accuracy"] == {repr(eps): 0.5}


def test_attack_comparison_refusals(linf_results: Path, ancer_file: Path, tmp_path: Path) -> None:
    rows = [(0, 3, 0.5, 1), (1, 8, 0.5, 1), (2, 8, 0.5, 0), (3, 0, 0.5, 0)]
    l1 = attack_file(tmp_path, "l1", rows)
    assert_one_error_line(run(linf_results, "--attack", l1), "attacked l1 balls", "certifies l2")
    fewer = attack_file(tmp_path, "l2", rows[:3])
    assert_one_error_line(run(linf_results, "--attack", fewer), "different inputs")
    Path(f"{fewer}.json").unlink()
    assert_one_error_line(run(linf_results, "--attack", fewer), "no sidecar recording its threat")
    linf = attack_file(tmp_path, "linf", rows)
    assert_one_error_line(run(ancer_file, "--attack", linf), "no radius_linf column")
    assert_one_error_line(run(linf), "ancer accuracy RESULTS --attack")
    assert_usage_error(run(linf_results, ancer_file, "--attack", linf), "one results file")
    assert_usage_error(run(linf_results, "--attack", linf, "-r", "0.5"), "--radius")
