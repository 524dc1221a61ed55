"""The exports of `fedmeta.server.strategy` (loaded on first use; see `__init__.py`)."""

from .aggregation import AGGREGATIONS, AggregationRule, krum_selection
from .fedmeta import (
    PULL_COST_FACTOR,
    PULL_INTERVAL_S,
    PULL_MAX_INTERVAL_S,
    FedMetaStrategy,
    ModelRecords,
    NodeInfo,
    SamplingSettings,
    Seat,
    exchange,
    model_records,
    weighted_metrics,
)
from .outer_optimizer import OUTER_OPTIMIZERS, OuterOptimizer, OuterOptimizerConfig
