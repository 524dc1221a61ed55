"""The server's checks of a factory's training reply: whatever its delta arrays (damaged, of any dtype, any bits)
and whatever it claims as ``num-examples`` (zero, negative, NaN, infinite, a list), the reply is accepted
only as a finite delta within the norm bound that moves the model by a finite step, or left out of the round with
a warning naming the factory and the problem; the round never fails on it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.common.federation import protocol
from fedmeta.common.federation.compression import Compression
from fedmeta.server import FedMetaStrategy, NodeInfo, SamplingSettings
from fedmeta.server.strategy import OuterOptimizer, OuterOptimizerConfig
from tests.fuzz.strategies import FUZZ, REFERENCE, compressed_deltas
from tests.support.flower_messages import act_as_server_task, reply_from

MAX_NORM = 1e3
CLAIMS = st.sampled_from([10, 1, 0, -3, 2.5, 1e-300, 1e308, 2**62, float("nan"), float("inf"), float("-inf"),
                          [1, 2], [], [1.5]])
COMPRESSED_DELTAS = compressed_deltas()
# What a rejection names: the delta's problem, the weight's, or the record the reply lacks.
REASONS = ("delta rejected: ", f"{protocol.NUM_EXAMPLES} must be a positive number", f"'{protocol.METRICS}'",
           f"'{protocol.DELTA}'")


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True, scope="module")
def server_identity():
    """Messages take their sender from the running task, as on a real server."""
    with pytest.MonkeyPatch.context() as patch:
        act_as_server_task(patch)
        yield


@st.composite
def replies(draw: st.DrawFn) -> tuple[RecordDict, Compression]:
    """A training reply's records (either may be missing) and the round's compression."""
    arrays, codec = draw(COMPRESSED_DELTAS)
    records = {protocol.DELTA: ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})}
    metrics = {"query-loss": draw(st.floats())}
    if draw(st.integers(0, 9)):
        metrics[protocol.NUM_EXAMPLES] = draw(CLAIMS)
    records[protocol.METRICS] = MetricRecord(metrics)
    left_out = draw(st.sampled_from((None, None, None, None, None, None, protocol.DELTA, protocol.METRICS)))
    return RecordDict({k: v for k, v in records.items() if k != left_out}), codec


@FUZZ
@given(replies())
def test_a_training_reply_is_applied_as_a_checked_delta_or_left_out_by_name(reply: tuple[RecordDict, Compression]
                                                                             ) -> None:
    content, codec = reply
    strategy = FedMetaStrategy(OuterOptimizer(REFERENCE, OuterOptimizerConfig("sgd", lr=1.0)),
                               SamplingSettings(min_train_nodes=1, max_delta_norm=MAX_NORM))
    strategy.nodes = {7: NodeInfo("train", "plant-7")}
    strategy.codec = codec
    warnings = _Warnings()
    logging.getLogger("fedmeta.server.strategy.fedmeta").addHandler(warnings)
    try:
        arrays, metrics = strategy.aggregate_train(1, [reply_from(7, content)])
    finally:
        logging.getLogger("fedmeta.server.strategy.fedmeta").removeHandler(warnings)
    if arrays is None:
        event("refused")
        assert metrics["rejected"] == 1
        reason = next(m for m in warnings.messages if m.startswith("delta of factory plant-7 from node 7 left out: "))
        assert any(part in reason for part in REASONS), reason
    else:
        event("accepted")
        assert metrics["rejected"] == 0
        step = {name: tensor - REFERENCE[name] for name, tensor in arrays.to_torch_state_dict().items()}
        assert all(bool(torch.isfinite(t).all()) for t in step.values())
        assert float(torch.cat([t.flatten() for t in step.values()]).norm()) <= MAX_NORM * (1 + 1e-6)
