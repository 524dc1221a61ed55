"""Continued boosting at a factory: recipes spelled and parsed, the federation's choice per K, and that
boosting on a task's own rows fits a shifted task better than the ensemble as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmeta.common.meta.tasks import TaskBatch
from fedmeta.common.trees.continuation import TREE_RECIPES, best_recipes, recipe_losses, tree_predictions
from fedmeta.common.trees.ensemble import (
    EMPTY_ENSEMBLE,
    booster_params,
    load_ensemble,
    margins,
    new_trees,
)
from fedmeta.common.trees.settings import TreeRecipe, TreeSettings
from fedmeta.common.trees.shape import TreeShape

SHAPE = TreeShape(3, "regression")


def _plant(x, offset: float):
    return np.sin(2 * x[..., 0]) + x[..., 1] + offset


@pytest.fixture(scope="module")
def ensemble() -> bytes:
    x = np.random.default_rng(0).normal(size=(400, 3))
    return new_trees(EMPTY_ENSEMBLE, x, _plant(x, 0.0), booster_params(SHAPE, TreeSettings(), rate=0.1, seed=0), 40,
                     kind="regression")


def test_recipes_spell_and_parse_back():
    assert [TreeRecipe.parse(recipe.name) for recipe in TREE_RECIPES] == list(TREE_RECIPES)
    for bad in ("20", "x0.1", "0x0.1", "5x2", "fivex0.1"):
        with pytest.raises(ValueError, match="tree recipe"):
            TreeRecipe.parse(bad)


def test_the_federation_keeps_the_lowest_mean_loss_per_k_and_the_fewer_trees_on_a_tie():
    metrics = {"recipe-loss-k5/none": 0.9, "recipe-loss-k5/20x0.1": 0.4, "recipe-loss-k5/5x0.1": 0.4,
               "recipe-loss-k10/50x0.3": 0.2, "recipe-loss-k10/none": 0.5, "num-examples": 7.0}
    assert best_recipes(metrics, (5, 10, 20)) == {5: TreeRecipe(5, 0.1), 10: TreeRecipe(50, 0.3)}


def test_no_trees_is_the_ensemble_and_boosting_on_the_rows_fits_a_shifted_task(ensemble):
    generator = torch.Generator().manual_seed(1)
    support, query = torch.randn(8, 20, 3, generator=generator), torch.randn(8, 30, 3, generator=generator)
    batch = TaskBatch(support, _plant(support, 1.5).float(), query, _plant(query, 1.5).float())
    predictions = tree_predictions(ensemble, batch, SHAPE, TreeSettings(), TREE_RECIPES, seed=0)
    expected = margins(load_ensemble(ensemble), query.reshape(-1, 3).double().numpy(), SHAPE)
    np.testing.assert_allclose(predictions["none"].reshape(-1, 1).numpy(), expected, rtol=1e-5, atol=1e-5)
    losses = recipe_losses(ensemble, batch, SHAPE, TreeSettings(), seed=0)
    # The shift of 1.5 costs about 2.25 unadapted; 50 trees at 0.1 on 20 rows recover most of it.
    assert losses["none"] > 1.5
    assert losses["50x0.1"] < 0.5 * losses["none"]
