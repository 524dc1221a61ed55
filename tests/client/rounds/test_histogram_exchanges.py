"""A factory's part in xgb-histogram, through the real ClientApp: its replies hold a column sketch, level
histograms or recipe losses and nothing else (never a row); their sums are its rows' gradient sums; a malformed
request is refused by name; its policy counts the round's first exchange once and answers the later ones only
for a round it joined."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from fedmeta.client import load_factory, make_client_app
from fedmeta.client.rounds.joined_rounds import JoinedRounds
from fedmeta.client.rounds.policy import PolicyRefusal
from fedmeta.client.rounds.trees import factory_tree_shape
from fedmeta.common import RoundSettings
from fedmeta.common.data.scaling import TargetScaling
from fedmeta.common.federation import protocol
from fedmeta.common.trees.continuation import RECIPE_LOSS_PREFIX
from fedmeta.common.trees.ensemble import EMPTY_ENSEMBLE
from fedmeta.common.trees.histogram_wire import unpack_histogram
from fedmeta.common.trees.histograms import LevelSplits
from fedmeta.common.trees.split_finding import merge_sketches
from fedmeta.server.strategy.histogram_trees import histogram_model_records
from tests.support.flower_messages import delivered

RUN_CONFIG = {"family": "quality", "num-factories": 3, "num-held-out": 1, "device": "cpu"}
SETTINGS = RoundSettings(algorithm="xgb-histogram", server_round=1, tree_depth=3)
BINS = SETTINGS.tree_bins


@pytest.fixture(scope="module")
def client_app():
    return make_client_app(RUN_CONFIG)


@pytest.fixture(scope="module")
def factory():
    return load_factory({"partition-id": 1}, RUN_CONFIG)


def _context(policy: str | None = None, partition: int = 1) -> Context:
    node_config = {"partition-id": partition} | ({"policy": policy} if policy else {})
    return Context(run_id=1, node_id=11, node_config=node_config, state=RecordDict(), run_config={})


def _ask(app, context: Context, exchange: str, *, edges: np.ndarray | None = None, opens_round: bool = True,
         settings: RoundSettings = SETTINGS, **fields):
    config = ConfigRecord({**settings.to_config(), protocol.TREE_EXCHANGE: exchange,
                           protocol.OPENS_ROUND: opens_round, **fields})
    records = RecordDict({**histogram_model_records(EMPTY_ENSEMBLE, edges), protocol.CONFIG: config})
    return app(delivered(records, exchange, 11), context)


def _edges(app) -> np.ndarray:
    """The edges a server would set from this factory's sketch alone."""
    reply = _ask(app, _context(), protocol.TREE_SKETCH)
    sketch = next(iter(reply.content[protocol.SKETCH].values())).numpy()
    return merge_sketches([(sketch, 1.0)], BINS)


def _level(splits: LevelSplits) -> dict[str, str]:
    return {protocol.LEVEL_SPLITS: json.dumps(splits.to_json())}


def test_a_sketch_reply_holds_the_columns_quantiles_and_the_row_count_only(client_app, factory):
    reply = _ask(client_app, _context(), protocol.TREE_SKETCH)
    assert not reply.has_error() and set(reply.content.keys()) == {protocol.SKETCH, protocol.METRICS}
    sketch = next(iter(reply.content[protocol.SKETCH].values())).numpy()
    assert sketch.shape == (factory_tree_shape(factory).num_feature, BINS - 1)  # whatever the rows
    assert dict(reply.content[protocol.METRICS]) == {protocol.NUM_EXAMPLES: factory.data.num_samples}
    coarse = _ask(client_app, _context(), protocol.TREE_SKETCH,
                  settings=RoundSettings(algorithm="xgb-histogram", server_round=1, tree_bins=16))
    assert next(iter(coarse.content[protocol.SKETCH].values())).numpy().shape[1] == 15  # the run's tree-bins


def test_a_level_reply_holds_the_rows_gradient_sums_per_bin_and_nothing_else(client_app, factory):
    edges = _edges(client_app)
    reply = _ask(client_app, _context(), protocol.TREE_HISTOGRAMS, edges=edges, opens_round=True,
                 **_level(LevelSplits(1, {(0, 0): (2, 30)})))
    assert not reply.has_error() and set(reply.content.keys()) == {protocol.HISTOGRAMS}
    (packed,) = [array.numpy() for array in reply.content[protocol.HISTOGRAMS].values()]
    columns = factory_tree_shape(factory).num_feature
    histogram = unpack_histogram(packed, (2, columns, BINS, 2))  # two open nodes: sums, not rows
    # at the empty ensemble a row's gradient is minus its standardised target, its hessian 1: the two nodes
    # together hold every row once, in every column
    y = TargetScaling.fit(factory.data.y).apply(factory.data.y).double().numpy()
    totals = histogram.sum(axis=(0, 2))  # [columns, 2]
    assert np.allclose(totals[:, 0], -y.sum()) and np.allclose(totals[:, 1], len(y))


def test_the_recipe_exchange_reports_query_losses_only(client_app, factory):
    reply = _ask(client_app, _context(), protocol.TREE_RECIPES, opens_round=False,
                 settings=RoundSettings(algorithm="xgb-histogram", server_round=1, recipe_shots=(5,)))
    assert set(reply.content.keys()) == {protocol.METRICS}
    metrics = dict(reply.content[protocol.METRICS])
    assert set(metrics) - {protocol.NUM_EXAMPLES} and all(key.startswith(f"{RECIPE_LOSS_PREFIX}-k5/")
                                                          for key in set(metrics) - {protocol.NUM_EXAMPLES})
    assert all(math.isfinite(value) for value in metrics.values())


@pytest.mark.parametrize(("fields", "named"), [
    ({protocol.LEVEL_SPLITS: json.dumps({"level": 5, "splits": []})}, "level 5 outside"),
    ({protocol.LEVEL_SPLITS: json.dumps({"level": 1, "splits": [[0, 0, 10_000, 3]]})}, "outside this federation"),
    ({protocol.LEVEL_SPLITS: "{"}, "Expecting"),
])
def test_a_malformed_level_request_is_refused_by_name(client_app, fields, named):
    with pytest.raises(ValueError, match=named):
        _ask(client_app, _context(), protocol.TREE_HISTOGRAMS, edges=_edges(client_app), **fields)


@pytest.mark.parametrize(("edges", "named"), [
    (lambda e: e[:, ::-1].copy(), "ascend"),
    (lambda e: e.astype(np.float64), "float32"),
    (lambda e: e[:-1], "float32 \\["),
    (lambda e: np.where(np.arange(e.shape[1]) == 3, np.nan, e).astype(np.float32), "ascend"),
])
def test_bin_edges_a_factory_cannot_bin_on_are_refused_by_name(client_app, edges, named):
    with pytest.raises(ValueError, match=named):
        _ask(client_app, _context(), protocol.TREE_HISTOGRAMS, edges=edges(_edges(client_app)),
             **_level(LevelSplits(0, {})))


def _policy(tmp_path, **rules) -> str:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(rules))
    return str(path)


def test_a_policy_without_trees_refuses_the_first_exchange_by_name(client_app, tmp_path):
    with pytest.raises(PolicyRefusal, match=r"no tree rounds \(trees: false\)"):
        _ask(client_app, _context(_policy(tmp_path, trees=False)), protocol.TREE_SKETCH)


def test_a_round_counts_once_and_a_round_not_joined_gets_no_answer(client_app, tmp_path):
    context = _context(_policy(tmp_path, max_rounds=1))
    edges = _edges(client_app)
    _ask(client_app, context, protocol.TREE_HISTOGRAMS, edges=edges, opens_round=True, **_level(LevelSplits(0, {})))
    for level in (LevelSplits(0, {}), LevelSplits(1, {(0, 0): (0, 10)})):  # the same round's later levels
        reply = _ask(client_app, context, protocol.TREE_HISTOGRAMS, edges=edges, opens_round=False, **_level(level))
        assert set(reply.content.keys()) == {protocol.HISTOGRAMS}
    assert JoinedRounds(context.state).count() == 1
    second = RoundSettings(algorithm="xgb-histogram", server_round=2, tree_depth=3)
    with pytest.raises(PolicyRefusal, match="max_rounds"):
        _ask(client_app, context, protocol.TREE_HISTOGRAMS, edges=edges, settings=second, **_level(LevelSplits(0, {})))
    with pytest.raises(PolicyRefusal, match="round 2 was not joined"):
        _ask(client_app, context, protocol.TREE_HISTOGRAMS, edges=edges, settings=second, opens_round=False,
             **_level(LevelSplits(0, {})))
