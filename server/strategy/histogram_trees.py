"""``xgb-histogram`` on this server's factories: trees the server grows on the sum of every training
factory's gradient histograms (`common.trees.split_finding`), as boosting on their pooled rows would grow them.

A run asks the round's factories, each with a message of its own exchange type (`protocol.TREE_EXCHANGES`):
once, for their columns' sketches, which set the bin edges everyone shares; then, for each level of each
boosting round's trees, for their histograms at the ensemble's margins; in the last round, for the adaptation
recipes' query losses, as the other tree algorithms' factories report them. Replies are checked before they
are summed; a factory that fails, or sends what cannot be its honest sums, is left out of that exchange.
Seats, shared nodes, evaluation and delivery are `FactorySeats`', as for the networks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedmeta.common.federation import protocol
from fedmeta.common.trees.shape import TreeShape
from fedmeta.server.strategy.fedmeta import FactorySeats, ModelRecords, SamplingSettings, Seat, weighted_metrics
from fedmeta.server.strategy.trees import ensemble_records

__all__ = ["HistogramTreeStrategy", "histogram_model_records"]

log = logging.getLogger(__name__)


def histogram_model_records(ensemble: bytes, edges: np.ndarray | None) -> ModelRecords:
    """What every exchange sends: the ensemble and, once set, the bin edges."""
    records: dict = dict(ensemble_records(ensemble))
    if edges is not None:
        records[protocol.BIN_EDGES] = ArrayRecord([edges])
    return records


class HistogramTreeStrategy(FactorySeats):
    """The round's training factories asked exchange by exchange; each reply's records read and checked for
    their shape (the sums themselves are checked by `grow_round`)."""

    def __init__(self, sampling: SamplingSettings, shape: TreeShape, bins: int) -> None:
        super().__init__(sampling)
        self.shape, self.bins = shape, bins
        self.seats: list[Seat] = []

    def start_round(self, server_round: int) -> None:
        """Sample the factories every exchange of ``server_round`` asks."""
        self.seats = self.sample_train(server_round)

    def configure_train(self, server_round: int, model: ModelRecords, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One exchange's messages to the round's factories: its type is ``config``'s `protocol.TREE_EXCHANGE`."""
        exchange_type = str(config[protocol.TREE_EXCHANGE])
        if exchange_type not in protocol.TREE_EXCHANGES:
            raise ValueError(f"unknown tree exchange {exchange_type!r}")
        return self._messages(self.seats, RecordDict({**model, protocol.CONFIG: config}), exchange_type)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[None, MetricRecord]:
        """The recipe exchange's metrics averaged by the factories' rows (the other exchanges are read by
        `sketches` and `histograms`)."""
        records = [dict(records[protocol.METRICS]) for _, records in self._answers(replies, protocol.TREE_RECIPES,
                                                                                (protocol.METRICS,))]
        return None, MetricRecord(weighted_metrics(records) if records else {})

    def _answers(self, replies: Iterable[Message], exchange_type: str,
                 records: Sequence[str]) -> list[tuple[str, Mapping[str, object]]]:
        """(factory, records) of each factory that answered, in factory-key order; failures logged."""
        answers = []
        for reply in replies:
            for part in self._parts(reply, exchange_type, records):
                if part.error is not None:
                    log.warning("factory %s on node %d failed %s: %s", part.factory, part.node, exchange_type,
                                part.error)
                elif all(record in part.records for record in records):
                    answers.append((part.factory, part.records))
                else:
                    log.warning("factory %s's %s reply lacks %s", part.factory, exchange_type, ", ".join(records))
        return sorted(answers, key=lambda answer: answer[0])

    def sketches(self, replies: Iterable[Message]) -> list[tuple[np.ndarray, float]]:
        """Each factory's column sketch and rows, where it has this federation's shape."""
        sketches = []
        for factory, records in self._answers(replies, protocol.TREE_SKETCH, (protocol.SKETCH, protocol.METRICS)):
            arrays = [array.numpy() for array in records[protocol.SKETCH].values()]
            rows = float(records[protocol.METRICS].get(protocol.NUM_EXAMPLES, 0))
            expected = (self.shape.num_feature, self.bins - 1)
            if len(arrays) != 1 or arrays[0].shape != expected or not np.isfinite(arrays[0]).all() or not rows > 0:
                log.warning("factory %s's sketch left out: expected one finite %s array and a positive row count",
                            factory, expected)
                continue
            sketches.append((arrays[0], rows))
        return sketches

    def histograms(self, replies: Iterable[Message]) -> list[tuple[str, list[np.ndarray]]]:
        """Each factory's level histograms, one array per tree group (`grow_round` checks their values)."""
        return [(factory, [array.numpy() for array in records[protocol.HISTOGRAMS].values()])
                for factory, records in self._answers(replies, protocol.TREE_HISTOGRAMS, (protocol.HISTOGRAMS,))]

    @staticmethod
    def exchange_config(config: ConfigRecord, exchange_type: str, *, opens_round: bool,
                        **fields: object) -> ConfigRecord:
        """The round's config for one exchange: its type, whether it opens the round, and its own ``fields``."""
        return ConfigRecord({**config, protocol.TREE_EXCHANGE: exchange_type, protocol.OPENS_ROUND: opens_round,
                             **fields})

    def summary(self) -> None:
        log.info("HistogramTreeStrategy: %s, %d bins, %s", self.shape, self.bins, self.sampling)
