"""The delta-averaging strategy and its rules, beside it as Flower keeps
``flwr/serverapp/strategy/``: robust aggregation and the outer optimizer.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.server.strategy.aggregation import (
        AGGREGATIONS,
        AggregationRule,
        krum_selection,
    )
    from fedmeta.server.strategy.fedmeta import (
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
    from fedmeta.server.strategy.outer_optimizer import (
        OUTER_OPTIMIZERS,
        OuterOptimizer,
        OuterOptimizerConfig,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
