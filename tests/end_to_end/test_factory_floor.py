"""From the federation to the factory floor: the walkthrough of docs/factory-operator.md, run as written
(example plants -> simulate on their tables -> adapt to 20 rows of a new line -> predict its production -> update ->
rollback -> optimize), and what it promises: the adapted model predicts the line's production rows
better than the unadapted package and than what the line could fit on those 20 rows alone (the same
network from fresh weights, and a least-squares line).

The example plants share a nonlinear response to their process parameters (``min_nonlinearity=1``):
what a federation can learn and 20 rows cannot. On the default quality family, whose plants are
partly linear, a line fitted on 20 rows is about as good as the adapted model."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedmeta.client.floor.adapt import rows_as_task
from fedmeta.client.floor.candidates import LOCAL_ONLY_STEPS, rows_alone_adaptation
from fedmeta.common.data.scaling import FeatureScaling
from fedmeta.common.package.model_package import load_package
from fedmeta.simulations.example_plants import ADAPT_ROWS, FEATURES, WEEK_ROWS
from tests.support.cli import run_fedmeta
from tests.support.docs import example


def walkthrough() -> str:
    """The bash block of factory-operator.md that says this module runs it."""
    (block,) = example("docs/factory-operator.md", "bash", marker="run by tests/end_to_end/test_factory_floor.py")
    return block


def _rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


@pytest.fixture(scope="module")
def floor(tmp_path_factory) -> Path:
    """The folder the walkthrough ran in."""
    root = tmp_path_factory.mktemp("walkthrough")
    scripts = sysconfig.get_path("scripts")
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=root, env=env, capture_output=True,
                         text=True, timeout=900)
    assert ran.returncode == 0, f"{ran.stdout[-4000:]}\n{ran.stderr[-4000:]}"
    return root / "floor"


def test_the_simulated_federation_writes_a_package_of_the_tables_schema(floor):
    package = load_package(floor / "run" / "fomaml" / "model")
    schema = package.manifest.schema
    assert (schema.features, schema.target, package.manifest.scaling_rule) == (tuple(FEATURES), "quality",
                                                                               "factory-rows")
    assert package.manifest.round == 30 and "loss-k5" in package.manifest.metrics


def _rows_alone_predictions(floor: Path, line: pd.DataFrame, later: slice) -> dict[str, np.ndarray]:
    """The later rows' predictions of what the line fits on its first 20 rows alone."""
    x = torch.tensor(line[FEATURES].to_numpy(), dtype=torch.float64)
    y = torch.tensor(line["quality"].to_numpy(), dtype=torch.float32)
    scaled = FeatureScaling.fit(x).apply(x)
    alone = rows_alone_adaptation(load_package(floor / "run" / "fomaml" / "model"), seed=0)
    task = rows_as_task(scaled[:ADAPT_ROWS], y[:ADAPT_ROWS], torch.arange(ADAPT_ROWS))
    params = {name: value[0] for name, value in alone.adapt(task, LOCAL_ONLY_STEPS).items()}
    with torch.no_grad():
        network = torch.func.functional_call(alone.model, params, (scaled[later],))[:, 0].numpy()
    design = np.column_stack([line[FEATURES].to_numpy(), np.ones(len(line))])
    fitted, *_ = np.linalg.lstsq(design[:ADAPT_ROWS], line["quality"].to_numpy()[:ADAPT_ROWS], rcond=None)
    return {"network": network, "line": design[later] @ fitted}


def test_the_adapted_model_predicts_production_better_than_without_it_or_from_the_rows_alone(floor):
    line = pd.read_csv(floor / "plants" / "line-7.csv")
    later = slice(ADAPT_ROWS + WEEK_ROWS, None)
    actual = line["quality"].to_numpy()[later]
    scored = pd.read_csv(floor / "scored.csv")
    assert list(scored["batch"]) == list(line["batch"].iloc[later])  # every production row, its id carried through
    code, output = run_fedmeta("predict", "--model", str(floor / "run" / "fomaml" / "model"), "--data",
                               str(floor / "production.csv"), "--out", str(floor / "unadapted.csv"))
    assert code == 0, output
    adapted = _rmse(scored["predicted_quality"].to_numpy(), actual)
    others = {"unadapted": _rmse(pd.read_csv(floor / "unadapted.csv")["predicted_quality"].to_numpy(), actual)}
    others |= {f"rows alone, {name}": _rmse(predicted, actual)
               for name, predicted in _rows_alone_predictions(floor, line, later).items()}
    assert all(adapted < 0.85 * error for error in others.values()), (adapted, others)


def test_the_update_kept_both_versions_and_the_rollback_restored_the_first(floor):
    store = floor / "line-7-store"
    assert sorted(path.name for path in (store / "versions").iterdir()) == ["0001", "0002"]
    assert int((store / "CURRENT").read_text()) == 1


def test_the_recommended_settings_stay_within_the_bounds(floor):
    bounds = json.loads((floor / "bounds.json").read_text())
    settings = json.loads((floor / "settings.json").read_text())
    best = settings[0]["settings"]
    assert set(best) == set(bounds["controllable"])
    for name, (low, high) in bounds["controllable"].items():
        assert low <= best[name] <= high
