"""Choosing the adaptation recipe from the support rows alone (cross-validation, no adaptation a candidate)."""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import ModelConfig, TaskBatch, adapt_to_support, build_model
from fedmeta.common.meta.adaptation_recipe import Recipe, adapt_with_recipes, choose_recipes, fold_batch, support_folds
from fedmeta.common.meta.inner_loop import predict
from fedmeta.common.meta.losses import task_losses


def _model_and_weights(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig("mlp", (2,), 1, hidden=8, depth=1))
    return model, {name: p.detach().clone() for name, p in model.named_parameters()}


def _regression_batch(targets: torch.Tensor, seed: int = 0) -> TaskBatch:
    """Tasks ``[T, S]`` of targets on random inputs; the query set is a copy (never used for the choice)."""
    x = torch.randn(*targets.shape, 2, generator=torch.Generator().manual_seed(seed))
    return TaskBatch(x, targets, x, targets)


def test_classification_folds_hold_one_row_of_every_class_and_need_two_per_class():
    y = torch.tensor([[0, 1, 1, 0, 2, 2], [2, 2, 1, 0, 0, 1]])
    folds = support_folds(y, "classification")
    for task in range(2):
        for fold in (0, 1):
            assert sorted(y[task][folds[task] == fold].tolist()) == [0, 1, 2]
    assert support_folds(torch.tensor([[0, 1, 2]]), "classification") is None  # one row per class
    assert support_folds(torch.tensor([[0.5]]), "regression") is None
    folds = support_folds(torch.zeros(3, 12), "regression")  # at most 5 folds of equal size; 2 rows always train
    assert folds.max() == 4 and all(int((folds[0] == f).sum()) == 2 for f in range(5)) and int((folds == -1).sum()) == 6
    uneven = support_folds(torch.tensor([[0, 0, 0, 1, 1, 1]]), "classification")  # 3 per class: 3 folds
    assert sorted(uneven[0].tolist()) == [0, 0, 1, 1, 2, 2]


def test_the_chosen_candidate_is_the_least_adaptation_within_one_standard_error_of_the_best_by_hand():
    model, weights = _model_and_weights()
    batch = _regression_batch(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)) + 2.0)
    candidates = (Recipe(0), Recipe(2, 1.0), Recipe(5, 0.3))
    choice = choose_recipes(model, weights, batch, kind="regression", lr=0.05, candidates=candidates)
    best = choice.losses.min(dim=1)
    for task, index in enumerate(choice.chosen.tolist()):  # the least adaptation within one SE of the best
        bound = best.values[task] + choice.standard_errors[task, best.indices[task]]
        assert choice.losses[task, index] <= bound
        assert all(choice.losses[task, earlier] > bound for earlier in range(index))
    # Candidate 1 for task 0, by hand: 5 folds of a 6-row task hold out one row each; row 5 always trains.
    folds = [[0], [1], [2], [3], [4]]
    by_hand = 0.0
    for held in folds:
        kept = [r for r in range(6) if r not in held]
        part = TaskBatch(batch.support_x[:1, kept], batch.support_y[:1, kept], batch.support_x[:1, held],
                         batch.support_y[:1, held])
        params = adapt_to_support(model, weights, part, kind="regression", steps=2, lr=0.05)
        by_hand += float(task_losses(predict(model, params, part.query_x), part.query_y, "regression")[0]) / 5
    assert float(choice.losses[0, 1]) == pytest.approx(by_hand, rel=1e-5)


def test_no_adaptation_is_kept_where_adapting_only_fits_noise_and_adapting_is_chosen_where_it_helps():
    model, weights = _model_and_weights()
    with torch.no_grad():
        weights["head.weight"].zero_()
        weights["head.bias"].zero_()  # predicts 0: right on average for pure noise
    noise = 0.5 * torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    shifted = noise + 3.0  # a factory whose level differs: adapting the bias helps
    choice = choose_recipes(model, weights, _regression_batch(torch.cat([noise, shifted])), kind="regression",
                            lr=0.1)
    recipes = choice.recipes()
    assert sum(r.steps == 0 for r in recipes[:8]) >= 5  # noise: mostly left alone (6-8 of 8 over 5 seeds)
    assert all(r.steps > 0 for r in recipes[8:])  # shifted: always adapted


def test_each_task_is_adapted_with_its_own_recipe():
    model, weights = _model_and_weights()
    batch = _regression_batch(torch.randn(4, 6, generator=torch.Generator().manual_seed(3)) + 1.0)
    choice = choose_recipes(model, weights, batch, kind="regression", lr=0.05,
                            candidates=(Recipe(0), Recipe(3, 1.0)))
    choice = type(choice)(choice.candidates, torch.tensor([0, 1, 1, 0]), choice.losses, choice.standard_errors)
    params = adapt_with_recipes(model, weights, batch, choice, kind="regression", lr=0.05)
    adapted = adapt_to_support(model, weights, batch, kind="regression", steps=3, lr=0.05)
    for name, value in weights.items():
        torch.testing.assert_close(params[name][0], value)
        torch.testing.assert_close(params[name][3], value)
        torch.testing.assert_close(params[name][1:3], adapted[name][1:3].detach())


def test_tasks_too_small_to_fold_keep_the_default_recipe():
    model, weights = _model_and_weights()
    batch = TaskBatch(torch.randn(2, 2, 2), torch.tensor([[0, 1], [1, 0]]), torch.randn(2, 2, 2),
                      torch.tensor([[0, 1], [1, 0]]))
    model = build_model(ModelConfig("mlp", (2,), 2, hidden=8, depth=1))
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    default = Recipe(3, 1.0)
    choice = choose_recipes(model, weights, batch, kind="classification", lr=0.1, candidates=(Recipe(0), default),
                            default=default)
    assert choice.recipes() == [default, default] and bool(choice.losses.isnan().all())


def _grouped_batch(units: list[list[int]]) -> TaskBatch:
    """Regression tasks whose support rows carry their unit id as the only feature (to trace the folds)."""
    groups = torch.tensor(units)
    x = groups[..., None].float()
    y = torch.randn(groups.shape)
    return TaskBatch(x, y, x[:, :1], y[:, :1], groups)


def test_grouped_folds_hold_out_whole_units_never_part_of_one():
    # Task 0: units 7 (x3), 8 (x1), 9 (x2); task 1: units 1 (x2), 2 (x2), 3 (x1), 4 (x1).
    batch = _grouped_batch([[7, 8, 7, 9, 7, 9], [1, 2, 3, 1, 2, 4]])
    folds = support_folds(batch.support_y, "regression", groups=batch.support_groups)
    assert folds.shape == (2, 6) and int(folds.max()) == 2  # 3 folds: the fewest units of any task
    folded = fold_batch(batch, folds)
    for task in range(folded.num_tasks):
        trained = set(folded.support_x[task, :, 0].tolist())
        held = set(folded.query_x[task, :, 0].tolist())
        assert held and not trained & held, (task, trained, held)
    assert support_folds(torch.zeros(1, 4), "regression", groups=torch.full((1, 4), 5)) is None  # one unit


def test_choose_recipes_on_grouped_rows_keeps_the_default_where_a_task_has_one_unit():
    model = build_model(ModelConfig("mlp", (1,), 1, hidden=8, depth=1))
    weights = {name: p.detach() for name, p in model.named_parameters()}
    batch = _grouped_batch([[3, 3, 3, 3]])
    choice = choose_recipes(model, weights, batch, kind="regression", lr=0.1, candidates=(Recipe(0), Recipe(3)),
                            default=Recipe(3))
    assert choice.recipes() == [Recipe(3)] and bool(torch.isnan(choice.losses).all())
    two_units = choose_recipes(model, weights, _grouped_batch([[3, 4, 3, 4]]), kind="regression", lr=0.1,
                               candidates=(Recipe(0), Recipe(3)))
    assert bool(torch.isfinite(two_units.losses).all())
