"""Run the `fedmeta` command in-process, as a user would type it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from fedmeta.simulations.cli import app

_runner = CliRunner()


def run_fedmeta(*args: str) -> tuple[int, str]:
    """The exit code and output of ``fedmeta ARGS`` (a wide terminal, so no line is cut)."""
    result = _runner.invoke(app, list(args), env={"COLUMNS": "300"})
    return result.exit_code, result.output


def predicted_rmse(model: Path, table: Path, out: Path, target: str = "quality") -> float:
    """The RMSE of ``fedmeta predict --model MODEL`` on ``table``'s rows (its scores written to ``out``)."""
    code, output = run_fedmeta("predict", "--model", str(model), "--data", str(table), "--out", str(out))
    assert code == 0, output
    scored = pd.read_csv(out)
    return float(np.sqrt(np.mean((scored[f"predicted_{target}"] - scored[target]) ** 2)))
