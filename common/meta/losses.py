"""Per-task losses and metrics for task-batched predictions ``[T, N, outputs]``.

Each function returns one value per task (shape ``[T]``) so that the gradient of
their sum gives every task its own gradient in a single backward pass.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fedmeta.common.run_settings import TASK_KINDS

__all__ = ["TASK_KINDS", "task_accuracy", "task_losses"]


def task_losses(predictions: Tensor, targets: Tensor, kind: str) -> Tensor:
    """Mean loss of each task: MSE for regression, cross-entropy for classification."""
    if kind == "regression":
        return (predictions.squeeze(-1) - targets).square().mean(-1)
    if kind == "classification":
        flat = F.cross_entropy(predictions.flatten(0, -2), targets.flatten(), reduction="none")
        return flat.view(targets.shape).mean(-1)
    raise ValueError(f"unknown task kind {kind!r}; valid choices: {', '.join(TASK_KINDS)}")


def task_accuracy(predictions: Tensor, targets: Tensor) -> Tensor:
    """Fraction of correctly classified examples of each task."""
    return (predictions.argmax(-1) == targets).float().mean(-1)
