"""`fedmeta bench references`: the full-data C-MAPSS references, trained and scored on the real files."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from fedmeta.simulations.cli import app
from tests.support.shared_data import needs_dataset

runner = CliRunner()


@needs_dataset("cmapss")
def test_one_epoch_reference_is_scored_on_the_test_split_and_written(tmp_path):
    out = tmp_path / "references.json"
    result = runner.invoke(app, ["bench", "references", "--subsets", "fd001", "--seeds", "1", "--max-epochs", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "FD001" in result.output and "literature" in result.output
    written = json.loads(out.read_text())
    run = written["runs"]["FD001"][0]
    assert run["epochs"] == run["best_epoch"] == 1 and written["recipe"]["max_epochs"] == 1
    assert math.isfinite(run["rmse"]) and 0 < run["rmse"] < 125 and run["nasa"] > 0
    assert written["mean_rmse"]["FD001"] == run["rmse"]


def test_an_unknown_subset_is_named():
    result = runner.invoke(app, ["bench", "references", "--subsets", "FD009"])
    assert result.exit_code == 1
    assert "FD009" in result.output
