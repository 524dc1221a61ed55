"""What every tree of a federation agrees on: its input columns, its task and its classes."""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.trees.features import WINDOW_STATISTICS

__all__ = ["TreeShape", "tree_shape"]


@dataclass(frozen=True)
class TreeShape:
    """What every tree of a federation agrees on: its input columns, task and classes."""

    num_feature: int
    kind: str
    classes: int = 1  # regression: 1

    @property
    def objective(self) -> str:
        if self.kind == "regression":
            return "reg:squarederror"
        return "binary:logistic" if self.classes == 2 else "multi:softprob"

    @property
    def groups(self) -> int:
        """Trees a boosting round adds: one per class beyond two, else one."""
        return self.classes if self.objective == "multi:softprob" else 1


def tree_shape(model_config: ModelConfig, kind: str) -> TreeShape:
    """The trees' shape for the rows a network of ``model_config`` reads: a table's columns, or a window's
    channels times `WINDOW_STATISTICS` (`common.trees.features.window_features`)."""
    dims = model_config.input_shape
    columns = dims[0] if len(dims) == 1 else dims[0] * len(WINDOW_STATISTICS)
    return TreeShape(columns, kind, model_config.output_dim if kind == "classification" else 1)
