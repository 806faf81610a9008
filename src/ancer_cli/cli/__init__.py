"""The ``ancer`` command-line program: ``train``, ``optimize``, ``certify``, ``recertify``,
``predict``, ``attack``, ``audit``, ``accuracy``, ``show`` and ``verify``.

Only this package touches typer, rich, ``sys.argv`` and exit codes. Its modules import no
PyTorch, numpy or pandas at import time (a command imports the library when it runs), so
``ancer --help``, ``ancer CMD --help``, ``ancer --version`` and usage errors answer at once.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.table import Table
from typer import rich_utils
from typer.core import TyperCommand, TyperGroup, TyperOption

from ancer_cli import __version__
from ancer_cli.cli.accuracy import accuracy_command
from ancer_cli.cli.attack import attack_command
from ancer_cli.cli.audit import audit_command
from ancer_cli.cli.certify import certify_command
from ancer_cli.cli.optimize import optimize_command
from ancer_cli.cli.predict import predict_command
from ancer_cli.cli.recertify import recertify_command
from ancer_cli.cli.show import show_command
from ancer_cli.cli.train import train_command
from ancer_cli.cli.verify import verify_command
from ancer_cli.runtime import retain_host_memory


def _reflow(command: Any) -> None:
    """Join the lines of each paragraph of ``command``'s help, so that the terminal wraps them
    (typer keeps the docstring's line breaks after the first paragraph)."""
    text = inspect.cleandoc(command.help or "")
    command.help = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def _untype_flags(command: Any, ctx: Any) -> None:
    """Give the flags of ``command`` (``--force``, ``--help``, ...) an empty metavar: they take
    no value, yet recent typer prints ``<bool>`` in their help row. ``ctx`` is click's context
    (typer vendors click in recent versions, so it is typed loosely here)."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class _NamesWhole(Table):
    """The options (and commands) table of typer's help, with the columns that hold option
    names and their metavars kept whole: only the help text wraps, so no option name is cut at
    80 columns. (Typer builds one table per help panel with ``add_row``; the help text is the
    last column.)"""

    def add_row(self, *renderables: Any, **options: Any) -> None:
        super().add_row(*renderables, **options)
        for column in self.columns[:-1]:
            column.no_wrap = True


@contextlib.contextmanager
def _names_whole() -> Iterator[None]:
    """Typer's help rendered with :class:`_NamesWhole` tables (typer's own tables if its
    layout module changed)."""
    original = getattr(rich_utils, "Table", None)
    if original is not Table:
        yield
        return
    setattr(rich_utils, "Table", _NamesWhole)  # noqa: B010 - typer does not export it
    try:
        yield
    finally:
        setattr(rich_utils, "Table", original)  # noqa: B010


class _Command(TyperCommand):
    """A typer command whose help shows no type beside its flags and never cuts an option
    name."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untype_flags(self, ctx)
        _reflow(self)
        with _names_whole():
            super().format_help(ctx, formatter)


class _Group(TyperGroup):
    """The ``ancer`` group, whose help shows no type beside ``--help``."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untype_flags(self, ctx)
        with _names_whole():
            super().format_help(ctx, formatter)


app = typer.Typer(
    name="ancer",
    cls=_Group,
    help="Certify image classifiers with randomized smoothing (isotropic, data-dependent, ANCER).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train", cls=_Command)(train_command)
app.command("optimize", cls=_Command)(optimize_command)
app.command("certify", cls=_Command)(certify_command)
app.command("recertify", cls=_Command)(recertify_command)
app.command("predict", cls=_Command)(predict_command)
app.command("attack", cls=_Command)(attack_command)
app.command("audit", cls=_Command)(audit_command)
app.command("accuracy", cls=_Command)(accuracy_command)
app.command("show", cls=_Command)(show_command)
app.command("verify", cls=_Command)(verify_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ancer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Certify image classifiers with randomized smoothing (isotropic, data-dependent, ANCER)."""


def main() -> None:
    """Console-script entry point."""
    retain_host_memory()  # CPU forward passes stop page-faulting their activations back in
    app(prog_name="ancer")
