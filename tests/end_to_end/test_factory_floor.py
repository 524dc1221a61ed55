"""From the federation to the factory floor: the walkthrough of docs/factory-operator.md, run as written
(example plants -> simulate on their tables -> adapt to 20 rows of a new line -> predict its production -> update ->
rollback -> optimize) on example plants of three families (`fedmeta example-plants --family`): the plants share a
nonlinear response, each plant's quality is a line in its parameters, and the nonlinear plants' quality in units
about 1e6. What it promises on each: the model `fedmeta adapt` keeps predicts the line's production rows at least
as well as least squares on the same 20 rows (within noise) and better than the package unadapted. The nonlinear
family's walkthrough runs in bash, one process a command, as a user types it; the other families' run the same
commands in this process (`run_fedmeta`), which spares the suite a process start (torch and Flower) a command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sysconfig
from contextlib import chdir
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmeta.common.package.model_package import load_package
from fedmeta.simulations.example_plants import ADAPT_ROWS, FEATURES, WEEK_ROWS
from tests.support.cli import run_fedmeta
from tests.support.docs import example

pytestmark = pytest.mark.usefixtures("shared_ray")  # the walkthrough's simulations join the session's Ray

WRITE_PLANTS = "fedmeta example-plants --out floor"
ROUNDS = {"nonlinear": 30, "linear": 10, "large-units": 10}  # the other families run shorter: the suite's time


def walkthrough(family: str = "nonlinear") -> str:
    """The bash block of factory-operator.md that says this module runs it, on plants of ``family``."""
    (block,) = example("docs/factory-operator.md", "bash", marker="run by tests/end_to_end/test_factory_floor.py")
    assert WRITE_PLANTS in block and "--rounds 30" in block
    if family == "nonlinear":
        return block
    return block.replace(WRITE_PLANTS, f"{WRITE_PLANTS} --family {family}").replace(
        "--rounds 30", f"--rounds {ROUNDS[family]}")


def _rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def commands(block: str) -> list[list[str]]:
    """Each command of a bash block, its continued lines joined, as the words after ``fedmeta``."""
    words = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert all(command[0] == "fedmeta" for command in words), block
    return [command[1:] for command in words]


def _in_bash(block: str, root: Path) -> None:
    scripts = sysconfig.get_path("scripts")
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, f"{ran.stdout[-4000:]}\n{ran.stderr[-4000:]}"


def _in_process(block: str, root: Path) -> None:
    with chdir(root):
        for command in commands(block):
            code, output = run_fedmeta(*command)
            assert code == 0, f"fedmeta {shlex.join(command)}\n{output[-4000:]}"


@pytest.fixture(scope="module", params=list(ROUNDS))
def floor(request, tmp_path_factory) -> Path:
    """The folder the walkthrough ran in, on plants of each family."""
    root = tmp_path_factory.mktemp(f"walkthrough-{request.param}")
    run = _in_bash if request.param == "nonlinear" else _in_process
    run(walkthrough(request.param), root)
    return root / "floor"


def test_the_simulated_federation_writes_a_package_of_the_tables_schema(floor):
    package = load_package(floor / "run" / "fomaml" / "model")
    schema = package.manifest.schema
    assert (schema.features, schema.target, package.manifest.scaling_rule) == (tuple(FEATURES), "quality",
                                                                               "factory-rows")
    assert package.manifest.round in ROUNDS.values() and "loss-k5" in package.manifest.metrics


def test_the_kept_model_predicts_production_as_well_as_least_squares_and_better_than_unadapted(floor):
    """Measured production RMSE, kept / least squares on the 20 rows / unadapted: nonlinear (30 rounds) 0.515 /
    0.667 / 2.03 (the closed-form head kept), linear (10 rounds) 0.0634 / 0.0634 / 1.107, large units (10 rounds)
    670.2 / 666.6 / 911.5 (30 rounds: 514.9 / 666.6 / 2029)."""
    line = pd.read_csv(floor / "plants" / "line-7.csv")
    later = slice(ADAPT_ROWS + WEEK_ROWS, None)
    actual = line["quality"].to_numpy()[later]
    scored = pd.read_csv(floor / "scored.csv")
    assert list(scored["batch"]) == list(line["batch"].iloc[later])  # every production row, its id carried through
    code, output = run_fedmeta("adapt", "--model", str(floor / "run" / "fomaml" / "model"), "--data",
                               str(floor / "plants" / "line-7.csv"), "--rows", str(ADAPT_ROWS), "--keep", "unadapted",
                               "--out", str(floor / "unadapted"))
    assert code == 0, output
    code, output = run_fedmeta("predict", "--model", str(floor / "unadapted"), "--data",
                               str(floor / "production.csv"), "--out", str(floor / "unadapted.csv"))
    assert code == 0, output
    kept = _rmse(scored["predicted_quality"].to_numpy(), actual)
    unadapted = _rmse(pd.read_csv(floor / "unadapted.csv")["predicted_quality"].to_numpy(), actual)
    design = np.column_stack([line[FEATURES].to_numpy(), np.ones(len(line))])
    fitted, *_ = np.linalg.lstsq(design[:ADAPT_ROWS], line["quality"].to_numpy()[:ADAPT_ROWS], rcond=None)
    least_squares = _rmse(design[later] @ fitted, actual)
    assert kept <= 1.05 * least_squares and kept < 0.9 * unadapted, (kept, least_squares, unadapted)


def test_the_update_kept_both_versions_and_the_rollback_restored_the_first(floor):
    store = floor / "line-7-store"
    assert sorted(path.name for path in (store / "versions").iterdir()) == ["0001", "0002"]
    assert int((store / "CURRENT").read_text()) == 1


def test_the_recommended_settings_stay_within_the_bounds_and_beat_every_point_of_a_grid_over_them(floor):
    """The best recommendation is inside the bounds, and the kept model, scored by `fedmeta predict`, predicts
    no point of a 21 x 21 grid over the controllable ranges (the others at their fixed values) better than it:
    the search found the model's optimum, not merely a setting in range (the midpoint would fail)."""
    bounds = json.loads((floor / "bounds.json").read_text())
    settings = json.loads((floor / "settings.json").read_text())
    best = settings[0]["settings"]
    assert set(best) == set(bounds["controllable"]) and bounds["goal"] == "maximize"
    for name, (low, high) in bounds["controllable"].items():
        assert low <= best[name] <= high
    axes = {name: np.linspace(low, high, 21) for name, (low, high) in bounds["controllable"].items()}
    grid = pd.DataFrame(dict(zip(axes, (values.ravel() for values in np.meshgrid(*axes.values())), strict=True)))
    candidates = pd.concat([grid, pd.DataFrame([best])], ignore_index=True)
    for name, value in bounds["fixed"].items():
        candidates[name] = value
    candidates[list(FEATURES)].to_csv(floor / "grid.csv", index=False)
    code, output = run_fedmeta("predict", "--model", str(floor / "line-7-model"), "--data", str(floor / "grid.csv"),
                               "--out", str(floor / "grid-scored.csv"))
    assert code == 0, output
    predicted = pd.read_csv(floor / "grid-scored.csv")["predicted_quality"].to_numpy()
    spread = predicted.max() - predicted.min()
    assert predicted[-1] >= predicted[:-1].max() - 1e-3 * spread, (predicted[-1], predicted[:-1].max(), spread)
    assert predicted[-1] == pytest.approx(settings[0]["predicted"], rel=1e-4, abs=1e-6)
