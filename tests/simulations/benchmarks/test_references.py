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


@needs_dataset("cmapss")
def test_a_transfer_scores_the_network_and_the_tree_trained_on_the_source_on_both_test_splits(tmp_path):
    out = tmp_path / "transfer.json"
    result = runner.invoke(app, ["bench", "references", "--subsets", "", "--transfers", "fd001:fd003", "--seeds", "1",
                                 "--max-epochs", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "FD001 -> FD003" in result.output and "before any target label" in result.output.lower()
    written = json.loads(out.read_text())
    assert written["runs"] == {}
    run = written["transfers"]["FD001 -> FD003"][0]
    assert run["network"]["epochs"] == 1
    for model in ("network", "lightgbm"):
        for key in ("source_rmse", "rmse"):
            assert 0 < run[model][key] < 125, (model, key)
    # The two test splits really differ: FD003 holds a fault mode FD001 never shows.
    assert run["lightgbm"]["rmse"] != run["lightgbm"]["source_rmse"]


def test_a_transfer_that_is_not_a_pair_is_named():
    result = runner.invoke(app, ["bench", "references", "--transfers", "FD001-FD003"])
    assert result.exit_code == 1 and "SOURCE:TARGET" in result.output and "FD001-FD003" in result.output
