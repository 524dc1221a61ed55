"""A Flower strategy that turns factories' deltas into meta-updates.

Each round: sample a fraction of the training factories, send them the global
meta-parameters and the round's settings, validate every returned delta (names, shapes,
dtype, finite values, a norm bound), average the valid ones weighted by the factories'
data sizes, and apply the pseudo-gradient ``-mean(delta)`` with the server's outer
optimizer, whose state persists across rounds. A bad delta or a failed factory is
logged and left out; the round goes on while at least ``min_train_nodes`` deltas remain.
Evaluation goes to the factories that only evaluate (held out, never trained).

A node may serve several factories (``factories-per-node``, see `common.data_sources`):
the strategy then samples factories, not nodes, sends each node one message naming its
sampled factories, and takes each factory's delta from the reply separately, so a bad
one is left out alone and the average is the same as with one node per factory.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedmeta.common import DeltaRejected, RoundSettings, validate_delta
from fedmeta.common.federation import protocol
from fedmeta.common.federation.compression import VALUES, Compression, decode_delta, pack_parameters
from fedmeta.common.security.privacy import NOISE_SIGMAS, DifferentialPrivacy, spent_epsilon
from fedmeta.common.security.secure_aggregation import SecureAggregation
from fedmeta.server.reply_pull import pull_replies
from fedmeta.server.strategy.aggregation import AggregationRule
from fedmeta.server.strategy.outer_optimizer import OuterOptimizer

__all__ = [
    "PULL_COST_FACTOR",
    "PULL_INTERVAL_S",
    "PULL_MAX_INTERVAL_S",
    "FactorySeats",
    "FedMetaStrategy",
    "ModelRecords",
    "NodeInfo",
    "SamplingSettings",
    "Seat",
    "exchange",
    "model_records",
    "weighted_metrics",
]

log = logging.getLogger(__name__)

ModelRecords = Mapping[str, ArrayRecord | ConfigRecord]
"""The global model as a message carries it (`model_records`)."""


def model_records(params: Mapping[str, Tensor]) -> dict[str, ArrayRecord | ConfigRecord]:
    """``params`` packed into one array with their names and shapes beside it (`common.federation.compression`):
    Flower moves each array of a message as objects of their own, one request each between processes."""
    flat, layout = pack_parameters(params)
    return {protocol.META_PARAMETERS: ArrayRecord(torch_state_dict={VALUES: flat}),
            protocol.PARAMETER_LAYOUT: ConfigRecord(layout.to_config())}


@dataclass(frozen=True)
class NodeInfo:
    """What a node told the server about itself: its role and a stable factory key."""

    role: str
    factory: str


@dataclass(frozen=True)
class Seat:
    """One factory and the node serving it.

    ``shared``: the node serves several factories, so messages to it name the factory
    and its reply keys the factory's records by name (``delta/<factory>``).
    """

    node: int
    info: NodeInfo
    shared: bool = False


@dataclass(frozen=True)
class _Part:
    """One factory's share of a reply: its records, or why it has none."""

    node: int
    factory: str
    records: Mapping[str, object] = field(default_factory=dict)
    error: str | None = None


Accepted = tuple[dict[str, Tensor], Mapping[str, float]]


@dataclass(frozen=True)
class SamplingSettings:
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    max_delta_norm: float = 100.0
    seed: int = 0
    aggregation: AggregationRule = field(default_factory=AggregationRule)  # how the accepted deltas combine
    privacy: DifferentialPrivacy = field(default_factory=DifferentialPrivacy)  # off unless a noise multiplier
    secure: SecureAggregation = field(default_factory=SecureAggregation)  # off unless enabled

    def __post_init__(self) -> None:
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if self.min_train_nodes < 1:
            raise ValueError(f"min_train_nodes must be >= 1, got {self.min_train_nodes}")
        if not self.max_delta_norm > 0:
            raise ValueError(f"max_delta_norm must be positive, got {self.max_delta_norm}")
        if self.privacy.enabled and self.aggregation.name != "mean":
            raise ValueError(f"differential privacy averages clipped deltas with equal weights: it needs aggregation "
                             f"'mean', not {self.aggregation.name!r}")
        if self.secure.enabled and self.aggregation.name != "mean":
            raise ValueError(f"secure aggregation shows the server only the sum of a round's deltas: it needs "
                             f"aggregation 'mean', not {self.aggregation.name!r} (a robust rule needs each delta)")
        # A round unmasks from at least 2 inputs: the fewest to share the noise, so the widest shares.
        reach = self.privacy.share_range(2) if self.secure.enabled and self.privacy.enabled else 0.0
        if reach > self.max_delta_norm:
            raise ValueError(f"secure aggregation with differential privacy: a factory's noisy delta reaches "
                             f"{reach:.3g} per value (dp-clip-norm plus {NOISE_SIGMAS:g} noise deviations), beyond "
                             f"max-delta-norm {self.max_delta_norm:g}, the range the masked sum holds: raise "
                             f"max-delta-norm to at least {math.ceil(reach)}")


def weighted_metrics(records: list[Mapping[str, float]], weight_key: str = protocol.NUM_EXAMPLES) -> dict[str, float]:
    """Average every metric over replies, weighted by ``weight_key``; the weights are summed."""
    weights = [float(r[weight_key]) for r in records]
    total = sum(weights)
    names = sorted({name for r in records for name in r} - {weight_key})
    merged = {
        name: sum(w * float(r[name]) for w, r in zip(weights, records, strict=True) if name in r)
        / sum(w for w, r in zip(weights, records, strict=True) if name in r)
        for name in names
    }
    return {**merged, weight_key: total, "replies": float(len(records))}


# Flower's InMemoryGrid.send_and_receive sleeps 0.1 s between pulls: in a simulation every
# exchange then waits 50 ms on average after the last reply arrived. A pull costs time
# in proportion to the replies still pending, so the wait after a pull is at least
# PULL_COST_FACTOR times what the pull took: polling then costs under a tenth of a core.
# In a deployment a pull also waits for a reply's upload to finish (`server.reply_pull`: 0.2 s,
# then 0.4 s, ... at most 1 s), which is no polling cost: the wait is capped at PULL_MAX_INTERVAL_S.
PULL_INTERVAL_S = 0.01
PULL_COST_FACTOR = 10.0
PULL_MAX_INTERVAL_S = 0.5


def _from_its_node(reply: Message, sent: Message) -> Message:
    """``reply`` as from the node ``sent`` went to. The SuperLink answers itself for a node it lost
    (missed heartbeats), as its own node: that error is the lost node's."""
    if reply.has_error() and reply.metadata.src_node_id != sent.metadata.dst_node_id:
        return Message(reply.error, reply_to=sent)
    return reply


def exchange(grid: Grid, messages: Iterable[Message], *, timeout: float | None) -> list[Message]:
    """`Grid.send_and_receive`, polling every `PULL_INTERVAL_S` (or `PULL_COST_FACTOR` pulls'
    worth, at most `PULL_MAX_INTERVAL_S`) instead of every 0.1 s; replies that arrived by
    ``timeout`` seconds, each from the node its message went to."""
    messages = list(messages)
    # Flower returns no ids when the batch was too large to push, and None for a message it could not push.
    sent = {message_id: message for message_id, message in zip(grid.push_messages(messages), messages, strict=False)
            if message_id is not None}
    pending = set(sent)
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        started = time.monotonic()
        arrived = pull_replies(grid, pending, deadline=deadline)
        cost = time.monotonic() - started
        replies.extend(_from_its_node(reply, sent[reply.metadata.reply_to_message_id]) for reply in arrived)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(min(PULL_MAX_INTERVAL_S, max(PULL_INTERVAL_S, PULL_COST_FACTOR * cost)))
    for message_id in sorted(pending, key=lambda pending_id: sent[pending_id].metadata.dst_node_id):
        metadata = sent[message_id].metadata
        log.warning("node %d did not answer its %s message within the %g s timeout", metadata.dst_node_id,
                    metadata.message_type, timeout)
    return replies


class FactorySeats(Strategy):
    """The factories a server works with, whatever it federates: which nodes serve which factories in
    which role, a reproducible sample of the training ones each round, messages to them (a shared node's
    naming its factories), each factory's part of a reply, evaluation on the held-out factories, and the
    final package's delivery. Subclasses say what a training round sends and how replies combine."""

    def __init__(self, sampling: SamplingSettings) -> None:
        self.sampling = sampling
        self.nodes: dict[int, NodeInfo] = {}  # nodes serving one factory (the default)
        self.shared_nodes: dict[int, tuple[NodeInfo, ...]] = {}  # nodes serving several
        # Nodes the grid listed at the last discovery (None before it): a deployment's factories come and go.
        self.connected: set[int] | None = None
        # Per message type: the factories each shared node was last asked to work on.
        self._requested: dict[str, dict[int, tuple[str, ...]]] = {}
        self.sampling_rate = sampling.fraction_train  # the share of training factories a round samples

    # --- node discovery ----------------------------------------------------------
    def discover_nodes(self, grid: Grid, timeout: float) -> dict[int, str]:
        """Note which nodes are connected; ask those the server has not met yet for their factories. Returns the
        nodes that answered with an error instead, and the error's reason."""
        known = self.nodes.keys() | self.shared_nodes.keys()
        self.connected = set(grid.get_node_ids())
        unknown = sorted(node for node in self.connected if node not in known)
        failed: dict[int, str] = {}
        if not unknown:
            return failed
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in unknown]
        for reply in exchange(grid, queries, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d did not say its role: %s", node, reply.error.reason)
                failed[node] = reply.error.reason
            elif protocol.FACTORIES in reply.content:
                record = reply.content[protocol.FACTORIES]
                pairs = zip(record[protocol.ROLES_FIELD], record[protocol.NAMES], strict=True)
                self.shared_nodes[node] = tuple(NodeInfo(str(role), str(name)) for role, name in pairs)
            else:
                record = reply.content[protocol.ROLE]
                self.nodes[node] = NodeInfo(str(record[protocol.ROLE]), str(record[protocol.FACTORY]))
        return failed

    def seats_with_role(self, role: str) -> list[Seat]:
        """Connected factories of one role and their nodes, ordered by factory key so sampling is reproducible.

        A node that left (a factory that crashed or stopped) is not sent work until it reconnects.
        """
        seats = [Seat(node, info) for node, info in self.nodes.items()]
        seats += [Seat(node, info, shared=True) for node, infos in self.shared_nodes.items() for info in infos]
        chosen = (
            seat
            for seat in seats
            if seat.info.role == role and (self.connected is None or seat.node in self.connected)
        )
        return sorted(chosen, key=lambda seat: seat.info.factory)

    def _messages(self, seats: Sequence[Seat], record: RecordDict, message_type: str) -> list[Message]:
        """One message per node; one to a shared node names the factories it is to work on."""
        singles = [seat.node for seat in seats if not seat.shared]
        requested: dict[int, list[str]] = {}
        for seat in seats:
            if seat.shared:
                requested.setdefault(seat.node, []).append(seat.info.factory)
        self._requested[message_type] = {node: tuple(sorted(names)) for node, names in requested.items()}
        messages = [Message(record, dst_node_id=node, message_type=message_type) for node in singles]
        for node, names in self._requested[message_type].items():
            content = RecordDict({**record, protocol.FACTORIES: ConfigRecord({protocol.NAMES: list(names)})})
            messages.append(Message(content, dst_node_id=node, message_type=message_type))
        return messages

    def _parts(self, reply: Message, message_type: str, records: Sequence[str]) -> list[_Part]:
        """Split a reply into one part per factory: a shared node's reply holds several."""
        node = reply.metadata.src_node_id
        error = reply.error.reason if reply.has_error() else None
        names = self._requested.get(message_type, {}).get(node)
        if names is None:  # a node serving one factory: the reply's records are that factory's
            factory = self.nodes.get(node, NodeInfo("", "")).factory
            return [_Part(node, factory, {} if error else reply.content, error)]
        if error is not None:
            return [_Part(node, name, error=error) for name in names]
        return [self._part_of(reply.content, node, name, records) for name in names]

    @staticmethod
    def _part_of(content: RecordDict, node: int, name: str, records: Sequence[str]) -> _Part:
        keys = {record: protocol.factory_key(record, name) for record in records}
        missing = [key for key in keys.values() if key not in content]
        if missing:
            return _Part(node, name, error=f"the reply has no {', '.join(missing)} (the factory failed)")
        return _Part(node, name, {record: content[key] for record, key in keys.items()})

    def configure_delivery(self, model: ModelRecords, manifest: str) -> list[Message]:
        """The final model package for every connected factory node, training or evaluate-only."""
        nodes = sorted((self.nodes.keys() | self.shared_nodes.keys()) & (self.connected or set()))
        record = RecordDict({**model, protocol.CONFIG: ConfigRecord({protocol.MANIFEST: manifest})})
        return [Message(record, dst_node_id=node, message_type=protocol.MODEL_DELIVERY) for node in nodes]

    def sample_train(self, server_round: int) -> list[Seat]:
        """The training factories of ``server_round``: a reproducible sample of ``fraction_train``."""
        candidates = self.seats_with_role("train")
        if len(candidates) < self.sampling.min_train_nodes:
            raise RuntimeError(
                f"only {len(candidates)} training factories are connected; "
                f"min_train_nodes is {self.sampling.min_train_nodes}"
            )
        size = max(self.sampling.min_train_nodes, math.ceil(self.sampling.fraction_train * len(candidates)))
        chosen = random.Random(f"{self.sampling.seed}/{server_round}").sample(candidates, size)
        self.sampling_rate = size / len(candidates)
        log.info("round %d: training on %d of %d factories", server_round, size, len(candidates))
        return chosen

    # --- evaluation --------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, model: ModelRecords, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = RecordDict({**model, protocol.CONFIG: config})
        return self._messages(self.seats_with_role("evaluate"), record, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        records = []
        for reply in replies:
            for part in self._parts(reply, MessageType.EVALUATE, (protocol.METRICS,)):
                if part.error is not None:
                    log.warning("evaluation of factory %s on node %d failed: %s", part.factory, part.node, part.error)
                else:
                    records.append(dict(part.records[protocol.METRICS]))
        return MetricRecord(weighted_metrics(records)) if records else None


class FedMetaStrategy(FactorySeats):
    """Meta-updates from deltas with a persistent server-side outer optimizer."""

    def __init__(self, optimizer: OuterOptimizer, sampling: SamplingSettings) -> None:
        super().__init__(sampling)
        self.optimizer = optimizer
        self.codec = Compression()  # how the factories encode this round's deltas (set by configure_train)
        # DP noise must be unpredictable: a seed anyone could know would let them subtract it.
        self._noise = torch.Generator().manual_seed(secrets.randbits(63))

    # --- training ----------------------------------------------------------------
    def configure_train(
        self, server_round: int, model: ModelRecords, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        chosen = self.sample_train(server_round)
        self.codec = RoundSettings.from_config(config).codec
        record = RecordDict({**model, protocol.CONFIG: config})
        return self._messages(chosen, record, MessageType.TRAIN)

    def check_delta(self, delta: Mapping[str, Tensor], metrics: Mapping[str, float]) -> None:
        """Raise `DeltaRejected` unless the delta fits the global model and the weight is positive."""
        claimed = metrics.get(protocol.NUM_EXAMPLES)
        weight = float(claimed) if isinstance(claimed, int | float) and not isinstance(claimed, bool) else math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise DeltaRejected(f"{protocol.NUM_EXAMPLES} must be a positive number, got {claimed!r}")
        validate_delta(delta, self.optimizer.params, max_norm=self.sampling.max_delta_norm)

    def _accepted_delta(self, part: _Part) -> Accepted | None:
        if part.error is not None:
            log.warning("factory %s on node %d failed this round: %s", part.factory, part.node, part.error)
            return None
        try:
            delta = decode_delta(part.records[protocol.DELTA].to_torch_state_dict(), self.codec, self.optimizer.params)
            metrics = dict(part.records[protocol.METRICS])
            self.check_delta(delta, metrics)
        except (AttributeError, KeyError, TypeError, ValueError) as error:  # DeltaRejected is a ValueError
            log.warning("delta of factory %s from node %d left out: %s", part.factory, part.node, error)
            return None
        return delta, metrics

    def apply_deltas(
        self, server_round: int, accepted: Sequence[Accepted], offered: int, factories: Sequence[str] | None = None
    ) -> tuple[dict[str, Tensor] | None, dict[str, float]]:
        """Combine the accepted deltas by the sampling settings' aggregation rule (by default their mean
        weighted by ``num-examples``) and step the outer optimizer.

        ``offered`` counts every factory that answered, so the metrics say how many were
        rejected. Returns the new parameters and the round's metrics, or ``None`` and the
        counts alone (``model-unchanged`` set, so the run's record says why) when fewer than
        ``min_train_nodes`` deltas were accepted. A selecting rule (krum, multi-krum) also
        counts the deltas it left out (``left-out``) and, given the deltas' ``factories``, names them
        in the log.
        """
        rejected = float(offered - len(accepted))
        if len(accepted) < self.sampling.min_train_nodes:
            log.warning(
                "round %d: %d valid deltas, fewer than min_train_nodes=%d; global model unchanged",
                server_round, len(accepted), self.sampling.min_train_nodes,
            )
            return None, {"replies": float(len(accepted)), "rejected": rejected, "model-unchanged": 1.0}
        deltas, metrics = zip(*accepted, strict=True)
        summary = weighted_metrics(list(metrics))
        privacy = self.sampling.privacy
        if privacy.enabled:
            update = privacy.noisy_mean(list(deltas), self._noise)
            summary["dp-epsilon"] = spent_epsilon(server_round, self.sampling_rate, privacy.noise_multiplier,
                                                  privacy.delta)
        else:
            rule = self.sampling.aggregation
            kept = rule.kept(deltas)
            update = rule.combine(deltas, [m[protocol.NUM_EXAMPLES] for m in metrics], kept)
            if rule.selects:
                summary["left-out"] = float(len(deltas) - len(kept))
                if factories is not None:
                    self._log_left_out(server_round, factories, set(kept))
        params = self.optimizer.step(update)
        summary["rejected"] = rejected
        return params, summary

    def _log_left_out(self, server_round: int, names: Sequence[str], kept: set[int]) -> None:
        """Say which factories' accepted deltas a selecting rule (krum, multi-krum) left out."""
        left_out = [name for i, name in enumerate(names) if i not in kept]
        if left_out:
            log.warning("round %d: %s left out the deltas of %s (kept %s)", server_round,
                        self.sampling.aggregation.name, ", ".join(left_out),
                        ", ".join(name for i, name in enumerate(names) if i in kept))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        records = (protocol.DELTA, protocol.METRICS)
        replies = list(replies)
        parts = [part for reply in replies for part in self._parts(reply, MessageType.TRAIN, records)]
        parts.sort(key=lambda part: part.factory)  # the same summation order however factories are placed
        checked = [(part.factory, self._accepted_delta(part)) for part in parts]
        accepted = [item for _, item in checked if item is not None]
        names = [name for name, item in checked if item is not None]
        params, summary = self.apply_deltas(server_round, accepted, offered=len(parts), factories=names)
        summary["bytes-received"] = float(sum(recorddict_to_proto(reply.content).ByteSize() for reply in replies
                                              if reply.has_content()))
        return (None if params is None else ArrayRecord(torch_state_dict=params)), MetricRecord(summary)

    def summary(self) -> None:
        log.info("FedMetaStrategy: %s, outer optimizer %s", self.sampling, self.optimizer.metadata())
