"""The ``ancer`` command-line program: ``train``, ``optimize``, ``certify``, ``accuracy``,
``predict`` and ``show``.

Only this package touches typer, rich, ``sys.argv`` and exit codes.
"""

from __future__ import annotations

import typer

from ancer_cli.cli.accuracy import accuracy_command
from ancer_cli.cli.certify import certify_command
from ancer_cli.cli.optimize import optimize_command
from ancer_cli.cli.predict import predict_command
from ancer_cli.cli.show import show_command
from ancer_cli.cli.train import train_command
from ancer_cli.runtime import retain_host_memory

app = typer.Typer(
    name="ancer",
    help="Certify image classifiers with randomized smoothing (isotropic, data-dependent, ANCER).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train")(train_command)
app.command("optimize")(optimize_command)
app.command("certify")(certify_command)
app.command("accuracy")(accuracy_command)
app.command("predict")(predict_command)
app.command("show")(show_command)


def main() -> None:
    """Console-script entry point."""
    retain_host_memory()  # CPU forward passes stop page-faulting their activations back in
    app(prog_name="ancer")
