"""How a factory adapts the federation's trees to its own K rows: it boosts more trees on them from the
global ensemble (continued boosting). How many trees and at what rate is a recipe the federation learns:
each training factory scores every candidate recipe on K-shot tasks of its own rows (support rows to boost
on, query rows to score) and reports only the query losses (`recipe_losses`); the server keeps the recipe
with the lowest mean loss for each K (`best_recipes`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fedmeta.common.meta.algorithms import task_scores
from fedmeta.common.meta.tasks import TaskBatch
from fedmeta.common.trees.ensemble import boost, booster_params, load_ensemble, margins
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.settings import TreeRecipe, TreeSettings
from fedmeta.common.trees.shape import TreeShape

__all__ = [
    "RECIPE_LOSS_PREFIX",
    "TREE_RECIPES",
    "best_recipes",
    "continue_boosting",
    "recipe_losses",
    "tree_predictions",
]

RECIPE_LOSS_PREFIX = "recipe-loss"  # a training factory's metric ``recipe-loss-k{K}/{recipe}``


# Every factory scores the same candidates: none, and 5-50 trees at three rates.
TREE_RECIPES = (TreeRecipe(0, 0.0), *(TreeRecipe(trees, rate) for rate in (0.03, 0.1, 0.3) for trees in (5, 20, 50)))


def continue_boosting(ensemble: bytes, x: Tensor, y: Tensor, shape: TreeShape, settings: TreeSettings,
                      recipe: TreeRecipe, *, seed: int) -> bytes:
    """``ensemble`` (XGBoost JSON; empty: none) with ``recipe``'s trees boosted on the rows ``x``, ``y``: how a
    factory adapts or updates a tree package (no trees: the ensemble as it is)."""
    if not recipe.trees:
        return ensemble
    params = booster_params(shape, settings, rate=recipe.rate, seed=seed)
    labels = y.detach().cpu().double().numpy()
    return bytes(boost(ensemble, window_features(x), labels, params, recipe.trees, kind=shape.kind).save_raw("json"))


def tree_predictions(ensemble: bytes, batch: TaskBatch, shape: TreeShape, settings: TreeSettings,
                     recipes: Sequence[TreeRecipe], *, seed: int) -> dict[str, Tensor]:
    """Each recipe's query predictions ``[T, Q, outputs]`` after boosting on each task's support rows.
    One boosting a rate serves every tree count (the predictions use its first trees)."""
    start = load_ensemble(ensemble)
    base = 0 if start is None else start.num_boosted_rounds()
    out: dict[str, list[np.ndarray]] = {recipe.name: [] for recipe in recipes}
    for task in range(batch.num_tasks):
        support, query = window_features(batch.support_x[task]), window_features(batch.query_x[task])
        labels = batch.support_y[task].detach().cpu().double().numpy()
        for rate in sorted({recipe.rate for recipe in recipes if recipe.trees}):
            most = max(recipe.trees for recipe in recipes if recipe.rate == rate)
            params = booster_params(shape, settings, rate=rate, seed=seed + task)
            boosted = boost(start, support, labels, params, most, kind=shape.kind)
            for recipe in recipes:
                if recipe.trees and recipe.rate == rate:
                    out[recipe.name].append(margins(boosted, query, shape, rounds=(0, base + recipe.trees)))
        for recipe in recipes:
            if not recipe.trees:
                out[recipe.name].append(margins(start, query, shape))
    return {name: torch.from_numpy(np.stack(values)).float() for name, values in out.items()}


def recipe_losses(ensemble: bytes, batch: TaskBatch, shape: TreeShape, settings: TreeSettings,
                  recipes: Sequence[TreeRecipe] = TREE_RECIPES, *, seed: int) -> dict[str, float]:
    """Each recipe's mean query loss over the tasks (in the factory's units): all a factory reports of it."""
    predictions = tree_predictions(ensemble, batch, shape, settings, recipes, seed=seed)
    return {name: float(task_scores(values, batch, shape.kind)["loss"].mean()) for name, values in predictions.items()}


def best_recipes(metrics: Mapping[str, float], shots: Sequence[int]) -> dict[int, TreeRecipe]:
    """For each K, the recipe whose ``recipe-loss-k{K}/{recipe}`` is lowest (ties: the fewer trees), where the
    factories reported any."""
    chosen = {}
    for k in shots:
        prefix = f"{RECIPE_LOSS_PREFIX}-k{k}/"
        losses = {TreeRecipe.parse(key.removeprefix(prefix)): value for key, value in metrics.items()
                  if key.startswith(prefix)}
        if losses:
            chosen[k] = min(losses, key=lambda recipe: (losses[recipe], recipe.trees, recipe.rate))
    return chosen
