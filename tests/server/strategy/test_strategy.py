"""The server strategy: weighted delta averaging, validation, failures, sampling."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict

from fedmeta.client import load_factories, make_client_app, train_reply
from fedmeta.common import RoundSettings
from fedmeta.server import FedMetaStrategy, NodeInfo, SamplingSettings, exchange, initial_meta_parameters
from fedmeta.server.strategy import OuterOptimizer, OuterOptimizerConfig
from fedmeta.server.strategy.aggregation import AggregationRule
from fedmeta.server.strategy.fedmeta import model_records
from tests.support.flower_messages import act_as_server_task, delivered, delta_record, reply_from

PARAMS = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    act_as_server_task(monkeypatch)


def _strategy(min_train_nodes: int = 2, max_delta_norm: float = 50.0, fraction: float = 1.0) -> FedMetaStrategy:
    optimizer = OuterOptimizer(PARAMS, OuterOptimizerConfig("sgd", lr=1.0))
    strategy = FedMetaStrategy(optimizer, SamplingSettings(fraction, min_train_nodes, max_delta_norm, seed=0))
    strategy.nodes = {n: NodeInfo("train", f"factory-{n}") for n in range(1, 7)} | {9: NodeInfo("evaluate", "new")}
    return strategy


def _delta_reply(node: int, value: float, examples: int = 10, **overrides) -> object:
    delta = {"w": torch.full((2, 3), value), "b": torch.full((3,), value)} | overrides
    content = RecordDict({
        "delta": delta_record(delta),
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
        _delta_reply(4, 0.5, w=torch.zeros(2, 4)),  # too many values
        _delta_reply(5, 100.0),  # norm above the bound
        reply_from(6, Error(code=0, reason="factory crashed mid-round")),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["b"], torch.full((3,), 2.0))
    assert metrics["rejected"] == 4 and metrics["replies"] == 2


def test_a_weight_that_is_not_a_number_is_left_out_by_name(caplog):
    """Found by tests/fuzz: a list as num-examples was left out as "float() argument must be ... not 'list'"."""
    strategy = _strategy(min_train_nodes=1)
    arrays, metrics = strategy.aggregate_train(1, [_delta_reply(1, 1.0, examples=[1, 2]), _delta_reply(2, 1.0)])
    assert metrics["rejected"] == 1 and arrays is not None
    assert "factory-1 from node 1 left out: num-examples must be a positive number, got [1, 2]" in caplog.text


def test_a_selecting_rule_names_the_factories_it_left_out(caplog):
    strategy = _strategy()
    strategy.sampling = dataclasses.replace(strategy.sampling, aggregation=AggregationRule("multi-krum", malicious=1))
    replies = [_delta_reply(1, 1.0), _delta_reply(2, 1.1), _delta_reply(3, 0.9), _delta_reply(4, -5.0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["b"], torch.full((3,), 1.0))
    assert metrics["left-out"] == 1 and metrics["rejected"] == 0 and metrics["replies"] == 4
    assert "multi-krum left out the deltas of factory-4 (kept factory-1, factory-2, factory-3)" in caplog.text
    plain = _strategy().aggregate_train(1, replies)[1]
    assert "left-out" not in plain  # the mean keeps every accepted delta


def test_too_few_valid_deltas_leave_the_global_model_unchanged():
    strategy = _strategy(min_train_nodes=2)
    arrays, metrics = strategy.aggregate_train(1, [_delta_reply(1, 1.0), _delta_reply(2, math.inf)])
    assert arrays is None
    bytes_received = metrics.pop("bytes-received")
    assert dict(metrics) == {"replies": 1.0, "rejected": 1.0, "model-unchanged": 1.0}  # the record says why
    assert bytes_received > 2 * 6 * 4  # both replies' serialised messages, each with a 2x3 float32 delta
    torch.testing.assert_close(strategy.optimizer.params["w"], PARAMS["w"])


def test_missing_num_examples_rejects_the_delta():
    strategy = _strategy(min_train_nodes=1)
    bad = reply_from(1, RecordDict({"delta": delta_record(PARAMS), "metrics": MetricRecord({})}))
    arrays, _ = strategy.aggregate_train(1, [bad, _delta_reply(2, 1.0)])
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.ones(2, 3))


def test_training_samples_a_reproducible_fraction_of_training_factories_only():
    strategy = _strategy(fraction=0.5)
    model, config = model_records(PARAMS), ConfigRecord({})

    def sampled(server_round: int) -> list[int]:
        return [m.metadata.dst_node_id for m in strategy.configure_train(server_round, model, config, grid=None)]

    assert sampled(3) == sampled(3) and len(sampled(3)) == 3
    rounds = [sampled(r) for r in range(1, 11)]
    assert all(set(ids) <= set(range(1, 7)) for ids in rounds)  # node 9 only evaluates
    assert len({tuple(sorted(ids)) for ids in rounds}) > 1  # different factories across rounds


def test_evaluation_goes_to_evaluation_factories_only():
    strategy = _strategy()
    messages = strategy.configure_evaluate(1, model_records(PARAMS), ConfigRecord({}), grid=None)
    assert [m.metadata.dst_node_id for m in messages] == [9]


def test_too_few_connected_training_factories_is_a_clear_error():
    strategy = _strategy(min_train_nodes=8)
    with pytest.raises(RuntimeError, match="only 6 training factories are connected; min_train_nodes is 8"):
        strategy.configure_train(1, model_records(PARAMS), ConfigRecord({}), grid=None)


# --- nodes serving several factories (factories-per-node > 1) ----------------------


def _shared_strategy(min_train_nodes: int = 2) -> FedMetaStrategy:
    strategy = _strategy(min_train_nodes)
    strategy.nodes = {}
    strategy.shared_nodes = {
        7: (NodeInfo("train", "factory-a"), NodeInfo("train", "factory-b"), NodeInfo("evaluate", "new-1")),
        8: (NodeInfo("train", "factory-c"), NodeInfo("train", "factory-d")),
    }
    return strategy


def _shared_reply(node: int, deltas: dict[str, float | torch.Tensor], examples: int = 10) -> object:
    """A shared node's train reply: ``delta/<factory>`` and ``metrics/<factory>`` per factory."""
    content = RecordDict()
    for factory, value in deltas.items():
        w = value if isinstance(value, torch.Tensor) else torch.full((2, 3), value)
        delta = {"w": w, "b": torch.full((3,), 0.0 if isinstance(value, torch.Tensor) else value)}
        content[f"delta/{factory}"] = delta_record(delta)
        content[f"metrics/{factory}"] = MetricRecord({"num-examples": examples, "query-loss": 1.0})
    return reply_from(node, content)


def _train_messages(strategy: FedMetaStrategy) -> dict[int, list[str]]:
    messages = strategy.configure_train(1, model_records(PARAMS), ConfigRecord({}), grid=None)
    return {m.metadata.dst_node_id: list(m.content["factories"]["names"]) for m in messages}


def test_a_shared_node_gets_one_message_naming_its_sampled_training_factories():
    strategy = _shared_strategy()
    assert _train_messages(strategy) == {7: ["factory-a", "factory-b"], 8: ["factory-c", "factory-d"]}
    evaluate = strategy.configure_evaluate(1, model_records(PARAMS), ConfigRecord({}), grid=None)
    assert [(m.metadata.dst_node_id, list(m.content["factories"]["names"])) for m in evaluate] == [(7, ["new-1"])]


def test_each_factory_of_a_shared_node_is_validated_alone_and_a_corrupt_one_left_out():
    strategy = _shared_strategy()
    _train_messages(strategy)
    replies = [
        _shared_reply(7, {"factory-a": 1.0, "factory-b": torch.full((2, 3), math.nan)}),  # b is corrupt
        _shared_reply(8, {"factory-c": 4.0}),  # d failed on the node: its records are missing
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    torch.testing.assert_close(new["w"], torch.full((2, 3), 2.5))  # mean of a and c only
    assert metrics["replies"] == 2 and metrics["rejected"] == 2 and metrics["num-examples"] == 20


def test_a_failed_shared_node_fails_all_its_factories_and_the_others_still_count():
    strategy = _shared_strategy(min_train_nodes=1)
    _train_messages(strategy)
    crashed = reply_from(7, Error(code=0, reason="node crashed"))
    replies = [crashed, _shared_reply(8, {"factory-c": 1.0, "factory-d": 3.0})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["b"], torch.full((3,), 2.0))
    assert metrics["replies"] == 2 and metrics["rejected"] == 2


def test_a_shared_node_cannot_slip_in_deltas_for_factories_it_was_not_asked_for():
    strategy = _shared_strategy(min_train_nodes=1)
    strategy.shared_nodes[7] = (NodeInfo("train", "factory-a"),)
    _train_messages(strategy)
    replies = [_shared_reply(7, {"factory-a": 1.0, "factory-x": 50.0}), _shared_reply(8, {"factory-c": 1.0})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.ones(2, 3))
    assert metrics["replies"] == 2 and metrics["rejected"] == 1  # factory-d sent nothing


def test_sampling_picks_the_same_factories_however_they_are_placed_on_nodes():
    single, shared = _strategy(fraction=0.5), _strategy(fraction=0.5)
    shared.nodes = {}
    shared.shared_nodes = {20: tuple(single.nodes[n] for n in (1, 2, 3)), 21: tuple(single.nodes[n] for n in (4, 5, 6))}
    model, config = model_records(PARAMS), ConfigRecord({})
    for server_round in range(1, 6):
        by_node = {single.nodes[m.metadata.dst_node_id].factory
                   for m in single.configure_train(server_round, model, config, grid=None)}
        by_name = {name for m in shared.configure_train(server_round, model, config, grid=None)
                   for name in m.content["factories"]["names"]}
        assert by_node == by_name


SHARED_CONFIG = {"family": "quality", "num-factories": 5, "num-held-out": 1, "factories-per-node": 3, "device": "cpu"}


def _node_call(app, node: int, content: RecordDict, message_type: str) -> Message:
    """The real ClientApp, called in-process as the simulated node of partition ``node`` (id 100 + node)."""
    context = Context(run_id=1, node_id=100 + node, node_config={"partition-id": node}, state=RecordDict(),
                      run_config={})
    return app(delivered(content, message_type, 100 + node), context)


def _fresh_strategy(params: dict[str, torch.Tensor]) -> FedMetaStrategy:
    return FedMetaStrategy(OuterOptimizer(params, OuterOptimizerConfig("sgd", lr=1.0)), SamplingSettings())


def _discover(strategy: FedMetaStrategy, app, nodes: range) -> None:
    for node in nodes:
        record = _node_call(app, node, RecordDict(), MessageType.QUERY).content["factories"]
        pairs = zip(record["roles"], record["names"], strict=True)
        strategy.shared_nodes[100 + node] = tuple(NodeInfo(role, name) for role, name in pairs)


def _deltas(reply: Message) -> dict[str, dict[str, torch.Tensor]]:
    """factory -> its delta, from a shared node's reply."""
    return {key.removeprefix("delta/"): reply.content[key].to_torch_state_dict()
            for key in reply.content if key.startswith("delta/")}


def test_a_real_shared_node_sends_each_factory_its_own_delta_and_a_corrupt_one_is_left_out_alone():
    app = make_client_app(SHARED_CONFIG)
    factories = [f for node in (0, 1) for f in load_factories({"partition-id": node}, SHARED_CONFIG)]
    trainers = [f for f in factories if f.role == "train"]
    params = initial_meta_parameters(factories[0].source, "fomaml", 0.05, seed=0)
    strategy = _fresh_strategy(params)
    _discover(strategy, app, range(2))
    assert [info.role for info in strategy.shared_nodes[101]] == ["train", "train", "evaluate"]

    settings = RoundSettings(algorithm="fomaml", local_steps=1, server_round=1)
    model = model_records(params)
    round_records = RecordDict({**model, "config": ConfigRecord(settings.to_config())})
    messages = strategy.configure_train(1, model, round_records["config"], grid=None)
    replies = [_node_call(app, m.metadata.dst_node_id - 100, m.content, MessageType.TRAIN) for m in messages]
    sent = {name: delta for reply in replies for name, delta in _deltas(reply).items()}
    assert sorted(sent) == sorted(f.data.name for f in trainers)  # one delta per factory, the held-out one none

    # Each factory's delta is exactly what it sends from a node of its own.
    message = delivered(round_records, MessageType.TRAIN, 1)
    alone = {f.data.name: train_reply(f, message, "cpu", RecordDict()) for f in trainers}
    for name, delta in sent.items():
        want = alone[name]["delta"].to_torch_state_dict()
        assert all(torch.equal(delta[k], want[k]) for k in want)

    corrupt = trainers[1].data.name
    owner = next(reply for reply in replies if f"delta/{corrupt}" in reply.content)
    owner.content[f"delta/{corrupt}"] = ArrayRecord(
        torch_state_dict={k: torch.full_like(t, math.inf) for k, t in sent[corrupt].items()})
    new, metrics = strategy.aggregate_train(1, replies)
    assert metrics["replies"] == len(trainers) - 1 and metrics["rejected"] == 1

    # The others are averaged as if each had been a node of its own.
    kept = [name for name in alone if name != corrupt]
    reference = _fresh_strategy(params)
    reference.nodes = {node: NodeInfo("train", name) for node, name in enumerate(kept)}
    expected, _ = reference.aggregate_train(1, [reply_from(node, alone[name]) for node, name in enumerate(kept)])
    for name, tensor in expected.to_torch_state_dict().items():
        assert torch.equal(new.to_torch_state_dict()[name], tensor)


class _SlowGrid:
    """Replies to message i arrive on pull number ``i + 1``; message ``never`` never answers."""

    def __init__(self, never: int | None = None) -> None:
        self.never, self.pulls, self.sent = never, 0, []

    def push_messages(self, messages):
        self.sent = list(messages)
        return [str(i) for i in range(len(self.sent))]

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [int(i) for i in message_ids if int(i) < self.pulls and int(i) != self.never]
        return [Message(RecordDict(), reply_to=delivered(RecordDict(), "train", 1, message_id=str(i))) for i in ready]


def test_exchange_collects_replies_over_several_pulls():
    grid = _SlowGrid()
    replies = exchange(grid, [None] * 3, timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["0", "1", "2"] and grid.pulls == 3


def test_exchange_returns_what_arrived_when_the_timeout_passes(caplog):
    messages = [delivered(RecordDict(), "train", node, message_id=f"to-{node}") for node in (5, 6)]
    replies = exchange(_SlowGrid(never=1), messages, timeout=0.05)
    assert [r.metadata.reply_to_message_id for r in replies] == ["0"]
    assert "node 6 did not answer its train message within the 0.05 s timeout" in caplog.text


class _LostNodeGrid:
    """The SuperLink's own answer for a node that missed its heartbeats: an error from node 1 (the SuperLink)."""

    def push_messages(self, messages):
        self.sent = list(messages)
        for message in self.sent:
            message.metadata.__dict__["_message_id"] = message.object_id
        return [message.metadata.message_id for message in self.sent]

    def pull_messages(self, message_ids):
        superlink = delivered(RecordDict(), "train", 1, message_id=self.sent[0].metadata.message_id)
        return [Message(Error(code=0, reason="Node Unavailable: no heartbeat"), reply_to=superlink)]


def test_a_lost_nodes_error_from_the_superlink_counts_as_that_nodes_reply(caplog):
    strategy = _strategy()
    sent = [Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)]
    (reply,) = exchange(_LostNodeGrid(), sent, timeout=10)
    assert reply.metadata.src_node_id == 3 and reply.error.reason == "Node Unavailable: no heartbeat"
    strategy.aggregate_train(1, [reply, _delta_reply(1, 1.0), _delta_reply(2, 1.0)])
    assert "factory factory-3 on node 3 failed this round: Node Unavailable: no heartbeat" in caplog.text


class _RefusingGrid:
    """Flower's grid when the batch was too large to push: no ids (it logs why)."""

    def push_messages(self, messages):
        return []

    def pull_messages(self, message_ids):
        raise AssertionError("nothing was pushed, so nothing is pulled")


def test_a_batch_flower_could_not_push_gets_no_replies():
    assert exchange(_RefusingGrid(), [None] * 3, timeout=10) == []
