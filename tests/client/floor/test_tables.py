"""A factory client trains and evaluates on its own table, read through the connector."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, MessageType, RecordDict

from fedmeta.client import make_client_app
from fedmeta.common import EvaluationSettings, RoundSettings, TableSource, source_from_config
from fedmeta.common.data.connector import DataValidationError
from fedmeta.common.federation.compression import Compression, decode_delta
from fedmeta.server import initial_meta_parameters
from fedmeta.server.strategy.fedmeta import model_records
from tests.support.flower_messages import delivered

FEATURES = ["temperature", "pressure", "speed"]


def _write_factory(path, rows: int, gain: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.normal(size=(rows, 3)), columns=FEATURES)
    table["quality"] = gain * table["temperature"] - table["pressure"] + 0.1 * rng.normal(size=rows)
    table.to_csv(path, index=False)


@pytest.fixture()
def federation(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    for name, gain, seed in (("plant-a", 1.0, 0), ("plant-new", -1.0, 1)):
        _write_factory(tmp_path / f"{name}.csv", rows=60, gain=gain, seed=seed)
    return tmp_path, {"schema": str(schema), "device": "cpu"}


def _call(app, node_config, message_type, records):
    context = Context(run_id=1, node_id=3, node_config=node_config, state=RecordDict(), run_config={})
    return app(delivered(RecordDict(records), message_type, 3), context)


def _records(params, settings):
    return {**model_records(params), "config": ConfigRecord(settings.to_config())}


def test_server_and_client_agree_on_the_model_from_the_shared_schema(federation):
    _, run_config = federation
    source = source_from_config(run_config)
    assert isinstance(source, TableSource)
    assert source.model_config.input_shape == (3,) and source.model_config.output_dim == 1


def test_factory_table_trains_and_a_new_factory_table_evaluates(federation):
    folder, run_config = federation
    app = make_client_app(run_config)
    params = initial_meta_parameters(source_from_config(run_config), "maml", 0.05, seed=0)

    query = _call(app, {"data-path": str(folder / "plant-a.csv")}, MessageType.QUERY, {})
    assert dict(query.content["role"]) == {"role": "train", "factory": "plant-a"}

    train = _call(app, {"data-path": str(folder / "plant-a.csv")}, MessageType.TRAIN,
                  _records(params, RoundSettings(local_steps=2, server_round=1)))
    assert set(train.content.keys()) == {"delta", "metrics"}
    delta = decode_delta(train.content["delta"].to_torch_state_dict(), Compression(), params)
    assert list(delta) == sorted(params)
    assert train.content["metrics"]["num-examples"] == 60

    node = {"data-path": str(folder / "plant-new.csv"), "role": "evaluate"}
    evaluate = _call(app, node, MessageType.EVALUATE, _records(params, EvaluationSettings(shots=(5,), tasks=3)))
    assert {"loss-k0", "loss-k5"} <= set(evaluate.content["metrics"].keys())
    chosen = _call(app, node, MessageType.EVALUATE,
                   _records(params, EvaluationSettings(shots=(5,), tasks=3, recipe="cross-validated")))
    metrics = chosen.content["metrics"]
    assert metrics["loss-k0"] == evaluate.content["metrics"]["loss-k0"]  # the unadapted model is the same
    assert 0 <= metrics["recipe-unadapted-k5"] <= 1 and 0 <= metrics["recipe-steps-k5"] <= 10


def test_broken_factory_table_stops_the_client_naming_the_problem(federation):
    folder, run_config = federation
    broken = folder / "broken.csv"
    pd.read_csv(folder / "plant-a.csv").drop(columns=["pressure"]).to_csv(broken, index=False)
    with pytest.raises(DataValidationError, match="pressure"):
        _call(make_client_app(run_config), {"data-path": str(broken)}, MessageType.QUERY, {})


def test_node_without_data_path_or_with_a_bad_role_is_refused(federation):
    folder, run_config = federation
    app = make_client_app(run_config)
    with pytest.raises(ValueError, match="no 'data-path'"):
        _call(app, {}, MessageType.QUERY, {})
    with pytest.raises(ValueError, match="unknown role 'teach'"):
        _call(app, {"data-path": str(folder / "plant-a.csv"), "role": "teach"}, MessageType.QUERY, {})


def test_classification_schema_must_fix_the_class_order(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "fault", "task": "classification"}))
    with pytest.raises(ValueError, match="must list 'classes'"):
        source_from_config({"schema": str(schema)})


def test_a_table_factory_sees_its_features_standardised_with_its_own_rows(federation):
    folder, run_config = federation
    table = pd.read_csv(folder / "plant-a.csv")
    table[FEATURES] = table[FEATURES] * [10.0, 0.1, 1.0] + [300.0, -2.0, 0.0]  # another plant's units and set points
    table.to_csv(folder / "plant-a.csv", index=False)
    source = source_from_config(run_config)
    (factory,) = source.node_factories({"data-path": str(folder / "plant-a.csv")})
    raw = table[FEATURES].to_numpy()
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0, ddof=1)
    np.testing.assert_allclose(factory.data.x.numpy(), expected, atol=1e-5)
    assert source.scaling_rule == "factory-rows"
    assert source.package_schema.features == tuple(FEATURES) and source.package_schema.target == "quality"


@pytest.mark.parametrize("tables", [False, True], ids=["a factory's table", "simulated tables"])
def test_a_reading_near_a_million_is_standardised_by_its_own_hundredths(federation, tables):
    """Tables are read in float64 and scaled before the cast: in float32, 1e6 + 0.01 is 1e6."""
    folder, run_config = federation
    table = pd.read_csv(folder / "plant-a.csv")
    table["temperature"] = 1e6 + table["temperature"] / 100  # a flow meter: hundredths on a million
    table.to_csv(folder / "plant-a.csv", index=False, float_format="%.10f")
    raw = pd.read_csv(folder / "plant-a.csv")[FEATURES].to_numpy()
    if tables:
        run_config = {**run_config, "tables": str(folder / "*.csv"), "held-out-tables": "plant-new"}
        node = {"partition-id": 0}
    else:
        node = {"data-path": str(folder / "plant-a.csv")}
    (factory,) = source_from_config(run_config).node_factories(node)
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0, ddof=1)
    np.testing.assert_allclose(factory.data.x.numpy(), expected, atol=1e-5)
