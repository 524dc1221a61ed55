"""The scores each field reports, beside the benchmark's K-shot query loss and accuracy.

- AI4I (binary machine failure), on the held-out factory's rows at their natural failure
  rate (~2%), minus the task's support rows: F1 of the failure class with the decision at
  the factory's own base rate (`common.package.decision.BaseRateDecision`: balanced-prior
  probabilities shifted to the factory's failure rate, threshold of the highest expected F1
  on those unlabelled rows), the threshold itself, the Brier score of the shifted
  probabilities (their calibration) and AUROC. The K-shot query sets are class-balanced,
  so their accuracy says little about a plant where 98% of the rows are fine.
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
from sklearn.metrics import f1_score, roc_auc_score
from torch import Tensor

from fedmeta.common import BaseRateDecision, FactoryData, TaskBatch
from fedmeta.common.data.datasets import nasa_score, rmse

__all__ = ["FIELD_METRICS", "FieldRows", "auroc", "failure_scores", "field_rows", "row_matches", "rows_in",
           "score_field"]

FIELD_METRICS: dict[str, tuple[str, ...]] = {
    "ai4i": ("f1", "auroc", "brier", "threshold"),
    "cmapss": ("rmse", "nasa"),
    "cmapss-fd004": ("rmse", "nasa"),
}


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ROC AUC, NaN where it is undefined (no positive or no negative row) instead of an error:
    a held-out split may hold no failure of some mode."""
    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < positive.size else float("nan")


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
    """Rows the field metrics score on; ``own_rows``: the factory's own, so each task's support is left out.
    ``base_rate``: the factory's failure rate (classification), known from its history."""

    x: Tensor
    y: Tensor
    own_rows: bool
    target_scale: float = 1.0
    base_rate: float | None = None


def field_rows(
    dataset: str, factory: FactoryData, test: Sequence[FactoryData], target_scale: float
) -> FieldRows | None:
    """The rows a held-out factory's field metrics use: its official test split where the data set has
    one, else its own rows; ``None`` for data sets without field metrics."""
    if dataset not in FIELD_METRICS:
        return None
    if test:
        return FieldRows(test[0].x, test[0].y, own_rows=False, target_scale=target_scale)
    base_rate = float((factory.y == 1).double().mean()) if dataset == "ai4i" else None
    return FieldRows(factory.x, factory.y, own_rows=True, target_scale=target_scale, base_rate=base_rate)


def failure_scores(y: Tensor, logits: Tensor, base_rate: float) -> dict[str, float]:
    """F1, AUROC, Brier score and threshold of binary class scores at the factory's failure rate."""
    decisions = BaseRateDecision(base_rate).decide(logits)
    failed = (y == 1).numpy()
    # AUROC on the logit margin: monotone in the probability, without ties where it rounds to 1.
    margin = (logits[:, 1] - logits[:, 0]).double().numpy()
    return {
        "f1": float(f1_score(failed, decisions.flags.numpy(), zero_division=0.0)),
        "auroc": auroc(failed, margin),
        "brier": float(((decisions.probabilities - torch.from_numpy(failed).double()) ** 2).mean()),
        "threshold": decisions.threshold,
    }


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
            per_task.append(failure_scores(y, out, rows.base_rate))
        else:
            pred, true = out[:, 0] * rows.target_scale, y * rows.target_scale
            per_task.append({"rmse": rmse(pred, true), "nasa": nasa_score(pred, true)})
    return {name: float(np.mean([scores[name] for scores in per_task])) for name in FIELD_METRICS[dataset]}
