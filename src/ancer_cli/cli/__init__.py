"""The ``ancer`` command-line program: ``train``, ``optimize``, ``certify``, ``accuracy``,
``predict`` and ``show``.

Only this package touches typer, rich, ``sys.argv`` and exit codes.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from ancer_cli.cli.accuracy import accuracy_command
from ancer_cli.cli.certify import certify_command
from ancer_cli.cli.optimize import optimize_command
from ancer_cli.cli.predict import predict_command
from ancer_cli.cli.show import show_command
from ancer_cli.cli.train import train_command
from ancer_cli.runtime import retain_host_memory


def _untype_flags(command: Any, ctx: Any) -> None:
    """Give the flags of ``command`` (``--force``, ``--help``, ...) an empty metavar: they take
    no value, yet recent typer prints ``<bool>`` in their help row. ``ctx`` is click's context
    (typer vendors click in recent versions, so it is typed loosely here)."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class _Command(TyperCommand):
    """A typer command whose help shows no type beside its flags."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untype_flags(self, ctx)
        super().format_help(ctx, formatter)


class _Group(TyperGroup):
    """The ``ancer`` group, whose help shows no type beside ``--help``."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untype_flags(self, ctx)
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
app.command("accuracy", cls=_Command)(accuracy_command)
app.command("predict", cls=_Command)(predict_command)
app.command("show", cls=_Command)(show_command)


def main() -> None:
    """Console-script entry point."""
    retain_host_memory()  # CPU forward passes stop page-faulting their activations back in
    app(prog_name="ancer")
