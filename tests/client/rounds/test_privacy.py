"""What a factory client sends: deltas and metrics only, never raw data or full weights.

The real `ClientApp` is called in-process with messages as the SuperLink delivers them,
and every reply is inspected record by record.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, MetricRecord, RecordDict

from fedmeta.client import load_factory, make_client_app, sampler_for
from fedmeta.common import EvaluationSettings, RoundSettings, build_model, meta_train
from fedmeta.common.federation import protocol
from fedmeta.common.federation.compression import INDICES, VALUES, Compression, decode_delta
from fedmeta.common.security.secure_aggregation import Participant, PublicKeys
from fedmeta.server import initial_meta_parameters
from fedmeta.server.strategy.fedmeta import model_records
from tests.support.flower_messages import delivered

RUN_CONFIG = {"family": "quality", "num-factories": 3, "num-held-out": 1, "device": "cpu"}
TRAIN_METRICS = {"num-examples", "support-loss", "query-loss", "meta-steps", "seconds"}


def _context(partition: int) -> Context:
    node_config = {"partition-id": partition, "num-partitions": 4}
    return Context(run_id=1, node_id=10 + partition, node_config=node_config, state=RecordDict(), run_config={})


@pytest.fixture(scope="module")
def client_app():
    return make_client_app(RUN_CONFIG)


@pytest.fixture(scope="module")
def global_params():
    factory = load_factory({"partition-id": 0}, RUN_CONFIG)
    return initial_meta_parameters(factory.source, "maml", 0.05, seed=0)


def _send(app, partition, message_type, **records):
    return app(delivered(RecordDict(records), message_type, 10 + partition), _context(partition))


def _round_records(params, settings) -> dict:
    return {**model_records(params), "config": ConfigRecord(settings.to_config())}


def factory_name(context: Context) -> str:
    return load_factory(context.node_config, RUN_CONFIG).data.name


def _only_numbers(record: MetricRecord) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in record.values())


def test_train_reply_holds_exactly_the_delta_and_numeric_metrics(client_app, global_params):
    settings = RoundSettings(algorithm="maml", local_steps=3, server_round=4, seed=7)
    reply = _send(client_app, 1, MessageType.TRAIN, **_round_records(global_params, settings))
    assert not reply.has_error()
    assert set(reply.content.keys()) == {"delta", "metrics"}
    assert isinstance(reply.content["delta"], ArrayRecord)
    assert isinstance(reply.content["metrics"], MetricRecord)
    assert set(reply.content["metrics"].keys()) == TRAIN_METRICS and _only_numbers(reply.content["metrics"])

    packed = reply.content["delta"].to_torch_state_dict()
    assert list(packed) == [VALUES]  # one flat array: nothing else rides along
    assert packed[VALUES].numel() == sum(t.numel() for t in global_params.values())  # exactly one value a parameter
    delta = decode_delta(packed, Compression(), global_params)
    # The values are exactly local - global: redo the factory's local training here.
    factory = load_factory({"partition-id": 1}, RUN_CONFIG)
    local = meta_train(
        build_model(factory.source.model_config), global_params,
        sampler_for(factory, settings.shots, settings.query_size, seed=7, stream=4),
        settings.meta_config("regression"), device="cpu",
    ).weights
    for name, value in delta.items():
        torch.testing.assert_close(value, local[name] - global_params[name])
        assert not torch.allclose(value, local[name])  # not the full weights
    rows = factory.data.num_samples
    assert all(t.shape[0] != rows for t in delta.values())  # no tensor shaped like the data


def test_evaluate_reply_holds_only_k_shot_metrics(client_app, global_params):
    settings = EvaluationSettings(shots=(1, 5), tasks=3, local_only_steps=5)
    reply = _send(client_app, 3, MessageType.EVALUATE, **_round_records(global_params, settings))
    assert not reply.has_error()
    assert set(reply.content.keys()) == {"metrics"}
    metrics = reply.content["metrics"]
    assert _only_numbers(metrics)
    pattern = re.compile(r"(local-|linear-|trees-alone-|chosen-)?loss-k\d+|num-examples")
    assert all(pattern.fullmatch(key) for key in metrics), sorted(metrics)
    assert {"loss-k0", "loss-k1", "loss-k5", "local-loss-k5", "linear-loss-k5", "trees-alone-loss-k5",
            "chosen-loss-k5"} <= set(metrics)


def test_query_reply_holds_only_role_and_factory_key(client_app):
    reply = _send(client_app, 3, MessageType.QUERY)
    assert set(reply.content.keys()) == {"role"}
    assert dict(reply.content["role"]) == {"role": "evaluate", "factory": "quality-held-out-00"}


def test_held_out_factory_refuses_to_train(client_app, global_params):
    records = _round_records(global_params, RoundSettings())
    with pytest.raises(ValueError, match="'quality-held-out-00' is held out"):  # Flower turns it into an error reply
        _send(client_app, 3, MessageType.TRAIN, **records)


@pytest.mark.parametrize("method", ["int8", "topk"])
def test_a_compressed_reply_holds_only_the_packed_delta_and_what_topk_holds_back_stays_on_the_node(
        client_app, global_params, method):
    """The server decodes the packed reply to the delta the uncompressed reply carries (int8: within one
    step per value; top-k: its largest values exactly); top-k's unsent rest lives in the node's state."""
    context = _context(1)
    settings = RoundSettings(algorithm="maml", local_steps=3, server_round=4, seed=7, compression=method)
    message = delivered(RecordDict(_round_records(global_params, settings)), MessageType.TRAIN, 11)
    reply = client_app(message, context)
    plain = decode_delta(_send(client_app, 1, MessageType.TRAIN, **_round_records(global_params, dataclasses.replace(
        settings, compression="none"))).content["delta"].to_torch_state_dict(), Compression(), global_params)
    packed = reply.content["delta"].to_torch_state_dict()
    assert set(reply.content.keys()) == {"delta", "metrics"}
    assert set(packed) == ({VALUES} if method == "int8" else {VALUES, INDICES})
    delta = decode_delta(packed, settings.codec, global_params)
    for name, value in delta.items():
        if method == "int8":
            assert float((value - plain[name]).abs().max()) <= float(plain[name].abs().max()) / 254 + 1e-9
        else:
            sent = value != 0
            torch.testing.assert_close(value[sent], plain[name][sent])
            torch.testing.assert_close(context.state[_unsent(context, 1)].to_torch_state_dict()[name],
                                       torch.where(sent, 0.0, plain[name]))
    assert (_unsent(context, 1) in context.state) == (method == "topk")


def _unsent(context: Context, run_id: int) -> str:
    return f"unsent/{factory_name(context)}@run-{run_id}"


def test_what_topk_held_back_in_one_run_never_reaches_the_next(client_app, global_params):
    """Flower keeps a node's state from run to run: the next run's first delta is a fresh node's, and the
    earlier run's rest is dropped, not kept beside the new one."""
    settings = RoundSettings(algorithm="maml", local_steps=3, server_round=1, seed=7, compression="topk")
    records = RecordDict(_round_records(global_params, settings))
    context = _context(1)
    client_app(delivered(records, MessageType.TRAIN, 11, run_id=1), context)
    assert _unsent(context, 1) in context.state
    second = client_app(delivered(records, MessageType.TRAIN, 11, run_id=2), context)
    fresh = client_app(delivered(records, MessageType.TRAIN, 11, run_id=2), _context(1))
    assert torch.equal(second.content["delta"].to_torch_state_dict()[VALUES],
                       fresh.content["delta"].to_torch_state_dict()[VALUES])
    assert [key for key in context.state if key.startswith("unsent/")] == [_unsent(context, 2)]


def test_in_a_secure_round_the_reply_holds_a_masked_input_and_metrics_and_no_delta(client_app, global_params):
    """Factory 1 runs the real client app through a secure round's keys, shares and training messages,
    with two peers simulated here: what it sends is a uniformly masked vector, not its delta."""
    context, round_id = _context(1), "run/4"
    base = {"round-id": round_id, "threshold": 2, "participants": 3, "max-weight": 10_000.0, "bound": 100.0,
            "index": 1}

    def send(kind: str, **records):
        return client_app(delivered(RecordDict(records), kind, 11), context).content

    keys = send(protocol.SECAGG_KEYS, secagg=ConfigRecord(base))["secagg"]
    peers = {i: Participant(i, round_id.encode()) for i in (2, 3)}
    public = {1: PublicKeys(bytes(keys["mask"]), bytes(keys["share"]))} | {i: p.public_keys() for i, p in peers.items()}
    keyed = base | {f"mask/{i}": k.mask for i, k in public.items()} | {f"share/{i}": k.share for i, k in public.items()}
    sealed = send(protocol.SECAGG_SHARES, secagg=ConfigRecord(keyed))["secagg"]
    assert set(sealed.keys()) == {"1", "2", "3"}  # a sealed box per participant, opened by that one alone
    inbox = {f"inbox/{i}": p.encrypted_shares(public, 2)[1] for i, p in peers.items()}
    settings = RoundSettings(algorithm="maml", local_steps=3, server_round=4, seed=7, secure_aggregation=True)
    reply = send(MessageType.TRAIN, **_round_records(global_params, settings), secagg=ConfigRecord(keyed | inbox))
    assert set(reply.keys()) == {"masked", "metrics"}
    masked = reply["masked"]["input"].numpy()
    assert masked.dtype == np.uint64 and len(masked) == sum(t.numel() for t in global_params.values()) + 1
    plain = _send(client_app, 1, MessageType.TRAIN, **_round_records(global_params, dataclasses.replace(
        settings, secure_aggregation=False))).content["delta"].to_torch_state_dict()
    flat = plain[VALUES].numpy()  # the delta, packed in name order
    assert abs(np.corrcoef(masked[:-1].astype(np.float64), flat)[0, 1]) < 0.1  # nothing of the delta shows
