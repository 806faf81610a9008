"""``ancer verify RESULTS``: check a results file against its record and the files it names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ancer_cli.cli.common import (
    WHAT,
    DataRootOption,
    DeviceOption,
    RunArchOption,
    console,
    handle_errors,
    non_negative,
)
from ancer_cli.cli.common import out as stdout

CHECK = "What to check"


def verify_command(
    results: Annotated[
        Path,
        typer.Argument(
            help="Results file written by ancer certify, predict or recertify (with its "
            "sidecar).",
            show_default=False,
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            help="The model file to check (default: the one the record names).",
            show_default=False,
            rich_help_panel=WHAT,
        ),
    ] = None,
    thetas: Annotated[
        Path | None,
        typer.Option(
            help="The thetas to check (default: the ones the record names).",
            show_default=False,
            rich_help_panel=WHAT,
        ),
    ] = None,
    denoiser: Annotated[
        Path | None,
        typer.Option(
            help="The denoiser to check (default: the one the record names).",
            show_default=False,
            rich_help_panel=WHAT,
        ),
    ] = None,
    data_root: DataRootOption = None,
    arch: RunArchOption = None,
    recertify: Annotated[
        int,
        typer.Option(
            metavar="K",
            help="Also certify K random rows again on a fresh seed (the run's N and alpha) and "
            "count those whose class cannot reach the recorded radius (an honest file: about "
            "2 alpha K or fewer).",
            rich_help_panel=CHECK,
        ),
    ] = 0,
    device: DeviceOption = "auto",
) -> None:
    """Check a results file against its record and the files it names.

    The rows against the digest recorded when the run finished; the model, denoiser, thetas
    and every input against the hashes recorded before its seed was drawn. Exit code 0 only
    when everything matches; each mismatch is one line.
    """
    non_negative("--recertify", recertify)

    from ancer_cli.distributed import session
    from ancer_cli.verify import Overrides, summary_lines, verify

    overrides = Overrides(model, thetas, data_root, denoiser, arch)
    with handle_errors(), session(device) as where:
        console.print(f"verifying {results}")
        report = verify(results, where, overrides, recertify)
        for line in summary_lines(report):
            stdout.print(line, markup=False)
    if not report.ok:
        raise typer.Exit(1)
