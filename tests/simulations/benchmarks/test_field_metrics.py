"""Field metrics of the benchmark (AI4I F1/AUROC/Brier at the base rate, C-MAPSS RMSE/NASA) against hand-computed
values."""

from __future__ import annotations

import math

import pytest
import torch

from fedmeta.common import FactoryData, TaskBatch
from fedmeta.simulations.benchmarks.field_metrics import field_rows, rows_in, score_field


def _batch(support_x: torch.Tensor) -> TaskBatch:
    tasks, shots = support_x.shape[:2]
    return TaskBatch(support_x, torch.zeros(tasks, shots, dtype=torch.long), support_x, torch.zeros(tasks, shots,
                                                                                                        dtype=torch.long))


def test_rows_in_finds_exact_rows_only():
    rows = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    assert rows_in(rows, torch.tensor([[[2.0, 3.0]], [[4.0, 5.0 + 1e-6]]])).tolist() == [False, True, False]


def test_ai4i_scores_leave_out_each_tasks_support_rows():
    x = torch.arange(6, dtype=torch.float32)[:, None]
    y = torch.tensor([1, 1, 0, 0, 0, 0])
    rows = field_rows("ai4i", FactoryData("H", x, y), (), 1.0)
    assert rows.own_rows
    assert rows.base_rate == pytest.approx(1 / 3)
    # Task 0 used row 0 (a failure) as support, task 1 used row 2. Margins 1, 2, -1, 0.5, -2, -3; at the base
    # rate 1/3 the failure probabilities are sigmoid(margin + log 1/2): .576, .787, .155, .452, .063, .024.
    logits = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [0.0, 0.5], [0.0, -2.0], [0.0, -3.0]])
    predictions = torch.stack([logits, logits])
    scores = score_field("ai4i", predictions, rows, _batch(torch.tensor([[[0.0]], [[2.0]]])))
    # Task 0 (rows 1-5): expected F1 flagging 1, 2, 3 rows = .634, .712, .622 -> threshold .452 (row 3 flagged
    # too): tp 1, fp 1 -> F1 2/3. Task 1 (rows 0,1,3,4,5): .542, .698, .740, .636 -> threshold .452 again:
    # tp 2, fp 1 -> F1 0.8. AUROC 1 for both: every failure outranks every other row.
    assert scores["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert scores["threshold"] == pytest.approx(1 / (1 + math.exp(-(0.5 + math.log(0.5)))))
    assert scores["auroc"] == pytest.approx(1.0)
    probabilities = torch.sigmoid(logits[:, 1] + math.log(0.5)).double()
    truth = (y == 1).double()
    briers = [float(((probabilities[keep] - truth[keep]) ** 2).mean()) for keep in ([1, 2, 3, 4, 5], [0, 1, 3, 4, 5])]
    assert scores["brier"] == pytest.approx(sum(briers) / 2, rel=1e-5)


def test_cmapss_scores_in_cycles_on_the_test_split():
    test = FactoryData("FD003/test", torch.zeros(2, 1, 3), torch.tensor([0.4, 0.8]))
    rows = field_rows("cmapss", FactoryData("held", torch.ones(4, 1, 3), torch.zeros(4)), (test,), 125.0)
    assert not rows.own_rows
    predictions = torch.tensor([[[0.4], [0.8]], [[0.48], [0.8]]])  # task 1 predicts 10 cycles late on engine 0
    scores = score_field("cmapss", predictions, rows, _batch(torch.ones(2, 1, 1, 3)))
    assert scores["rmse"] == pytest.approx((0.0 + math.sqrt(100 / 2)) / 2, rel=1e-5)
    assert scores["nasa"] == pytest.approx((0.0 + math.exp(10 / 10) - 1) / 2, rel=1e-5)


def test_a_diverged_model_scores_nan_and_other_data_sets_have_no_field_rows():
    x, y = torch.arange(4, dtype=torch.float32)[:, None], torch.tensor([1, 0, 0, 0])
    rows = field_rows("ai4i", FactoryData("H", x, y), (), 1.0)
    predictions = torch.full((1, 4, 2), float("nan"))
    scores = score_field("ai4i", predictions, rows, _batch(torch.tensor([[[9.0]]])))
    assert math.isnan(scores["f1"]) and math.isnan(scores["auroc"])
    assert field_rows("cwru", FactoryData("load3", x, y), (), 1.0) is None
