"""A federation of factories' own long-format sensor tables (one row per time step of a unit) trains a
window model when the shared schema names a window length: each factory's examples are the windows of
its own scaled rows within each unit, the run packages a window model a new factory can adapt and
predict with, and a table the connector refuses stops the run, by name, before the engine starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmeta.simulations.harness as harness
from fedmeta.common import source_from_config
from fedmeta.common.data.connector import DataSchema, DataValidationError, SchemaError
from fedmeta.common.package.model_package import load_package
from tests.support.cli import run_fedmeta

SENSORS = ["s0", "s1", "s2"]
WINDOW = 10
HELD_OUT = "plant-5"


def _plant(generator: np.random.Generator, units: int) -> pd.DataFrame:
    """Units wearing out: each sensor follows the unit's health (1 when new, 0 at failure) with this plant's
    gain and curve, under noise that only a window averages away; the target is the RUL, capped at 50."""
    gains, curve = generator.uniform(0.5, 2.0, 3) * generator.choice([-1, 1], 3), generator.uniform(1.5, 3.0)
    frames = []
    for unit in range(units):
        life = int(generator.integers(40, 80))
        cycle = np.arange(1, life + 1)
        health = 1 - (cycle / life) ** curve
        sensors = gains * health[:, None] + generator.normal(0, 0.15, (life, 3))
        frames.append(pd.DataFrame(sensors, columns=SENSORS).assign(unit=f"u{unit}", cycle=cycle,
                                                                    rul=np.minimum(life - cycle, 50.0)))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture()
def plants(tmp_path) -> Path:
    """Six plant tables (plant-5 held out) and their schema with a window of 10 cycles."""
    generator = np.random.default_rng(0)
    for index in range(6):
        _plant(generator, units=6).to_csv(tmp_path / f"plant-{index}.csv", index=False)
    (tmp_path / "schema.json").write_text(json.dumps({"features": SENSORS, "target": "rul", "task": "regression",
                                                      "group_column": "unit", "time_column": "cycle",
                                                      "window": WINDOW}))
    return tmp_path


def _run_config(folder: Path) -> dict[str, object]:
    return {"tables": str(folder / "plant-*.csv"), "schema": str(folder / "schema.json"),
            "held-out-tables": HELD_OUT, "device": "cpu"}


@pytest.mark.parametrize(("settings", "problem"), [
    ({"group_column": "unit"}, "name 'time_column' too"),
    ({"time_column": "cycle"}, "name 'group_column' too"),
    ({"group_column": "unit", "time_column": "cycle", "window": 1}, "at least 2, got 1"),
    ({"group_column": "unit", "time_column": "cycle", "window": "10"}, "at least 2, got '10'"),
])
def test_a_window_schema_needs_a_group_and_a_time_column_and_at_least_two_rows(settings, problem):
    with pytest.raises(SchemaError, match=problem):
        DataSchema.from_mapping({"features": SENSORS, "target": "rul", "task": "regression", "window": 10} | settings)


def test_a_factory_learns_from_windows_of_its_own_scaled_rows_that_never_cross_units(plants):
    source = source_from_config(_run_config(plants))
    assert (source.model_config.name, source.model_config.input_shape) == ("tcn", (3, WINDOW))
    assert (source.package_schema.group_column, source.package_schema.time_column) == ("unit", "cycle")
    (factory,) = source.node_factories({"partition-id": 0})
    table = pd.read_csv(plants / "plant-0.csv")
    raw = table[SENSORS].to_numpy()
    scaled = (raw - raw.mean(axis=0)) / raw.std(axis=0, ddof=1)
    units = table.groupby("unit", sort=False).size()
    units_in_order = list(units.index)  # groups are numbered by first appearance in the file
    assert len(factory.data.y) == int((units - WINDOW + 1).sum())  # a window per row with 9 rows before it
    for index in (0, len(factory.data.y) // 2, len(factory.data.y) - 1):
        window = factory.data.x[index].numpy()  # [channels, cycles]
        ends = np.flatnonzero(np.isclose(scaled[:, 0], window[0, -1], atol=1e-5))
        (end,) = [e for e in ends if np.allclose(scaled[e - WINDOW + 1:e + 1].T, window, atol=1e-5)]
        assert table["unit"].iloc[end - WINDOW + 1] == table["unit"].iloc[end]  # one unit's cycles, in order
        assert np.array_equal(table["cycle"].iloc[end - WINDOW + 1:end + 1], np.arange(1, WINDOW + 1)
                              + table["cycle"].iloc[end] - WINDOW)
        assert factory.data.y[index] == table["rul"].iloc[end]
        assert factory.data.groups[index] == units_in_order.index(table["unit"].iloc[end])  # its unit, for CV


def test_a_refused_table_stops_the_simulation_before_the_engine_starts(plants, monkeypatch):
    table = pd.read_csv(plants / "plant-2.csv")
    table.loc[7, "s1"] = np.nan
    table.to_csv(plants / "plant-2.csv", index=False)
    monkeypatch.setattr(harness, "_run_simulation", lambda **_: pytest.fail("the engine started"))
    with pytest.raises(DataValidationError, match=r"(?s)plant-2\.csv.*'s1' has 1 missing value"):
        harness.run_federated_simulation(_run_config(plants) | {"run-dir": str(plants / "run")})
    code, output = run_fedmeta("simulate", "--tables", str(plants / "plant-*.csv"), "--schema",
                               str(plants / "schema.json"), "--held-out", HELD_OUT, "--out", str(plants / "run"))
    assert code == 1 and "error: factory data" in output and "plant-2.csv" in output, output
    assert not (plants / "run").exists()


def test_a_federation_of_window_tables_packages_a_window_model_a_new_factory_adapts_and_predicts_with(plants):
    run = plants / "run"
    code, output = run_fedmeta("simulate", "--tables", str(plants / "plant-*.csv"), "--schema",
                               str(plants / "schema.json"), "--held-out", HELD_OUT, "--algorithm", "fomaml",
                               "--rounds", "3", "--no-baseline", "--out", str(run))
    assert code == 0, output
    package = load_package(run / "fomaml" / "model")
    manifest = package.manifest
    assert (manifest.model.name, manifest.window_length, manifest.scaling_rule) == ("tcn", WINDOW, "factory-rows")
    assert (manifest.schema.group_column, manifest.schema.time_column) == ("unit", "cycle")

    line = pd.read_csv(plants / f"{HELD_OUT}.csv")
    labelled = line["unit"].isin(["u0", "u1"])
    line[labelled].to_csv(plants / "labelled.csv", index=False)
    line[~labelled].drop(columns="rul").to_csv(plants / "production.csv", index=False)
    for name, keep in (("adapted", ()), ("unadapted", ("--keep", "unadapted"))):  # the unadapted on the rows' scale
        code, output = run_fedmeta("adapt", "--model", str(run / "fomaml" / "model"), "--data",
                                   str(plants / "labelled.csv"), "--out", str(plants / name), *keep)
        assert code == 0, output
    report = json.loads((plants / "adapted" / "adaptation-report.json").read_text())
    scores = report["scores"]
    assert scores[report["chosen"]]["mse"] < 0.5 * scores["unadapted"]["mse"], scores

    production = line[~labelled].reset_index(drop=True)
    errors = {}
    for name in ("adapted", "unadapted"):
        code, output = run_fedmeta("predict", "--model", str(plants / name), "--data",
                                   str(plants / "production.csv"), "--out", str(plants / f"{name}.csv"))
        assert code == 0, output
        predicted = pd.read_csv(plants / f"{name}.csv")
        assert predicted[["unit", "cycle"]].equals(production[["unit", "cycle"]])  # every row back, in order
        early = production["cycle"] < WINDOW
        assert predicted["predicted_rul"][early].isna().all() and predicted["predicted_rul"][~early].notna().all()
        errors[name] = float(np.sqrt(np.mean((predicted["predicted_rul"] - production["rul"])[~early] ** 2)))
    # Measured: 10.03 kept (the closed-form head) against 11.03 unadapted, on the labelled units' target scale; the
    # other candidates 9.8-10.6 (three rounds of training: the plumbing, not the federation's quality, is tested).
    assert errors["adapted"] < 0.97 * errors["unadapted"], errors
