"""`fedmeta bench references`: the full-data C-MAPSS and AI4I references, trained and scored on the real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from fedmeta.common.data.datasets import FAILURE_MODES, dataset_dir, read_rul
from fedmeta.simulations.benchmarks.ai4i_reference import _aurocs
from fedmeta.simulations.cli import app
from tests.support.shared_data import needs_dataset

runner = CliRunner()
RUL_CAP = 125


def constant_rmse(subset: str) -> float:
    """The test RMSE of the best constant prediction (the capped truths' own mean): what a model that learned
    nothing from the sensors would score at best (FD001 40.1 cycles, FD003 39.2)."""
    truth = read_rul(subset).clip(upper=RUL_CAP).to_numpy(float)
    return float(truth.std())


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
    # One epoch over FD001's 20,631 training cycles already reads the sensors: 14.7 cycles at seed 0.
    assert math.isfinite(run["rmse"]) and 0 < run["rmse"] < 0.5 * constant_rmse("FD001") and run["nasa"] > 0
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
    # Seed 0: network 14.7 / 23.9, LightGBM 13.4 / 18.9 (FD001 / FD003); the best constants score 40.1 / 39.2.
    for model in ("network", "lightgbm"):
        assert 0 < run[model]["source_rmse"] < 0.5 * constant_rmse("FD001"), model
        assert 0 < run[model]["rmse"] < 0.75 * constant_rmse("FD003"), model
    # The two test splits really differ: FD003 holds a fault mode FD001 never shows.
    assert run["lightgbm"]["rmse"] != run["lightgbm"]["source_rmse"]


def test_a_transfer_that_is_not_a_pair_is_named():
    result = runner.invoke(app, ["bench", "references", "--transfers", "FD001-FD003"])
    assert result.exit_code == 1 and "SOURCE:TARGET" in result.output and "FD001-FD003" in result.output


def test_failure_mode_aurocs_match_a_count_by_hand():
    failed = np.array([True, True, True, False, False, False, False])
    modes = np.array([1, 2, 0, 0, 0, 0, 0])  # a TWF failure, an HDF failure, a failure with no flag
    score = np.array([0.9, 0.5, 0.1, 0.8, 0.4, 0.3, 0.2])
    scores = _aurocs(failed, modes, score)
    # Negatives 0.8, 0.4, 0.3, 0.2: TWF (0.9) beats 4 of 4, HDF (0.5) 3 of 4, the unflagged (0.1) 0 of 4.
    assert scores["auroc_TWF"] == 1.0 and scores["auroc_HDF"] == 0.75
    assert scores["auroc"] == (4 + 3 + 0) / 12 and scores["auroc_flagged"] == (4 + 3) / 8
    assert scores["unflagged_failures"] == 1.0 and math.isnan(scores["auroc_PWF"])


@needs_dataset("ai4i2020")
def test_ai4i_references_score_every_model_on_h_per_failure_mode(tmp_path):
    out = tmp_path / "ai4i.json"
    result = runner.invoke(app, ["bench", "references", "--subsets", "", "--ai4i", "--seeds", "1", "--max-epochs", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "AI4I" in result.output and "aim" in result.output
    run = json.loads(out.read_text())["ai4i"][0]
    table = pd.read_csv(dataset_dir("ai4i2020") / "ai4i2020.csv")
    h = table[table["Type"] == "H"]
    unflagged = int(((h["Machine failure"] == 1) & (h[list(FAILURE_MODES)].sum(axis=1) == 0)).sum())
    assert run["network"]["epochs"] == 1
    for model in ("network", "lightgbm", "gradient-boosting"):
        assert run[model]["unflagged_failures"] == unflagged == 1
        assert 0 <= run[model]["auroc"] <= 1 and 0 <= run[model]["auroc_flagged"] <= 1, model
    for tree in ("lightgbm", "gradient-boosting"):  # fully trained (one epoch is the network's only)
        assert run[tree]["auroc"] > 0.9 and run[tree]["auroc_flagged"] > run[tree]["auroc"], tree
