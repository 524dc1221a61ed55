"""The fault-injection mod corrupts exactly the chosen nodes' training replies, and the attacks send what they
name (a label flip poisons the data instead)."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, MetricRecord, RecordDict

from fedmeta.common import FactoryData, global_norm, validate_delta
from fedmeta.simulations import fault_injection_mod, parse_fault_spec
from fedmeta.simulations.attacks import flipped_labels
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


def _honest_reply(msg, context):
    """A node serving factories a and b: each an honest delta and its metrics."""
    content = {key: ArrayRecord(torch_state_dict={"w": torch.arange(6.0).reshape(2, 3) + i})
               for i, key in enumerate(KEYS)}
    content |= {f"metrics/{key[6:]}": MetricRecord({"num-examples": 40.0, "loss": 0.5}) for key in KEYS}
    return delivered(RecordDict(content), MessageType.TRAIN, 0)


def _train_message(server_round: int):
    return delivered(RecordDict({"config": ConfigRecord({"server-round": server_round})}), MessageType.TRAIN, 1)


@pytest.mark.parametrize("attack", ["sign-flip", "scaled", "noise", "claim"])
def test_an_attack_passes_the_servers_delta_checks_and_sends_what_it_names(attack):
    bound = 50.0
    mod = fault_injection_mod(f"1:{attack}", max_delta_norm=bound)
    honest = _honest_reply(None, None)
    sent = mod(_train_message(3), _context(1), _honest_reply)
    for index, key in enumerate(KEYS):  # every factory the node serves
        delta, original = sent.content[key].to_torch_state_dict(), honest.content[key].to_torch_state_dict()
        validate_delta(delta, original, max_norm=bound)  # inside the bound: only aggregation can resist it
        claimed = sent.content[f"metrics/{key[6:]}"]["num-examples"]
        if attack == "sign-flip":
            assert torch.equal(delta["w"], -original["w"])
        elif attack in ("scaled", "noise"):
            assert global_norm(delta) == pytest.approx(0.99 * bound)
            cosine = torch.nn.functional.cosine_similarity(delta["w"].flatten(), original["w"].flatten(), dim=0)
            assert cosine == pytest.approx(1.0) if attack == "scaled" else abs(cosine) < 0.99
        else:
            assert torch.equal(delta["w"], original["w"]) and claimed == 40.0 * 1e6
        assert claimed == 40.0 or attack == "claim"
        assert sent.content[f"metrics/{key[6:]}"]["loss"] == 0.5, index


def test_noise_is_drawn_anew_each_round_and_the_same_for_a_rerun():
    mod = fault_injection_mod("1:noise")

    def noise(server_round: int) -> torch.Tensor:
        return mod(_train_message(server_round), _context(1), _honest_reply).content[KEYS[0]].to_torch_state_dict()["w"]

    assert torch.equal(noise(2), noise(2)) and not torch.equal(noise(2), noise(3))


def test_a_label_flip_negates_regression_targets_and_reverses_class_ids():
    regression = FactoryData("r", torch.zeros(3, 2), torch.tensor([1.0, -2.0, 0.5]))
    assert torch.equal(flipped_labels(regression, "regression", 1).y, torch.tensor([-1.0, 2.0, -0.5]))
    classes = FactoryData("c", torch.zeros(4, 2), torch.tensor([0, 1, 2, 2]))
    flipped = flipped_labels(classes, "classification", 3)
    assert torch.equal(flipped.y, torch.tensor([2, 1, 0, 0])) and torch.equal(flipped.x, classes.x)
