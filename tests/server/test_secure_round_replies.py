"""A factory whose reply to a secure round's exchange lacks what the exchange asks for, or holds another type,
is left out of the round as a factory that failed is: the round goes on or fails as the threshold says, and
never ends with the server's KeyError (a number where bytes belong would have allocated that many bytes)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedmeta.common.federation import protocol
from fedmeta.common.security.secure_aggregation import SecureAggregation
from fedmeta.server.secure_round import reply_problem, secure_training_round
from fedmeta.server.strategy import OuterOptimizer, OuterOptimizerConfig
from fedmeta.server.strategy.fedmeta import FedMetaStrategy, NodeInfo, SamplingSettings, Seat
from tests.support.flower_messages import act_as_server_task, delivered

SECAGG, MASKED = protocol.SECAGG, protocol.MASKED
KEYS, SHARES, REVEAL = protocol.SECAGG_KEYS, protocol.SECAGG_SHARES, protocol.SECAGG_REVEAL
TRAIN = MessageType.TRAIN
HONEST = {
    KEYS: RecordDict({SECAGG: ConfigRecord({"mask": b"m" * 32, "share": b"s" * 32})}),
    SHARES: RecordDict({SECAGG: ConfigRecord({"2": b"sealed", "3": b"sealed"})}),
    TRAIN: RecordDict({MASKED: ArrayRecord({"input": Array(np.zeros(4, np.uint64))}),
                       protocol.METRICS: MetricRecord({"num-examples": 10.0})}),
    REVEAL: RecordDict({SECAGG: ConfigRecord({"reveal": b"[]"})}),
}


@pytest.mark.parametrize("kind", list(HONEST))
def test_a_reply_holding_what_its_exchange_asks_for_has_no_problem(kind: str) -> None:
    assert reply_problem(HONEST[kind], kind) is None


@pytest.mark.parametrize(("kind", "content", "named"), [
    (KEYS, RecordDict(), "no 'secagg' record"),
    (KEYS, RecordDict({SECAGG: ConfigRecord({"mask": b"m"})}), "no 'share'"),
    (KEYS, RecordDict({SECAGG: ConfigRecord({"mask": 10**12, "share": b"s"})}), "int for 'mask'"),
    (SHARES, RecordDict({SECAGG: ConfigRecord({"2": "text"})}), "str for '2'"),
    (TRAIN, RecordDict({MASKED: ArrayRecord(), protocol.METRICS: MetricRecord()}), "no 'input'"),
    (TRAIN, RecordDict({MASKED: HONEST[TRAIN][MASKED]}), "no 'metrics' record"),
    (REVEAL, RecordDict({SECAGG: ConfigRecord({"reveal": 3.0})}), "float for 'reveal'"),
])
def test_a_reply_lacking_a_field_or_holding_another_type_is_named(kind: str, content: RecordDict,
                                                                  named: str) -> None:
    assert named in reply_problem(content, kind)


class _AnsweringGrid:
    """A grid whose nodes answer each message with ``replies[node]``, as the SuperLink would deliver them."""

    def __init__(self, replies: dict[int, RecordDict]) -> None:
        self.replies, self.pushed = replies, {}

    def push_messages(self, messages):
        ids = []
        for message in messages:
            ids.append(f"m{len(self.pushed)}")
            self.pushed[ids[-1]] = message
        return ids

    def pull_messages(self, ids):
        return [Message(self.replies[self.pushed[i].metadata.dst_node_id],
                        reply_to=delivered(RecordDict(), self.pushed[i].metadata.message_type,
                                           self.pushed[i].metadata.dst_node_id, message_id=i)) for i in ids]


def test_factories_answering_the_key_exchange_without_keys_are_left_out_and_the_round_fails_cleanly(
        monkeypatch, caplog) -> None:
    sampling = SamplingSettings(min_train_nodes=3, secure=SecureAggregation(enabled=True))
    strategy = FedMetaStrategy(OuterOptimizer({"w": torch.zeros(4)}, OuterOptimizerConfig("sgd", lr=1.0)), sampling)
    seats = [Seat(node, NodeInfo("train", f"plant-{node}")) for node in (11, 12, 13)]
    monkeypatch.setattr(strategy, "sample_train", lambda server_round: seats)
    act_as_server_task(monkeypatch)
    grid = _AnsweringGrid({11: HONEST[KEYS], 12: RecordDict(),
                           13: RecordDict({SECAGG: ConfigRecord({"mask": 10**12, "share": b"s"})})})
    with caplog.at_level(logging.WARNING):
        params, metrics = secure_training_round(grid, strategy, 1, {}, ConfigRecord(), "round-1", timeout=5.0)
    assert params is None and metrics["model-unchanged"] == 1.0 and metrics["secagg-participants"] == 3.0
    assert "node 12 left the secure round: its train.secagg_keys reply has no 'secagg' record" in caplog.text
    assert "node 13 left the secure round" in caplog.text and "int for 'mask'" in caplog.text
    assert "1 of 3 factories answered 'train.secagg_keys'" in caplog.text
