"""The fault-injection mod corrupts exactly the chosen nodes' training replies."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, Context, MessageType, RecordDict

from fedmeta.simulations import fault_injection_mod, parse_fault_spec
from tests.support.flower_messages import delivered

KEYS = ("delta/a", "delta/b")


def _w(reply, key: str) -> torch.Tensor:
    return reply.content[key].to_torch_state_dict()["w"]


def _reply_with_deltas(msg, context):
    deltas = {key: ArrayRecord(torch_state_dict={"w": torch.ones(2, 3)}) for key in KEYS}
    return delivered(RecordDict(deltas), MessageType.TRAIN, 0)


def _context(partition: int) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": partition}, state=RecordDict(), run_config={})


def test_spec_parsing_names_a_bad_fault():
    assert parse_fault_spec("0:crash, 2:nan") == {0: "crash", 2: "nan"}
    with pytest.raises(ValueError, match="bad fault '1:explode'"):
        parse_fault_spec("1:explode")


def test_every_factory_of_a_faulty_node_is_corrupted_and_other_nodes_are_not():
    mod = fault_injection_mod("1:nan,2:shape,3:crash")
    msg = delivered(RecordDict(), MessageType.TRAIN, 1)
    clean = mod(msg, _context(0), _reply_with_deltas)
    assert all(torch.equal(_w(clean, k), torch.ones(2, 3)) for k in KEYS)
    nan = mod(msg, _context(1), _reply_with_deltas)
    assert all(math.isnan(_w(nan, k)[0, 0]) for k in KEYS)
    shape = mod(msg, _context(2), _reply_with_deltas)
    assert all(_w(shape, k).shape == (7,) for k in KEYS)
    with pytest.raises(RuntimeError, match="injected crash on partition 3"):
        mod(msg, _context(3), _reply_with_deltas)
