"""A Flower strategy that turns factories' deltas into meta-updates.

Each round: sample a fraction of the training factories, send them the global
meta-parameters and the round's settings, validate every returned delta (names, shapes,
dtype, finite values, a norm bound), average the valid ones weighted by the factories'
data sizes, and apply the pseudo-gradient ``-mean(delta)`` with the server's outer
optimizer, whose state persists across rounds. A bad delta or a failed factory is
logged and left out; the round goes on while at least ``min_train_nodes`` deltas remain.
Evaluation goes to the factories that only evaluate (held out, never trained).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from common.deltas import DeltaRejected, validate_delta, weighted_average
from common.outer_optimizer import OuterOptimizer

__all__ = ["FedMetaStrategy", "NodeInfo", "SamplingSettings", "weighted_metrics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """What a node told the server about itself: its role and a stable factory key."""

    role: str
    factory: str


@dataclass(frozen=True)
class SamplingSettings:
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    max_delta_norm: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if self.min_train_nodes < 1:
            raise ValueError(f"min_train_nodes must be >= 1, got {self.min_train_nodes}")
        if not self.max_delta_norm > 0:
            raise ValueError(f"max_delta_norm must be positive, got {self.max_delta_norm}")


def weighted_metrics(records: list[Mapping[str, float]], weight_key: str = "num-examples") -> dict[str, float]:
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


class FedMetaStrategy(Strategy):
    """Meta-updates from deltas with a persistent server-side outer optimizer."""

    def __init__(self, optimizer: OuterOptimizer, sampling: SamplingSettings) -> None:
        self.optimizer = optimizer
        self.sampling = sampling
        self.nodes: dict[int, NodeInfo] = {}

    # --- node discovery ----------------------------------------------------------
    def discover_nodes(self, grid: Grid, timeout: float) -> None:
        """Ask nodes the server has not met yet for their role (one query each)."""
        unknown = [node for node in grid.get_node_ids() if node not in self.nodes]
        if not unknown:
            return
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in unknown]
        for reply in grid.send_and_receive(queries, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d did not say its role: %s", node, reply.error.reason)
                continue
            record = reply.content["role"]
            self.nodes[node] = NodeInfo(str(record["role"]), str(record["factory"]))

    def nodes_with_role(self, role: str) -> list[int]:
        """Node ids of one role, ordered by factory key so sampling is reproducible."""
        return sorted((n for n, info in self.nodes.items() if info.role == role), key=lambda n: self.nodes[n].factory)

    # --- training ----------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        candidates = self.nodes_with_role("train")
        if len(candidates) < self.sampling.min_train_nodes:
            raise RuntimeError(
                f"only {len(candidates)} training factories are connected; "
                f"min_train_nodes is {self.sampling.min_train_nodes}"
            )
        size = max(self.sampling.min_train_nodes, math.ceil(self.sampling.fraction_train * len(candidates)))
        chosen = random.Random(f"{self.sampling.seed}/{server_round}").sample(candidates, size)
        log.info("round %d: training on %d of %d factories", server_round, size, len(candidates))
        record = RecordDict({"meta-parameters": arrays, "config": config})
        return [Message(record, dst_node_id=node, message_type=MessageType.TRAIN) for node in chosen]

    def _accepted_delta(self, reply: Message) -> tuple[dict[str, Tensor], Mapping[str, float]] | None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("factory on node %d failed this round: %s", node, reply.error.reason)
            return None
        try:
            delta = dict(reply.content["delta"].to_torch_state_dict())
            metrics = dict(reply.content["metrics"])
            weight = float(metrics.get("num-examples", math.nan))
            if not (math.isfinite(weight) and weight > 0):
                raise DeltaRejected(f"num-examples must be a positive number, got {metrics.get('num-examples')!r}")
            validate_delta(delta, self.optimizer.params, max_norm=self.sampling.max_delta_norm)
        except (KeyError, TypeError, ValueError) as error:  # DeltaRejected is a ValueError
            log.warning("delta from node %d left out: %s", node, error)
            return None
        return delta, metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = sorted(replies, key=lambda r: self.nodes.get(r.metadata.src_node_id, NodeInfo("", "")).factory)
        accepted = [item for item in map(self._accepted_delta, ordered) if item is not None]
        if len(accepted) < self.sampling.min_train_nodes:
            log.warning(
                "round %d: %d valid deltas, fewer than min_train_nodes=%d; global model unchanged",
                server_round, len(accepted), self.sampling.min_train_nodes,
            )
            return None, None
        deltas, metrics = zip(*accepted, strict=True)
        mean_delta = weighted_average(deltas, [m["num-examples"] for m in metrics])
        params = self.optimizer.step(mean_delta)
        summary = weighted_metrics(list(metrics))
        summary["rejected"] = float(len(ordered) - len(accepted))
        return ArrayRecord(torch_state_dict=params), MetricRecord(summary)

    # --- evaluation --------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = RecordDict({"meta-parameters": arrays, "config": config})
        targets = self.nodes_with_role("evaluate")
        return [Message(record, dst_node_id=node, message_type=MessageType.EVALUATE) for node in targets]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        records = []
        for reply in replies:
            if reply.has_error():
                log.warning("evaluation on node %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
            else:
                records.append(dict(reply.content["metrics"]))
        return MetricRecord(weighted_metrics(records)) if records else None

    def summary(self) -> None:
        log.info("FedMetaStrategy: %s, outer optimizer %s", self.sampling, self.optimizer.metadata())
