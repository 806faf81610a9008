"""``ancer accuracy``: certified accuracy, ACR and abstention of results files, side by side."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table
from rich.text import Text

from ancer_cli import analysis
from ancer_cli.analysis import Metric
from ancer_cli.artifacts import read_results
from ancer_cli.cli.common import ForceOption, console, fail, handle_errors, out


class OutputFormat(str, Enum):
    """How the summary is written to standard output."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


def accuracy_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Results files (tab-separated: idx label predict radius correct ...), "
            "one column each.",
            metavar="FILE",
            show_default=False,
        ),
    ],
    radius: Annotated[
        list[float] | None,
        typer.Option(
            "--radius",
            "-r",
            help="Radius (input units, pixels in [0, 1]) at which to report certified accuracy; "
            "repeat for several (default: 0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        Metric,
        typer.Option(
            help="Radius column to use: radius (largest ball in the region) or proxy "
            "(radius_proxy, ball of equal volume)."
        ),
    ] = Metric.radius,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help="Column name for each file, in file order; repeat once per file "
            "(default: the file names).",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="Output on stdout: table, markdown, csv or json."),
    ] = OutputFormat.table,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Also write certified accuracy against radius to this .png or .pdf file.",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Certified accuracy at chosen radii, average certified radius, clean accuracy and
    abstention rate of one or more results files (this tool's, the original ANCER scripts' or
    Cohen et al.'s)."""
    radii = list(analysis.DEFAULT_RADII) if not radius else radius
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
    labels = label if label is not None else analysis.default_labels(files)
    if len(set(labels)) != len(labels):
        raise typer.BadParameter("labels must differ from each other", param_hint="'--label'")
    if plot is not None:
        if plot.suffix.lower() not in analysis.PLOT_SUFFIXES:
            raise typer.BadParameter(f"{plot} must end in .png or .pdf", param_hint="'--plot'")
        if plot.exists() and not force:
            raise fail(f"{plot} already exists; pass --force to overwrite it")
        if not plot.parent.is_dir():
            raise fail(f"cannot write {plot}: folder {plot.parent} does not exist")

    with handle_errors():
        frames: dict[str, pd.DataFrame] = {}
        for name, path in zip(labels, files, strict=True):
            frame = read_results(path)
            analysis.check_results(frame, metric, path)
            frames[name] = frame
        summaries = {
            name: analysis.summarize(frame, radii, metric) for name, frame in frames.items()
        }

        if output_format is OutputFormat.json:
            sources = {name: str(path) for name, path in zip(labels, files, strict=True)}
            out.out(analysis.render_json(summaries, metric, sources), end="", highlight=False)
        else:
            table = analysis.table_from_summaries(summaries)
            if output_format is OutputFormat.table:
                out.print(_rich_table(table, metric))
            elif output_format is OutputFormat.markdown:
                text = analysis.render_markdown(table, title=f"metric: {metric.value}")
                out.out(text, end="", highlight=False)
            else:
                out.out(analysis.render_csv(table), end="", highlight=False)

        if plot is not None:
            analysis.plot_certified_accuracy(frames, metric, plot)
            console.print(f"wrote {plot}", markup=False)


def _rich_table(table: pd.DataFrame, metric: Metric) -> Table:
    """The summary as a rich table, best value of each row in bold (several files only)."""
    best = analysis.best_mask(table)
    rich_table = Table(title=f"certified accuracy (metric: {metric.value})", title_justify="left")
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
