"""Federated trees end to end in-process: the real ClientApp's tree replies hold its new trees and numeric
metrics only, the server's `TreeStrategy` appends the good ones and leaves out the bad, samples only
training factories (cyclic: one in turn), and the settings refuse what trees cannot honour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, MessageType, MetricRecord, RecordDict

from fedmeta.client import load_factory, make_client_app
from fedmeta.client.rounds.trees import factory_tree_shape
from fedmeta.common import EvaluationSettings, RoundSettings
from fedmeta.common.federation import protocol
from fedmeta.common.trees.continuation import RECIPE_LOSS_PREFIX, TREE_RECIPES
from fedmeta.common.trees.ensemble import EMPTY_ENSEMBLE, load_ensemble
from fedmeta.server import NodeInfo, SamplingSettings, ServerSettings
from fedmeta.server.strategy.trees import TreeStrategy, ensemble_bytes, ensemble_records
from tests.support.flower_messages import act_as_server_task, delivered, reply_from

RUN_CONFIG = {"family": "quality", "num-factories": 3, "num-held-out": 1, "device": "cpu"}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    act_as_server_task(monkeypatch)


@pytest.fixture(scope="module")
def client_app():
    return make_client_app(RUN_CONFIG)


def _send(app, partition: int, message_type: str, ensemble: bytes, config: dict) -> object:
    context = Context(run_id=1, node_id=10 + partition, node_config={"partition-id": partition, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    records = RecordDict({**ensemble_records(ensemble), protocol.CONFIG: ConfigRecord(config)})
    return app(delivered(records, message_type, 10 + partition), context)


def _shape():
    return factory_tree_shape(load_factory({"partition-id": 0}, RUN_CONFIG))


def _strategy(cyclic: bool = False, max_leaf: float = 50.0) -> TreeStrategy:
    settings = RoundSettings(algorithm="xgb-bagging")
    strategy = TreeStrategy(EMPTY_ENSEMBLE, SamplingSettings(1.0, 2, max_leaf, seed=0), _shape(),
                            settings.tree_settings(), cyclic=cyclic)
    strategy.nodes = {n: NodeInfo("train", f"factory-{n}") for n in range(3)} | {3: NodeInfo("evaluate", "new")}
    return strategy


def _round(app, ensemble: bytes, server_round: int, **overrides) -> list:
    config = RoundSettings(algorithm="xgb-bagging", server_round=server_round, tree_factories=3,
                           **overrides).to_config()
    return [_send(app, partition, MessageType.TRAIN, ensemble, config) for partition in range(3)]


def test_a_tree_reply_holds_only_the_new_trees_and_numeric_metrics(client_app):
    reply = _round(client_app, EMPTY_ENSEMBLE, 1, local_trees=2)[1]
    assert not reply.has_error()
    assert set(reply.content.keys()) == {protocol.TREES, protocol.METRICS}
    assert dict(reply.content[protocol.METRICS]) == {protocol.NUM_EXAMPLES: pytest.approx(
        load_factory({"partition-id": 1}, RUN_CONFIG).data.num_samples)}
    trees = ensemble_bytes(reply.content[protocol.TREES])
    assert load_ensemble(trees).num_boosted_rounds() == 2  # the round's trees, nothing else
    document = json.loads(trees)
    assert set(document) == {"learner", "version"}  # an XGBoost model and nothing beside it


def test_the_last_round_reports_each_recipes_query_loss_and_nothing_else(client_app):
    reply = _round(client_app, EMPTY_ENSEMBLE, 1, recipe_shots=(5,))[0]
    metrics = dict(reply.content[protocol.METRICS])
    expected = {protocol.NUM_EXAMPLES} | {f"{RECIPE_LOSS_PREFIX}-k5/{recipe.name}" for recipe in TREE_RECIPES}
    assert set(metrics) == expected
    assert all(isinstance(v, float | int) and math.isfinite(v) for v in metrics.values())


def test_a_held_out_factory_never_boosts_and_evaluates_after_the_recipe(client_app):
    config = RoundSettings(algorithm="xgb-bagging", server_round=1).to_config()
    with pytest.raises(ValueError, match="held out"):
        _send(client_app, 3, MessageType.TRAIN, EMPTY_ENSEMBLE, config)
    evaluation = EvaluationSettings(algorithm="xgb-bagging", shots=(1, 5), tasks=3, tree_recipes=("5=20x0.1",))
    reply = _send(client_app, 3, MessageType.EVALUATE, EMPTY_ENSEMBLE, evaluation.to_config())
    metrics = dict(reply.content[protocol.METRICS])
    for key in ("loss-k0", "loss-k1", "loss-k5", "linear-loss-k5", "chosen-loss-k5"):
        assert math.isfinite(metrics[key]), key
    assert metrics["loss-k5"] < metrics["loss-k0"]  # 20 trees on the 5 rows beat none


def test_the_strategy_appends_good_trees_and_leaves_out_bad_ones(client_app):
    strategy = _strategy()
    replies = _round(client_app, EMPTY_ENSEMBLE, 1)
    corrupt = RecordDict({protocol.TREES: ArrayRecord([np.frombuffer(b"{not json", dtype=np.uint8)]),
                          protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 10})})
    replies[2] = reply_from(2, corrupt)
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["rejected"] == 1 and metrics["replies"] == 2
    assert load_ensemble(strategy.ensemble).num_boosted_rounds() == 2
    # A factory whose reply failed is left out too; the others' trees are appended.
    replies = _round(client_app, strategy.ensemble, 2)
    replies[0] = reply_from(0, Error(code=0, reason="factory crashed mid-round"))
    _, metrics = strategy.aggregate_train(2, replies)
    assert metrics["rejected"] == 1 and load_ensemble(strategy.ensemble).num_boosted_rounds() == 4


def test_a_leaf_beyond_the_bound_is_left_out(client_app):
    strategy = _strategy(max_leaf=1e-9)
    _, metrics = strategy.aggregate_train(1, _round(client_app, EMPTY_ENSEMBLE, 1))
    assert metrics["rejected"] == 3 and metrics["model-unchanged"] == 1
    assert strategy.ensemble == EMPTY_ENSEMBLE


def test_bagging_samples_training_factories_and_cyclic_one_in_turn():
    assert sorted(seat.node for seat in _strategy().sample_train(1)) == [0, 1, 2]  # never the held-out node 3
    cyclic = _strategy(cyclic=True)
    assert [[seat.node for seat in cyclic.sample_train(r)] for r in (1, 2, 3, 4)] == [[0], [1], [2], [0]]


@pytest.mark.parametrize(("setting", "named"), [
    ({"secure-aggregation": True}, "secure aggregation"),
    ({"dp-noise-multiplier": 1.0}, "differential privacy"),
    ({"compression": "int8"}, "compression"),
    ({"aggregation": "median"}, "robust rule"),
])
def test_the_tree_family_refuses_what_it_cannot_honour_by_name(setting, named):
    with pytest.raises(ValueError, match=rf"xgb-bagging: .*{named}"):
        ServerSettings.from_run_config({"algorithm": "xgb-bagging", **setting})
