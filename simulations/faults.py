"""Unreliable and adversarial factories on demand: a client mod that makes chosen nodes misbehave.

Researchers use it to check that a federation survives crashed clients, corrupt updates and
attackers; the tests use it to prove the server does. The spec maps partition ids to a fault,
e.g. ``"0:crash,1:nan,2:sign-flip"``; a node serving several factories (``factories-per-node``)
applies it to each of them. Faults the server's delta checks catch:

- ``crash``: the client raises during training (Flower sends an error reply);
- ``nan``: the client's delta is all NaN;
- ``shape``: the client's delta has every tensor transposed/reshaped wrongly.

The attacks of `simulations.attacks` (``sign-flip``, ``scaled``, ``noise``, ``claim``) pass them; robust
aggregation (`server.strategy.aggregation`) is the defence. Noise is seeded by partition and round.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from fedmeta.common import is_delta_key
from fedmeta.common.federation import protocol
from fedmeta.simulations.attacks import ATTACKS, CLAIM_FACTOR, attacked_delta

__all__ = ["FAULTS", "fault_injection_mod", "parse_fault_spec"]

FAULTS = ("crash", "nan", "shape", *ATTACKS)


def parse_fault_spec(spec: str) -> dict[int, str]:
    """``"0:crash,1:nan"`` -> ``{0: "crash", 1: "nan"}``, with a clear error for typos."""
    faults: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        partition, _, fault = item.partition(":")
        if not partition.isdigit() or fault not in FAULTS:
            raise ValueError(f"bad fault {item!r}: expected PARTITION:FAULT with FAULT one of {', '.join(FAULTS)}")
        faults[int(partition)] = fault
    return faults


def _corrupt(delta: ArrayRecord, fault: str) -> ArrayRecord:
    tensors = delta.to_torch_state_dict()
    if fault == "nan":
        return ArrayRecord(torch_state_dict={n: torch.full_like(t, float("nan")) for n, t in tensors.items()})
    return ArrayRecord(torch_state_dict={n: torch.zeros(t.numel() + 1) for n, t in tensors.items()})


def _attack(reply: Message, attack: str, max_norm: float, seed: int) -> None:
    """Turn every factory's honest delta (and, for ``claim``, its examples) in ``reply`` into the attack's."""
    generator = torch.Generator().manual_seed(seed)
    for key in list(reply.content):
        if is_delta_key(key):
            delta = attacked_delta(reply.content[key].to_torch_state_dict(), attack, max_norm, generator)
            reply.content[key] = ArrayRecord(torch_state_dict=delta)
        elif attack == "claim" and key.partition("/")[0] == protocol.METRICS:  # "metrics" or "metrics/<factory>"
            metrics = dict(reply.content[key])
            metrics[protocol.NUM_EXAMPLES] = float(metrics[protocol.NUM_EXAMPLES]) * CLAIM_FACTOR
            reply.content[key] = MetricRecord(metrics)


def fault_injection_mod(spec: str, max_delta_norm: float = 100.0):
    """A Flower client mod applying ``spec`` to training replies of the named partitions; attacks stay inside
    ``max_delta_norm``, the server's bound."""
    faults = parse_fault_spec(spec)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        fault = faults.get(int(context.node_config.get("partition-id", -1)))
        if fault is None or msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        if fault == "crash":
            raise RuntimeError(f"injected crash on partition {context.node_config['partition-id']}")
        reply = call_next(msg, context)
        if fault in ATTACKS:
            round_ = int(msg.content[protocol.CONFIG]["server-round"]) if protocol.CONFIG in msg.content else 0
            _attack(reply, fault, max_delta_norm, seed=int(context.node_config["partition-id"]) * 100_003 + round_)
            return reply
        for key in [k for k in reply.content if is_delta_key(k)]:
            reply.content[key] = _corrupt(reply.content[key], fault)  # every factory this node serves
        return reply

    return mod
