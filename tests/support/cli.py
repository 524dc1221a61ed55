"""Run the `fedmeta` command in-process, as a user would type it."""

from __future__ import annotations

from typer.testing import CliRunner

from fedmeta.simulations.cli import app

_runner = CliRunner()


def run_fedmeta(*args: str) -> tuple[int, str]:
    """The exit code and output of ``fedmeta ARGS`` (a wide terminal, so no line is cut)."""
    result = _runner.invoke(app, list(args), env={"COLUMNS": "300"})
    return result.exit_code, result.output
