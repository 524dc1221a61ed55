"""What a factory keeps by cross-validation on its own K rows: the candidate of least held-out-fold error, the
first listed on a tie, and the first where the rows are too few to fold; scored on the query rows in the
factory's units."""

from __future__ import annotations

import torch

from fedmeta.common import TaskBatch
from fedmeta.common.meta.factory_choice import chosen_losses, chosen_outputs, linear_predictor


def _batch() -> TaskBatch:
    """Two tasks: the first linear in its input, the second constant at 3 with a little noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 15, 1, generator=g)
    y = torch.stack([2 * x[0, :, 0] + 1, 3 + 0.01 * torch.randn(15, generator=g)])
    return TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:]).standardize_targets()


def _constant(batch: TaskBatch) -> torch.Tensor:
    """The support rows' mean for every query row: zero in standardised units."""
    return batch.query_x.new_zeros(*batch.query_x.shape[:2], 1)


def test_each_task_keeps_the_candidate_of_least_held_out_error_and_is_scored_with_it():
    batch = _batch()
    predictors = {"mean": _constant, "line": linear_predictor("regression", 1)}
    scores, choice = chosen_losses(predictors, batch, "regression")
    assert choice.tolist() == [1, 0]  # the line for the linear task; the mean for the constant one (a line fits noise)
    line_error = (predictors["line"](batch)[0, :, 0] - batch.query_y[0]).square().mean()
    torch.testing.assert_close(scores["loss"][0], (line_error * batch.target_std[0] ** 2).double(), rtol=1e-5,
                               atol=1e-9)
    outputs = chosen_outputs(predictors, batch, "regression", batch.query_x[0])
    assert outputs.shape == (2, 5, 1) and bool((outputs[1] == 0).all())


def test_too_few_rows_to_fold_keep_the_first_candidate():
    batch = _batch()
    one = TaskBatch(batch.support_x[:, :1], batch.support_y[:, :1], batch.query_x, batch.query_y)
    _, choice = chosen_losses({"mean": _constant, "line": linear_predictor("regression", 1)}, one, "regression")
    assert choice.tolist() == [0, 0]
