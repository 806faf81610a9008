"""``ancer show``: chosen inputs beside heat maps of their optimized thetas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ancer_cli.artifacts import check_new_output
from ancer_cli.cli.common import ForceOption, console, handle_errors
from ancer_cli.settings import DEFAULT_PICTURES, PLOT_SUFFIXES, THETA_MEANING


def show_command(
    thetas: Annotated[
        Path,
        typer.Option(
            help="Thetas to draw: a folder written by ancer optimize (or the original ANCER "
            "package), or an isotropic values file.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(help="Picture to write, a .png or .pdf file.", show_default=False),
    ],
    index: Annotated[
        list[int] | None,
        typer.Option(
            "--index",
            "-i",
            help="Dataset index of an input to draw (one row each); repeat for several "
            f"(default: the first {DEFAULT_PICTURES} inputs with a theta).",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset the thetas belong to (default: the manifest's; required without one).",
            show_default=False,
        ),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding the dataset (default: the manifest's).", show_default=False
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Dataset split of the indices: test or train (default: the manifest's, else "
            "test).",
            show_default=False,
        ),
    ] = None,
    each_channel: Annotated[
        bool,
        typer.Option(
            "--each-channel",
            help="Draw one theta map per colour channel instead of their mean.",
        ),
    ] = False,
    force: ForceOption = False,
) -> None:
    """Draw inputs beside heat maps of their thetas.

    Each input gets one row: the image, then its theta per pixel with a colour bar in theta
    units (one map per colour channel with --each-channel).
    """
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise typer.BadParameter(f"{out} must end in .png or .pdf", param_hint="'--out'")
    for value in index or []:
        if value < 0:
            raise typer.BadParameter(f"must be >= 0, got {value}", param_hint="'--index'")

    from ancer_cli import analysis
    from ancer_cli.analysis.pictures import read_input_thetas

    with handle_errors():
        check_new_output(out, force=force)
        chosen = read_input_thetas(
            thetas, index or (), dataset=dataset, data_root=data_root, split=split
        )
        meaning = THETA_MEANING.get(chosen.norm or "", "theta")
        analysis.plot_theta_maps(
            chosen.inputs, out, each_channel=each_channel, theta_meaning=f"theta ({meaning})"
        )
    drawn = ", ".join(str(item.index) for item in chosen.inputs)
    console.print(
        f"wrote {out}: {chosen.thetas.method} thetas of {chosen.thetas.split} inputs {drawn}",
        markup=False,
    )
