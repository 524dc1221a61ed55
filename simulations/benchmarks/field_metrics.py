"""The scores each field reports, beside the benchmark's K-shot query loss and accuracy.

- AI4I (binary machine failure): F1 of the failure class and AUROC, on the held-out
  factory's rows at their natural failure rate (~2%), minus the task's support rows. The
  K-shot query sets are class-balanced, so their accuracy says little about a plant
  where 98% of the rows are fine.
- C-MAPSS: RMSE (cycles) and the NASA (PHM08) score on the target's official test split,
  one window per test engine.

Each task of an evaluation batch adapts on its own support set, so each gives its own
scores; the reported value is the mean over tasks (and held-out factories).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedmeta.common import FactoryData, TaskBatch
from fedmeta.common.datasets import f1_auroc, nasa_score, rmse

__all__ = ["FIELD_METRICS", "FieldRows", "field_rows", "row_matches", "rows_in", "score_field"]

FIELD_METRICS: dict[str, tuple[str, ...]] = {"ai4i": ("f1", "auroc"), "cmapss": ("rmse", "nasa")}


def row_matches(rows: Tensor, some: Tensor) -> Tensor:
    """``[m, n]`` bool: which of ``rows [n, ...]`` each of ``some [..., *row_shape]`` equals exactly."""
    flat = rows.reshape(rows.shape[0], -1).double()
    wanted = some.reshape(-1, flat.shape[1]).double()
    return torch.cdist(wanted, flat, compute_mode="donot_use_mm_for_euclid_dist") == 0


def rows_in(rows: Tensor, some: Tensor) -> Tensor:
    """A bool mask over ``rows [n, ...]``: which of them appear (exactly) among ``some``."""
    return row_matches(rows, some).any(dim=0)


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class FieldRows:
    """Rows the field metrics score on; ``own_rows``: the factory's own, so each task's support is left out."""

    x: Tensor
    y: Tensor
    own_rows: bool
    target_scale: float = 1.0


def field_rows(
    dataset: str, factory: FactoryData, test: Sequence[FactoryData], target_scale: float
) -> FieldRows | None:
    """The rows a held-out factory's field metrics use: its official test split where the data set has
    one, else its own rows; ``None`` for data sets without field metrics."""
    if dataset not in FIELD_METRICS:
        return None
    if test:
        return FieldRows(test[0].x, test[0].y, own_rows=False, target_scale=target_scale)
    return FieldRows(factory.x, factory.y, own_rows=True, target_scale=target_scale)


def _task_masks(rows: FieldRows, batch: TaskBatch) -> list[Tensor]:
    if not rows.own_rows:
        return [torch.ones(rows.y.shape[0], dtype=torch.bool)] * batch.num_tasks
    return [~rows_in(rows.x, batch.support_x[t]) for t in range(batch.num_tasks)]


def score_field(dataset: str, predictions: Tensor, rows: FieldRows, batch: TaskBatch) -> dict[str, float]:
    """Mean over the batch's tasks of the data set's field metrics; ``predictions [T, n, outputs]``
    are each task's model outputs on ``rows.x`` (logits or log-probabilities, or regression values)."""
    per_task: list[dict[str, float]] = []
    for t, mask in enumerate(_task_masks(rows, batch)):
        y, out = rows.y[mask], predictions[t][mask].detach().float()
        if not bool(torch.isfinite(out).all()):  # a diverged model: its scores are undefined, not an error
            per_task.append(dict.fromkeys(FIELD_METRICS[dataset], float("nan")))
        elif dataset == "ai4i":
            per_task.append(f1_auroc(y, out))
        else:
            pred, true = out[:, 0] * rows.target_scale, y * rows.target_scale
            per_task.append({"rmse": rmse(pred, true), "nasa": nasa_score(pred, true)})
    return {name: float(np.mean([scores[name] for scores in per_task])) for name in FIELD_METRICS[dataset]}
