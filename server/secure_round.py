"""A training round under secure aggregation: four exchanges with the sampled factories, after which the
server holds the weighted mean of their deltas and never saw one of them (`common.security.secure_aggregation`).
With differential privacy on, each factory clips its delta and adds its share of the noise itself, and the
inputs weigh the same (`common.security.privacy`).

1. ``train.secagg_keys``: each factory learns its index, the threshold and the round; it answers its
   two public keys.
2. ``train.secagg_shares``: every factory gets its peers' public keys and answers, per peer, its sealed
   shares (which the server only forwards: it cannot open them).
3. ``train``: the usual training message plus the keys and the shares sealed for that factory; it
   answers its masked input and its metrics (no delta).
4. ``train.secagg_reveal``: the factories still there learn which of their peers sent an input and reveal
   their shares of each peer's self-mask seed (sent) or mask key (did not send).

A factory's peers are the round's other factories, or with ``secagg-plus`` its neighbours in the random
graph the server draws for the round from the round's id (SecAgg+): a factory only ever sees its
neighbours' keys and shares, whatever the protocol. A factory that does not answer an exchange, or answers
without what it asks for (`reply_problem`), is left out of the next ones. With fewer factories answering
than ``secagg-threshold`` of the round, or fewer of one's neighbours revealing than the threshold of
shares, the round fails: the model is unchanged and the metrics say so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from flwr.app import Array, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from torch import Tensor

from fedmeta.common.federation import protocol
from fedmeta.common.security.privacy import spent_epsilon
from fedmeta.common.security.secure_aggregation import (
    FixedPoint,
    PublicKeys,
    SecureAggregationError,
    revealed_shares,
    unmask_sum,
    weighted_mean,
)
from fedmeta.server.strategy.fedmeta import FedMetaStrategy, ModelRecords, exchange, weighted_metrics

__all__ = ["reply_problem", "secure_training_round"]

SECAGG, MASKED = protocol.SECAGG, protocol.MASKED
KEYS, SHARES, REVEAL = protocol.SECAGG_KEYS, protocol.SECAGG_SHARES, protocol.SECAGG_REVEAL

log = logging.getLogger(__name__)


def _keys_record(keys: Mapping[int, PublicKeys]) -> dict[str, bytes]:
    return {f"mask/{i}": k.mask for i, k in keys.items()} | {f"share/{i}": k.share for i, k in keys.items()}


# What a reply to each exchange must hold: (record, key, type of its value); key None: every value of the record.
# A reply that lacks one, or holds another type (``bytes(n)`` of a number n would allocate n bytes), leaves its
# factory out of the round as an error reply does, before the server reads it.
_REPLY_FIELDS: dict[str, tuple[tuple[str, str | None, type], ...]] = {
    KEYS: ((SECAGG, "mask", bytes), (SECAGG, "share", bytes)),
    SHARES: ((SECAGG, None, bytes),),
    MessageType.TRAIN: ((MASKED, "input", Array), (protocol.METRICS, None, object)),
    REVEAL: ((SECAGG, "reveal", bytes),),
}


def reply_problem(content: RecordDict, kind: str) -> str | None:
    """What keeps ``content`` from being a reply to the secure round's exchange ``kind`` (None: nothing)."""
    for record, key, value_type in _REPLY_FIELDS[kind]:
        if record not in content:
            return f"no {record!r} record"
        values = content[record]
        if key is not None and key not in values:
            return f"no {key!r} in its {record!r} record"
        for name, value in values.items() if key is None else [(key, values[key])]:
            if not isinstance(value, value_type):
                return f"{type(value).__name__} for {name!r} in its {record!r} record, not {value_type.__name__}"
    return None


def _answers(grid: Grid, sent: Mapping[int, Message], timeout: float, kind: str) -> dict[int, RecordDict]:
    """The contents of the replies that arrived without an error and hold what ``kind`` asks for, by the sender's
    participant index."""
    index = {message.metadata.dst_node_id: i for i, message in sent.items()}
    answers = {}
    for reply in exchange(grid, sent.values(), timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("factory on node %d left the secure round: %s", node, reply.error.reason)
        elif (problem := reply_problem(reply.content, kind)) is not None:
            log.warning("factory on node %d left the secure round: its %s reply has %s", node, kind, problem)
        else:
            answers[index[node]] = reply.content
    return answers


def secure_training_round(grid: Grid, strategy: FedMetaStrategy, server_round: int, model: ModelRecords,
                          config: ConfigRecord, round_id: str, timeout: float
                          ) -> tuple[dict[str, Tensor] | None, dict[str, float]]:
    """One round under secure aggregation: the new parameters (None: the round failed) and its metrics."""
    seats = strategy.sample_train(server_round)
    if any(seat.shared for seat in seats):
        raise ValueError("secure aggregation needs one factory a node (factories-per-node 1): a node's factories "
                         "would share its masked input")
    secure = strategy.sampling.secure
    nodes = {i + 1: seat.node for i, seat in enumerate(seats)}
    minimum = secure.threshold_of(len(nodes))  # the fewest inputs a round is unmasked from
    fixed = FixedPoint(strategy.sampling.max_delta_norm, len(nodes))
    privacy = strategy.sampling.privacy
    failed = {"replies": 0.0, "rejected": 0.0, "model-unchanged": 1.0, "secagg-participants": float(len(nodes))}

    def send(kind: str, indices: Sequence[int], content) -> dict[int, RecordDict]:
        messages = {i: Message(content(i), dst_node_id=nodes[i], message_type=kind) for i in indices}
        answers = _answers(grid, messages, timeout, kind)
        if len(answers) < minimum:
            raise SecureAggregationError(f"{len(answers)} of {len(indices)} factories answered {kind!r}, fewer "
                                         f"than the threshold {minimum}")
        return answers

    try:
        graph, threshold = secure.round_graph(len(nodes), round_id)
        base = {"round-id": round_id, "threshold": threshold, "min-inputs": minimum, "participants": len(nodes),
                "max-weight": secure.max_weight, "bound": strategy.sampling.max_delta_norm,
                "dp-clip-norm": privacy.clip_norm}
        answers = send(KEYS, list(nodes), lambda i: RecordDict({SECAGG: ConfigRecord({**base, "index": i})}))
        keys = {i: PublicKeys(bytes(a[SECAGG]["mask"]), bytes(a[SECAGG]["share"])) for i, a in answers.items()}

        def keyed(i: int) -> dict[str, object]:
            """What every message to factory i carries: the round, its index and its peers' public keys."""
            return {**base, **_keys_record({peer: keys[peer] for peer in graph[i] if peer in keys}), "index": i}

        sealed = send(SHARES, list(keys), lambda i: RecordDict({SECAGG: ConfigRecord(keyed(i))}))
        # Who left after advertising keys holds no shares of anyone's: from here on, only those who shared.
        keys = {i: keys[i] for i in sealed}
        graph = {i: tuple(peer for peer in graph[i] if peer in sealed) for i in sealed}
        inbox = {peer: {f"inbox/{owner}": bytes(box[SECAGG][str(peer)]) for owner, box in sealed.items()
                        if str(peer) in box[SECAGG]} for peer in sealed}

        def train(i: int) -> RecordDict:
            return RecordDict({**model, protocol.CONFIG: config, SECAGG: ConfigRecord({**keyed(i), **inbox[i]})})

        inputs = send(MessageType.TRAIN, list(sealed), train)
        masked = {i: a[MASKED]["input"].numpy() for i, a in inputs.items()}  # unmask_sum checks them

        def reveal(i: int) -> RecordDict:
            sent = [peer for peer in graph[i] if peer in masked]
            return RecordDict({SECAGG: ConfigRecord({**keyed(i), **inbox[i], "sent": sent})})

        revealed = send(REVEAL, sorted(masked), reveal)
        shares = {i: revealed_shares(bytes(a[SECAGG]["reveal"]), i) for i, a in revealed.items()}
        total = unmask_sum(masked, shares, keys, threshold, round_id.encode(), graph)
        mean = weighted_mean(total, fixed, strategy.optimizer.params, len(masked))
    except SecureAggregationError as error:
        log.warning("round %d: secure aggregation failed, global model unchanged: %s", server_round, error)
        return None, failed
    summary = weighted_metrics([dict(a[protocol.METRICS]) for a in inputs.values()])
    summary |= {"replies": float(len(masked)), "rejected": 0.0, "secagg-participants": float(len(nodes))}
    if privacy.enabled:  # every input carried its share of the noise (`common.security.privacy`)
        summary["dp-epsilon"] = spent_epsilon(server_round, strategy.sampling_rate, privacy.noise_multiplier,
                                              privacy.delta)
    return strategy.optimizer.step(mean), summary
