"""The delta-averaging strategy and its rules, the federated trees' strategy, beside it as Flower keeps
``flwr/serverapp/strategy/``: robust aggregation and the outer optimizer.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "aggregation": ["AGGREGATIONS", "AggregationRule", "krum_selection"],
        "fedmeta": [
            "PULL_COST_FACTOR", "PULL_INTERVAL_S", "PULL_MAX_INTERVAL_S", "FactorySeats", "FedMetaStrategy",
            "ModelRecords", "NodeInfo", "SamplingSettings", "Seat", "exchange", "model_records", "weighted_metrics",
        ],
        "outer_optimizer": ["OUTER_OPTIMIZERS", "OuterOptimizer", "OuterOptimizerConfig"],
        "trees": ["MAX_TREE_BYTES", "TreeStrategy", "ensemble_bytes", "ensemble_records"],
    },
)
