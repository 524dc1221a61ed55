"""A factory's part in federated trees (`common.trees`): boost new trees on its own rows and reply with
those trees and metrics only; in the last round also score the adaptation recipes on K-shot tasks of its
own rows; as a held-out factory, score the ensemble after each K's chosen recipe."""

from __future__ import annotations

import weakref

import numpy as np
from torch import Tensor

from fedmeta.client.rounds.factory import LoadedFactory, sampler_for
from fedmeta.common import NUM_EXAMPLES, EvaluationSettings, FactoryData, RoundSettings, standardizes_targets
from fedmeta.common.data.scaling import TargetScaling
from fedmeta.common.meta.factory_choice import Predictor
from fedmeta.common.meta.tasks import TaskBatch
from fedmeta.common.trees.continuation import (
    RECIPE_LOSS_PREFIX,
    recipe_losses,
    tree_predictions,
)
from fedmeta.common.trees.ensemble import EMPTY_ENSEMBLE, balanced_weights, booster_params, new_trees, raw_margins
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.histogram_wire import pack_histograms
from fedmeta.common.trees.histograms import (
    LevelSplits,
    bin_columns,
    column_sketch,
    gradients,
    level_histograms,
)
from fedmeta.common.trees.settings import ROWS_ALONE_TREES, TreePlan, TreeRecipe
from fedmeta.common.trees.shape import TreeShape, tree_shape

__all__ = [
    "RECIPE_TASKS", "chosen_recipe", "factory_tree_shape", "recipe_metrics", "rows_alone_trees", "tree_histograms",
    "tree_predictor", "tree_sketch", "tree_update",
]

RECIPE_TASKS = 10  # K-shot tasks a factory scores the recipes on, for each K


def factory_tree_shape(factory: LoadedFactory) -> TreeShape:
    return tree_shape(factory.source.model_config, factory.source.task_kind)


# A factory's rows as the trees see them, per loaded data (frozen): xgb-histogram asks for them at every level of
# every tree, and a window's statistics cost far more than the sums.
_TREE_ROWS: weakref.WeakKeyDictionary[FactoryData, tuple[np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


def _training_rows(factory: LoadedFactory) -> tuple[np.ndarray, np.ndarray]:
    """The factory's rows as the trees see them; a target it standardises, standardised with its own rows."""
    rows = _TREE_ROWS.get(factory.data)
    if rows is None:
        y = factory.data.y
        if standardizes_targets(factory.source):
            y = TargetScaling.fit(y).apply(y)
        rows = _TREE_ROWS[factory.data] = (window_features(factory.data.x), y.double().numpy())
    return rows


def _check_trains(factory: LoadedFactory) -> None:
    if factory.role != "train":
        raise ValueError(f"factory {factory.data.name!r} is held out (role {factory.role!r}) and never trains")


def recipe_metrics(factory: LoadedFactory, ensemble: bytes, settings: RoundSettings) -> dict[str, float]:
    """The rows' count and, for each K the round asks for, each recipe's query loss on K-shot tasks of the
    factory's rows adapted from ``ensemble`` (`common.trees.continuation`): all a factory reports of them."""
    _check_trains(factory)
    metrics: dict[str, float] = {NUM_EXAMPLES: factory.data.num_samples}
    shape, trees = factory_tree_shape(factory), settings.tree_settings()
    for k in settings.recipe_shots:
        batch = sampler_for(factory, k, settings.query_size, seed=settings.seed, stream=f"recipe-k{k}").sample(
            RECIPE_TASKS)
        losses = recipe_losses(ensemble, batch, shape, trees, seed=settings.seed)
        metrics.update({f"{RECIPE_LOSS_PREFIX}-k{k}/{name}": loss for name, loss in losses.items()})
    return metrics


def tree_update(factory: LoadedFactory, ensemble: bytes, settings: RoundSettings) -> tuple[bytes, dict[str, float]]:
    """This round's new trees, boosted from ``ensemble`` on the factory's rows, and its `recipe_metrics`."""
    _check_trains(factory)
    shape, trees = factory_tree_shape(factory), settings.tree_settings()
    x, y = _training_rows(factory)
    params = booster_params(shape, trees, rate=trees.round_rate(settings.tree_factories),
                            seed=settings.seed * 100_003 + settings.server_round)
    update = new_trees(ensemble, x, y, params, trees.local_trees, kind=shape.kind)
    return update, recipe_metrics(factory, ensemble, settings)


def tree_sketch(factory: LoadedFactory, bins: int) -> tuple[np.ndarray, float]:
    """``xgb-histogram``'s first exchange: the quantiles of each of the factory's columns and its rows' count,
    from which the server sets the bins every factory shares (`common.trees.split_finding.merge_sketches`)."""
    _check_trains(factory)
    x, y = _training_rows(factory)
    return column_sketch(x, bins, balanced_weights(y, factory_tree_shape(factory).kind)), float(len(x))


# The last ensemble and bin edges a factory summed at, with its rows' bins, gradients and hessians there: every
# level of a boosting round asks at the same ones.
_LEVEL_INPUTS: weakref.WeakKeyDictionary[FactoryData, tuple[bytes, bytes, np.ndarray, np.ndarray, np.ndarray]] = \
    weakref.WeakKeyDictionary()


def tree_histograms(factory: LoadedFactory, ensemble: bytes, edges: np.ndarray,
                    splits: LevelSplits) -> list[np.ndarray]:
    """``xgb-histogram``'s reply at one level of a round's trees: per tree group, the gradient and hessian sums
    of the factory's rows in each bin of each column of each node asked for, at ``ensemble``'s margins, packed
    as they travel (`pack_histograms`)."""
    _check_trains(factory)
    cached = _LEVEL_INPUTS.get(factory.data)
    if cached is None or cached[0] != ensemble or cached[1] != edges.tobytes():
        shape = factory_tree_shape(factory)
        x, y = _training_rows(factory)
        grad, hess = gradients(raw_margins(ensemble, x, shape), y, shape)
        cached = _LEVEL_INPUTS[factory.data] = (ensemble, edges.tobytes(), bin_columns(x, edges), grad, hess)
    _, _, bins, grad, hess = cached
    return pack_histograms(level_histograms(bins, grad, hess, splits, edges.shape[1] + 1))


def _boosting(factory: LoadedFactory, ensemble: bytes, plan: TreePlan, recipe: TreeRecipe | None,
              seed: int) -> Predictor:
    """Each task's query predictions after ``recipe`` (None: the plan's for the support rows' count) on its
    support rows, from ``ensemble``."""
    shape = factory_tree_shape(factory)

    def predict(batch: TaskBatch) -> Tensor:
        chosen = plan.recipe_for(batch.support_y.shape[1]) if recipe is None else recipe
        return tree_predictions(ensemble, batch, shape, plan.settings, [chosen], seed=seed)[chosen.name]

    return predict


def tree_predictor(factory: LoadedFactory, ensemble: bytes, recipe: TreeRecipe,
                   settings: EvaluationSettings) -> Predictor:
    """Each task's query predictions after ``recipe`` on its support rows (trees as the federation grew them)."""
    return _boosting(factory, ensemble, settings.tree_plan(), recipe, settings.seed)


def rows_alone_trees(factory: LoadedFactory, seed: int) -> Predictor:
    """Each task's query predictions of trees boosted on its support rows alone (`ROWS_ALONE_TREES`): what the
    factory could build itself, a candidate of its choice beside the federation's model."""
    return _boosting(factory, EMPTY_ENSEMBLE, ROWS_ALONE_TREES, None, seed)


def chosen_recipe(settings: EvaluationSettings, k: int) -> TreeRecipe:
    """The federation's recipe for K (`common.trees.settings.TreePlan.recipe_for`)."""
    return settings.tree_plan().recipe_for(k)
