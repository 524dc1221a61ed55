"""What a factory does with K labelled rows besides adapting the federation's model, scored the way the
federation's evaluation scores that model: so a researcher sees at once when the federation is not worth it.

- A linear model on the K rows alone (`linear_predictor`): least squares for a regression target (ridge,
  the penalty of least leave-one-out error) or L2-penalised logistic regression for classes, on the
  factory-scaled inputs (a window model: its last step's channels). What a plant fits in a spreadsheet.
- The model a factory would keep (`chosen_losses`): each task scores every candidate on folds of its own
  K support rows and keeps the one of least error, the rule `fedmeta adapt` applies
  (`client.floor.candidates`); its query error is what the factory ends up with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from fedmeta.common.meta.adaptation_recipe import MAX_FOLDS, fold_batch, support_folds
from fedmeta.common.meta.algorithms import task_scores
from fedmeta.common.meta.closed_form_head import solve_linear
from fedmeta.common.meta.losses import task_losses
from fedmeta.common.meta.tasks import TaskBatch

__all__ = ["Predictor", "TaskScores", "chosen_losses", "chosen_outputs", "linear_predictor", "on_rows"]

# Each task's query predictions ``[T, Q, outputs]`` of a model fitted on its support rows.
Predictor = Callable[[TaskBatch], Tensor]
TaskScores = dict[str, Tensor]  # "loss" (and "accuracy") per task, [T]


def _inputs(x: Tensor) -> Tensor:
    """Rows ``[T, N, F]`` as they are; windows ``[T, N, C, L]`` by their last step's channels."""
    return x if x.dim() == 3 else x[..., -1]


def linear_predictor(kind: str, classes: int) -> Predictor:
    """Least squares (regression) or logistic regression (``classes`` classes) on each task's support rows."""

    def predict(batch: TaskBatch) -> Tensor:
        head = solve_linear(_inputs(batch.support_x).double(), batch.support_y, kind, classes, None)[0]
        return head.predict(_inputs(batch.query_x).double()).float()

    return predict


def chosen_losses(predictors: Mapping[str, Predictor], batch: TaskBatch, kind: str,
                  scores: Mapping[str, TaskScores] | None = None) -> tuple[TaskScores, Tensor]:
    """The query scores of the predictor each task keeps by its held-out-fold error on its own support rows
    (ties: the first listed), and the index of each task's choice in ``predictors`` ``[T]``. A task with too
    few rows to fold keeps the first. ``scores``: each predictor's `task_scores` on ``batch`` where the caller
    has them already."""
    names = list(predictors)
    folds = support_folds(batch.support_y, kind, MAX_FOLDS, groups=batch.support_groups)
    tasks = batch.num_tasks
    if folds is None:
        choice = torch.zeros(tasks, dtype=torch.long)
    else:
        folded = fold_batch(batch, folds)
        held_out = [task_losses(predictors[name](folded), folded.query_y, kind).view(-1, tasks).mean(0)
                    for name in names]
        choice = _stacked(held_out).argmin(0)
    per_name = [scores[name] if scores is not None else task_scores(predictors[name](batch), batch, kind)
                for name in names]
    kept = {metric: _stacked([s[metric] for s in per_name]).gather(0, choice[None])[0] for metric in per_name[0]}
    return kept, choice


def _stacked(values: list[Tensor]) -> Tensor:
    """One row per predictor ``[P, T]``, float64 on the CPU."""
    return torch.stack([value.detach().double().cpu() for value in values])


def on_rows(batch: TaskBatch, x: Tensor) -> TaskBatch:
    """``batch`` with the rows ``x [n, *features]`` as every task's query set (their targets unknown: zeros), so a
    predictor fitted on each task's support rows predicts them (field rows, a test split)."""
    rows = x.to(batch.query_x.device, batch.query_x.dtype).expand(batch.num_tasks, *x.shape)
    return dataclasses.replace(batch, query_x=rows, query_y=batch.query_y.new_zeros(batch.num_tasks, len(x)))


def chosen_outputs(predictors: Mapping[str, Predictor], batch: TaskBatch, kind: str, x: Tensor) -> Tensor:
    """Each task's outputs ``[T, n, outputs]`` on the rows ``x`` from the predictor it keeps (`chosen_losses`)."""
    choice = chosen_losses(predictors, batch, kind)[1]
    rows = on_rows(batch, x)
    outputs = torch.stack([predictors[name](rows).detach().float().cpu() for name in predictors])
    return outputs[choice, torch.arange(batch.num_tasks)]
