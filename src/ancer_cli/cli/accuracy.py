"""``ancer accuracy``: certified accuracy, ACR and abstention of results files, side by side;
their curves and radius distributions as plots."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from ancer_cli.analysis.labels import default_labels
from ancer_cli.artifacts import check_new_output
from ancer_cli.cli.common import ForceOption, console, handle_errors, number, out
from ancer_cli.settings import DEFAULT_LINF_RADII, DEFAULT_RADII, DEFAULT_RHO, PLOT_SUFFIXES, Metric

if TYPE_CHECKING:
    import pandas as pd


REPORT = "What to report"
BOUNDS = "Bounds that hold with high probability"
PLOTS = "Plots"


class OutputFormat(str, Enum):
    """How the summary is written to standard output."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


class PlotMetric(str, Enum):
    """Which radius column(s) the certified-accuracy plot draws."""

    radius = "radius"
    proxy = "proxy"
    both = "both"


def _metrics(choice: PlotMetric | None, metric: Metric) -> list[Metric]:
    if choice is None:
        return [metric]
    if choice is PlotMetric.both:
        return [Metric.radius, Metric.proxy]
    return [Metric(choice.value)]


def _check_figure_suffix(path: Path | None, option: str) -> None:
    if path is not None and path.suffix.lower() not in PLOT_SUFFIXES:
        raise typer.BadParameter(f"{path} must end in .png or .pdf", param_hint=f"'{option}'")


def accuracy_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Results files (tab-separated: idx label predict radius correct ..., or "
            "predictions: idx label predict correct time), one column each.",
            metavar="FILE",
            show_default=False,
        ),
    ],
    radius: Annotated[
        list[float] | None,
        typer.Option(
            "--radius",
            "-r",
            metavar="R",
            parser=number,
            help="Radius (input units, pixels in [0, 1]; a fraction such as 8/255 too) at which "
            "to report certified accuracy; repeat for several (default: 0, 0.25, 0.5, 0.75, 1, "
            "1.25, 1.5, 2, 2.5, 3; linf: 0, 1/255, 2/255, 4/255, 8/255, 16/255).",
            show_default=False,
            rich_help_panel=REPORT,
        ),
    ] = None,
    metric: Annotated[
        Metric | None,
        typer.Option(
            help="Radius column to use: radius (largest ball in the region; the default), proxy "
            "(radius_proxy, ball of equal volume) or linf (radius_linf, half-width of the largest "
            "l-infinity box in the region).",
            show_default=False,
            rich_help_panel=REPORT,
        ),
    ] = None,
    attack: Annotated[
        Path | None,
        typer.Option(
            metavar="ATTACK",
            help="An ancer attack file of the same inputs: certified (lower) and empirical "
            "(upper) accuracy at each of its eps, and the gap (one results FILE; the column is "
            "the attack's norm: radius, or radius_linf for linf).",
            show_default=False,
            rich_help_panel=REPORT,
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            metavar="NAME",
            help="Column name for each file, in file order; repeat once per file "
            "(default: the file names).",
            show_default=False,
            rich_help_panel=REPORT,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="Output on stdout: table, markdown, csv, json or latex (booktabs).",
            rich_help_panel=REPORT,
        ),
    ] = OutputFormat.table,
    high_probability: Annotated[
        bool,
        typer.Option(
            "--high-probability",
            help="Also report Cohen et al.'s lower bounds on certified accuracy that hold with "
            "probability 1 - rho over certify's sampling.",
            rich_help_panel=BOUNDS,
        ),
    ] = False,
    rho: Annotated[
        float,
        typer.Option(
            help="Probability (in (0, 1)) that the --high-probability bounds fail.",
            rich_help_panel=BOUNDS,
        ),
    ] = DEFAULT_RHO,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Probability (in (0, 1)) that one row's certificate is wrong, for "
            "--high-probability (default: each file's sidecar arguments.alpha, else 0.001).",
            show_default=False,
            rich_help_panel=BOUNDS,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write certified accuracy against radius to this .png or .pdf file.",
            show_default=False,
            rich_help_panel=PLOTS,
        ),
    ] = None,
    plot_metric: Annotated[
        PlotMetric | None,
        typer.Option(
            metavar="WHICH",
            help="Radius column(s) the --plot draws: radius, proxy or both (solid and dashed) "
            "(default: --metric).",
            show_default=False,
            rich_help_panel=PLOTS,
        ),
    ] = None,
    plot_max_radius: Annotated[
        float | None,
        typer.Option(
            help="Right end of the --plot radius axis, input units (default: 5% past the "
            "largest certified radius).",
            show_default=False,
            rich_help_panel=PLOTS,
        ),
    ] = None,
    hist: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write the distribution of per-input certified radii (and, for files "
            "with radius_proxy, of radius_proxy/radius) to this .png or .pdf file.",
            show_default=False,
            rich_help_panel=PLOTS,
        ),
    ] = None,
    cdf: Annotated[
        bool,
        typer.Option(
            "--cdf",
            help="Draw the --hist distributions as cumulative distribution functions.",
            rich_help_panel=PLOTS,
        ),
    ] = False,
    force: ForceOption = False,
) -> None:
    """Report the certified accuracy and radius of results files.

    Certified accuracy at chosen radii, average certified radius, clean accuracy and abstention
    rate of one or more results files (this tool's, the original ANCER scripts' or Cohen et
    al.'s), optionally with high-probability bounds, curves and radius histograms. Files of
    predictions (ancer predict's, Cohen et al.'s predict.py's) get their accuracy and abstention
    rate. With --attack ATTACK (ancer attack's file of the same inputs): certified (lower) and
    empirical (upper) accuracy at the attack's eps, and the gap between them.
    """
    if attack is not None:
        _check_attack_options(
            files, radius, label, high_probability, hist, plot_metric, plot_max_radius
        )
        _check_figure_suffix(plot, "--plot")
        with handle_errors():
            _attack_report(files[0], attack, metric, output_format, plot, plot_max_radius, force)
        return
    metric = metric or Metric.radius
    defaults = DEFAULT_LINF_RADII if metric is Metric.linf else DEFAULT_RADII
    radii = list(defaults) if not radius else radius
    labels = _check_options(files, radii, label, high_probability, rho, alpha, plot_max_radius)
    if plot is not None and hist is not None and plot.resolve() == hist.resolve():
        raise typer.BadParameter("--plot and --hist must name different files")
    _check_figure_suffix(plot, "--plot")
    _check_figure_suffix(hist, "--hist")

    from ancer_cli import analysis

    with handle_errors():
        for figure in (plot, hist):
            if figure is not None:
                check_new_output(figure, force=force)
        also = [Metric.proxy] if plot is not None and plot_metric is PlotMetric.proxy else []
        rho_used = rho if high_probability else None
        result = analysis.compare(
            files, labels, radii, metric, also=also, rho=rho_used, alpha=alpha
        )
        for figure, option in ((plot, "--plot"), (hist, "--hist")):
            if figure is not None:
                result.check_drawable(option)
        for note in result.notes():
            console.print(note, markup=False)
        if output_format is OutputFormat.json:
            sources = {name: str(path) for name, path in result.paths.items()}
            text = analysis.render_json(result.summaries, metric, sources)
            out.out(text, end="", highlight=False)
        else:
            table = analysis.table_from_summaries(result.summaries)
            title = f"metric: {metric.value}"
            if high_probability:
                title += f", bounds hold w.p. {1 - rho:g}"
            if output_format is OutputFormat.table:
                out.print(_rich_table(table, title))
            else:
                text = analysis.render(table, output_format.value, title=title)
                out.out(text, end="", highlight=False)
        if plot is not None:
            metrics = _metrics(plot_metric, metric)
            analysis.plot_certified_accuracy(
                result.frames, metrics, plot, max_radius=plot_max_radius
            )
            console.print(f"wrote {plot}", markup=False)
        if hist is not None:
            analysis.plot_radius_distribution(result.frames, metric, hist, cdf=cdf)
            console.print(f"wrote {hist}", markup=False)


def _check_attack_options(
    files: list[Path],
    radius: list[float] | None,
    label: list[str] | None,
    high_probability: bool,
    hist: Path | None,
    plot_metric: PlotMetric | None,
    plot_max_radius: float | None,
) -> None:
    """Usage errors (exit 2) of ``--attack``: one results file, and no option of the summary
    of several files."""
    if len(files) != 1:
        raise typer.BadParameter(
            f"compares one results file with its attack, got {len(files)} files",
            param_hint="'--attack'",
        )
    given = [
        name
        for name, value in (
            ("--radius", radius),
            ("--label", label),
            ("--high-probability", high_probability),
            ("--hist", hist),
            ("--plot-metric", plot_metric),
        )
        if value
    ]
    if given:
        raise typer.BadParameter(
            f"{', '.join(given)}: not with --attack (the attack's eps are the radii compared)",
            param_hint="'--attack'",
        )
    if plot_max_radius is not None and not (math.isfinite(plot_max_radius) and plot_max_radius > 0):
        raise typer.BadParameter(
            f"must be a finite number > 0, got {plot_max_radius}", param_hint="'--plot-max-radius'"
        )


def _attack_report(
    results: Path,
    attack: Path,
    metric: Metric | None,
    output_format: OutputFormat,
    plot: Path | None,
    plot_max_radius: float | None,
    force: bool,
) -> None:
    """``ancer accuracy RESULTS --attack ATTACK``: the comparison's table (or JSON) and plot."""
    from ancer_cli import analysis
    from ancer_cli.errors import ResultsError

    if plot is not None:
        check_new_output(plot, force=force)
    comparison = analysis.compare_attack(results, attack)
    if metric is not None and metric is not comparison.metric:
        raise ResultsError(
            f"--metric {metric.value}: the {comparison.threat} attack is compared with the "
            f"{comparison.metric.column} column (--metric {comparison.metric.value}, or leave "
            "--metric out)"
        )
    if output_format is OutputFormat.json:
        out.out(json.dumps(comparison.record(), indent=2) + "\n", end="", highlight=False)
    else:
        table = comparison.table()
        title = (
            f"{comparison.threat} attack vs {comparison.metric.column}, "
            f"{comparison.inputs} inputs"
        )
        if output_format is OutputFormat.table:
            out.print(_rich_table(table, title, heading="accuracy"))
        else:
            out.out(analysis.render(table, output_format.value, title=title), end="")
    if plot is not None:
        analysis.plot_attack_comparison(comparison, plot, max_radius=plot_max_radius)
        console.print(f"wrote {plot}", markup=False)


def _check_options(
    files: list[Path],
    radii: list[float],
    label: list[str] | None,
    high_probability: bool,
    rho: float,
    alpha: float | None,
    plot_max_radius: float | None,
) -> list[str]:
    """Usage errors (exit 2) for impossible option values; returns each file's label."""
    for value in radii:
        if not math.isfinite(value) or value < 0:
            raise typer.BadParameter(
                f"radius must be a finite number >= 0, got {value}", param_hint="'--radius'"
            )
    if label is not None and len(label) != len(files):
        raise typer.BadParameter(
            f"got {len(label)} label(s) for {len(files)} file(s); give one --label per file",
            param_hint="'--label'",
        )
    labels = label if label is not None else default_labels(files)
    if len(set(labels)) != len(labels):
        raise typer.BadParameter("labels must differ from each other", param_hint="'--label'")
    if alpha is not None and not high_probability:
        raise typer.BadParameter(
            "--alpha only sets the --high-probability bounds; add --high-probability",
            param_hint="'--alpha'",
        )
    for name, level in (("--rho", rho), ("--alpha", alpha)):
        if level is not None and not 0.0 < level < 1.0:
            raise typer.BadParameter(f"must lie in (0, 1), got {level}", param_hint=f"'{name}'")
    if plot_max_radius is not None and not (math.isfinite(plot_max_radius) and plot_max_radius > 0):
        raise typer.BadParameter(
            f"must be a finite number > 0, got {plot_max_radius}", param_hint="'--plot-max-radius'"
        )
    return labels


def _rich_table(table: pd.DataFrame, title: str, heading: str = "certified accuracy") -> Table:
    """The summary as a rich table, best value of each row in bold (several files only)."""
    from ancer_cli import analysis

    best = analysis.best_mask(table)
    rich_table = Table(title=Text(f"{heading} ({title})"), title_justify="left")
    rich_table.add_column("", no_wrap=True)
    for name in table.columns:
        # Text, not str: labels and file names are not rich markup
        rich_table.add_column(Text(str(name)), justify="right", overflow="fold")
    for row in table.index:
        cells = [
            Text(
                analysis.format_cell(str(row), float(table.loc[row, name])),
                style="bold" if best.loc[row, name] else "",
            )
            for name in table.columns
        ]
        rich_table.add_row(str(row), *cells)
    return rich_table
