"""The server strategy: weighted delta averaging, validation, failures, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from flower_messages import reply_from
from flwr.app import ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.outer_optimizer import OuterOptimizer, OuterOptimizerConfig
from server.strategy import FedMetaStrategy, NodeInfo, SamplingSettings

PARAMS = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """Outgoing messages take their sender from the running task, as on a real server."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1 if name == "_run_id" else 0)


def _strategy(min_train_nodes: int = 2, max_delta_norm: float = 50.0, fraction: float = 1.0) -> FedMetaStrategy:
    optimizer = OuterOptimizer(PARAMS, OuterOptimizerConfig("sgd", lr=1.0))
    strategy = FedMetaStrategy(optimizer, SamplingSettings(fraction, min_train_nodes, max_delta_norm, seed=0))
    strategy.nodes = {n: NodeInfo("train", f"factory-{n}") for n in range(1, 7)} | {9: NodeInfo("evaluate", "new")}
    return strategy


def _delta_reply(node: int, value: float, examples: int = 10, **overrides) -> object:
    delta = {"w": torch.full((2, 3), value), "b": torch.full((3,), value)} | overrides
    content = RecordDict({
        "delta": ArrayRecord(torch_state_dict=delta),
        "metrics": MetricRecord({"num-examples": examples, "query-loss": value}),
    })
    return reply_from(node, content)


def test_deltas_are_averaged_weighted_by_examples_and_applied():
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, [_delta_reply(1, 1.0, 10), _delta_reply(2, 4.0, 30)])
    expected = (1.0 * 10 + 4.0 * 30) / 40
    new = arrays.to_torch_state_dict()
    torch.testing.assert_close(new["w"], torch.full((2, 3), expected))
    assert metrics["query-loss"] == pytest.approx(expected)
    assert metrics["num-examples"] == 40 and metrics["rejected"] == 0


def test_bad_deltas_and_failed_factories_are_left_out_and_the_round_goes_on():
    strategy = _strategy()
    replies = [
        _delta_reply(1, 1.0),
        _delta_reply(2, 3.0),
        _delta_reply(3, 0.5, w=torch.full((2, 3), math.nan)),  # non-finite
        _delta_reply(4, 0.5, w=torch.zeros(3, 2)),  # wrong shape
        _delta_reply(5, 100.0),  # norm above the bound
        reply_from(6, Error(code=0, reason="factory crashed mid-round")),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["b"], torch.full((3,), 2.0))
    assert metrics["rejected"] == 4 and metrics["replies"] == 2


def test_too_few_valid_deltas_leave_the_global_model_unchanged():
    strategy = _strategy(min_train_nodes=2)
    arrays, metrics = strategy.aggregate_train(1, [_delta_reply(1, 1.0), _delta_reply(2, math.inf)])
    assert arrays is None and metrics is None
    torch.testing.assert_close(strategy.optimizer.params["w"], PARAMS["w"])


def test_missing_num_examples_rejects_the_delta():
    strategy = _strategy(min_train_nodes=1)
    bad = reply_from(1, RecordDict({"delta": ArrayRecord(torch_state_dict=PARAMS), "metrics": MetricRecord({})}))
    arrays, _ = strategy.aggregate_train(1, [bad, _delta_reply(2, 1.0)])
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.ones(2, 3))


def test_training_samples_a_reproducible_fraction_of_training_factories_only():
    strategy = _strategy(fraction=0.5)
    arrays, config = ArrayRecord(torch_state_dict=PARAMS), ConfigRecord({})

    def sampled(server_round: int) -> list[int]:
        return [m.metadata.dst_node_id for m in strategy.configure_train(server_round, arrays, config, grid=None)]

    assert sampled(3) == sampled(3) and len(sampled(3)) == 3
    rounds = [sampled(r) for r in range(1, 11)]
    assert all(set(ids) <= set(range(1, 7)) for ids in rounds)  # node 9 only evaluates
    assert len({tuple(sorted(ids)) for ids in rounds}) > 1  # different factories across rounds


def test_evaluation_goes_to_evaluation_factories_only():
    strategy = _strategy()
    messages = strategy.configure_evaluate(1, ArrayRecord(torch_state_dict=PARAMS), ConfigRecord({}), grid=None)
    assert [m.metadata.dst_node_id for m in messages] == [9]


def test_too_few_connected_training_factories_is_a_clear_error():
    strategy = _strategy(min_train_nodes=8)
    with pytest.raises(RuntimeError, match="only 6 training factories are connected; min_train_nodes is 8"):
        strategy.configure_train(1, ArrayRecord(torch_state_dict=PARAMS), ConfigRecord({}), grid=None)
