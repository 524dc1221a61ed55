"""Federated gradient-boosted trees: Flower's FedXgbBagging and FedXgbCyclic, on this server's factories.

Bagging: every sampled training factory boosts new trees from the global ensemble on its own rows, at
the rate divided among the round's factories, and the server appends them all. Cyclic: one training
factory a round, in turn by factory key, boosts at the full rate. As in Flower's strategies a factory
sends only its new trees (`common.trees.ensemble`); unlike them, this strategy samples only training
factories (Flower's sample every connected node, held-out ones too), keeps each tree's class when
appending (Flower's ``aggregate_bagging`` files every tree under class 0), and checks each reply
(`check_trees`) before XGBoost reads it. Seats, shared nodes, evaluation and delivery are
`FactorySeats`', as for the networks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from fedmeta.common.federation import protocol
from fedmeta.common.trees.ensemble import TreesRejected, append_trees, check_trees
from fedmeta.common.trees.settings import TreeSettings
from fedmeta.common.trees.shape import TreeShape
from fedmeta.server.strategy.fedmeta import FactorySeats, ModelRecords, SamplingSettings, Seat, weighted_metrics

__all__ = [
    "HISTOGRAM_ALGORITHM", "MAX_TREE_BYTES", "TreeStrategy", "aggregate_round", "append_replies", "check_reply",
    "cyclic_turn", "ensemble_bytes", "ensemble_records", "replies_needed",
]

log = logging.getLogger(__name__)

HISTOGRAM_ALGORITHM = "xgb-histogram"  # trees grown on the factories' summed histograms (`common.trees.split_finding`)
MAX_TREE_BYTES = 64 * 2**20  # a reply's trees in JSON: a depth-6 tree takes about 10 kB


def ensemble_records(ensemble: bytes) -> dict[str, ArrayRecord]:
    """The ensemble as a message carries it: one uint8 array, as Flower's FedXgb strategies send it."""
    return {protocol.ENSEMBLE: ArrayRecord([np.frombuffer(ensemble, dtype=np.uint8)])}


def ensemble_bytes(record: ArrayRecord) -> bytes:
    """The bytes of a one-array record (`ensemble_records`, a factory's trees)."""
    if len(record) != 1:
        raise TreesRejected(f"expected one array of trees, got {len(record)}")
    return next(iter(record.values())).numpy().tobytes()


def check_reply(trees: bytes, metrics: Mapping[str, float], shape: TreeShape, settings: TreeSettings, *,
                max_leaf: float) -> None:
    """Raise `TreesRejected` unless ``trees`` are one round's trees of this federation (`check_trees`) and
    ``metrics`` count the rows they grew on: what a factory's reply must pass before XGBoost reads it."""
    check_trees(trees, shape, max_rounds=settings.local_trees, max_leaf=max_leaf, max_bytes=MAX_TREE_BYTES)
    if not float(metrics.get(protocol.NUM_EXAMPLES, 0)) > 0:
        raise TreesRejected(f"{protocol.NUM_EXAMPLES} must be a positive number")


def append_replies(ensemble: bytes, accepted: Sequence[tuple[bytes, Mapping[str, float]]]) -> tuple[
    bytes, dict[str, float]
]:
    """``ensemble`` with every accepted reply's trees appended in the order given (factory-key order), and the
    replies' metrics averaged by their rows: a round's aggregation, shared with the benchmark's in-process
    rounds."""
    for trees, _ in accepted:
        ensemble = append_trees(ensemble, trees)
    return ensemble, weighted_metrics([metrics for _, metrics in accepted])


def aggregate_round(ensemble: bytes, replies: Sequence[tuple[str, bytes, Mapping[str, float]]], shape: TreeShape,
                    settings: TreeSettings, *, max_leaf: float, needed: int) -> tuple[bytes, dict[str, float]]:
    """One round's aggregation of ``replies`` (factory, trees, metrics), shared with the benchmark's in-process
    rounds: each reply checked (`check_reply`), a rejected one left out and logged, the rest appended in the
    order given (`append_replies`); with fewer than ``needed`` accepted the ensemble stays as it was. Diverging
    settings make honest factories grow leaves past the bound too: their trees are left out, as anyone's."""
    accepted = []
    for factory, trees, metrics in replies:
        try:
            check_reply(trees, metrics, shape, settings, max_leaf=max_leaf)
        except TreesRejected as error:
            log.warning("trees of factory %s left out: %s", factory, error)
            continue
        accepted.append((trees, metrics))
    summary: dict[str, float]
    if len(accepted) < needed:
        log.warning("%d factories' trees accepted, fewer than %d; ensemble unchanged", len(accepted), needed)
        summary = {"replies": float(len(accepted)), "model-unchanged": 1.0}
    else:
        ensemble, summary = append_replies(ensemble, accepted)
    summary["rejected"] = float(len(replies) - len(accepted))
    return ensemble, summary


def replies_needed(sampling: SamplingSettings, *, cyclic: bool) -> int:
    """The fewest accepted replies that grow the ensemble: a cyclic round's one factory, else the run's
    ``min-train-nodes``."""
    return 1 if cyclic else sampling.min_train_nodes


Turn = TypeVar("Turn")


def cyclic_turn(candidates: Sequence[Turn], server_round: int) -> Turn:
    """The one of ``candidates`` (in the federation's order) that boosts in ``server_round`` of a cyclic run."""
    return candidates[(server_round - 1) % len(candidates)]


class TreeStrategy(FactorySeats):
    """The global ensemble and the rounds that grow it (bagging, or ``cyclic``)."""

    def __init__(self, ensemble: bytes, sampling: SamplingSettings, shape: TreeShape, trees: TreeSettings, *,
                 cyclic: bool) -> None:
        super().__init__(sampling)
        self.ensemble, self.shape, self.trees, self.cyclic = ensemble, shape, trees, cyclic

    def sample_train(self, server_round: int) -> list[Seat]:
        if not self.cyclic:
            return super().sample_train(server_round)
        candidates = self.seats_with_role("train")
        if not candidates:
            raise RuntimeError("no training factory is connected")
        return [cyclic_turn(candidates, server_round)]

    def configure_train(
        self, server_round: int, model: ModelRecords, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        chosen = self.sample_train(server_round)
        config = ConfigRecord({**config, "tree-factories": len(chosen)})
        return self._messages(chosen, RecordDict({**model, protocol.CONFIG: config}), MessageType.TRAIN)

    def _reply(self, factory: str, node: int, records: dict,
               error: str | None) -> tuple[str, bytes, dict[str, float]] | None:
        """A factory's trees and metrics as its reply holds them, or None (logged) for a failed or malformed one."""
        if error is not None:
            log.warning("factory %s on node %d failed this round: %s", factory, node, error)
            return None
        try:
            return factory, ensemble_bytes(records[protocol.TREES]), dict(records[protocol.METRICS])
        except (KeyError, TypeError, ValueError) as error:  # TreesRejected is a ValueError
            log.warning("trees of factory %s from node %d left out: %s", factory, node, error)
            return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[None, MetricRecord]:
        """Append every accepted factory's trees, in factory-key order, to the ensemble (`aggregate_round`)."""
        replies = list(replies)
        parts = [part for reply in replies
                 for part in self._parts(reply, MessageType.TRAIN, (protocol.TREES, protocol.METRICS))]
        parts.sort(key=lambda part: part.factory)
        readable = [item for part in parts
                    if (item := self._reply(part.factory, part.node, part.records, part.error)) is not None]
        self.ensemble, summary = aggregate_round(
            self.ensemble, readable, self.shape, self.trees, max_leaf=self.sampling.max_delta_norm,
            needed=replies_needed(self.sampling, cyclic=self.cyclic))
        summary["rejected"] += float(len(parts) - len(readable))
        summary["bytes-received"] = float(sum(recorddict_to_proto(reply.content).ByteSize() for reply in replies
                                              if reply.has_content()))
        return None, MetricRecord(summary)

    def summary(self) -> None:
        log.info("TreeStrategy: %s, %s, %s", "cyclic" if self.cyclic else "bagging", self.trees, self.sampling)
