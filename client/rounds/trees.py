"""A factory's part in federated trees (`common.trees`): boost new trees on its own rows and reply with
those trees and metrics only; in the last round also score the adaptation recipes on K-shot tasks of its
own rows; as a held-out factory, score the ensemble after each K's chosen recipe."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from fedmeta.client.rounds.factory import LoadedFactory, sampler_for
from fedmeta.common import NUM_EXAMPLES, EvaluationSettings, RoundSettings, standardizes_targets
from fedmeta.common.data.scaling import TargetScaling
from fedmeta.common.meta.factory_choice import Predictor
from fedmeta.common.meta.tasks import TaskBatch
from fedmeta.common.trees.continuation import (
    RECIPE_LOSS_PREFIX,
    recipe_losses,
    tree_predictions,
)
from fedmeta.common.trees.ensemble import EMPTY_ENSEMBLE, booster_params, new_trees
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.settings import ROWS_ALONE_TREES, TreePlan, TreeRecipe
from fedmeta.common.trees.shape import TreeShape, tree_shape

__all__ = [
    "RECIPE_TASKS", "chosen_recipe", "factory_tree_shape", "rows_alone_trees", "tree_predictor", "tree_update",
]

RECIPE_TASKS = 10  # K-shot tasks a factory scores the recipes on, for each K


def factory_tree_shape(factory: LoadedFactory) -> TreeShape:
    return tree_shape(factory.source.model_config, factory.source.task_kind)


def _training_rows(factory: LoadedFactory) -> tuple[np.ndarray, np.ndarray]:
    """The factory's rows as the trees see them; a target it standardises, standardised with its own rows."""
    y = factory.data.y
    if standardizes_targets(factory.source):
        y = TargetScaling.fit(y).apply(y)
    return window_features(factory.data.x), y.double().numpy()


def tree_update(factory: LoadedFactory, ensemble: bytes, settings: RoundSettings) -> tuple[bytes, dict[str, float]]:
    """This round's new trees, boosted from ``ensemble`` on the factory's rows, and its metrics: the rows'
    count and, where the round asks, each recipe's query loss for each K (`common.trees.continuation`)."""
    if factory.role != "train":
        raise ValueError(f"factory {factory.data.name!r} is held out (role {factory.role!r}) and never trains")
    shape, trees = factory_tree_shape(factory), settings.tree_settings()
    x, y = _training_rows(factory)
    params = booster_params(shape, trees, rate=trees.round_rate(settings.tree_factories),
                            seed=settings.seed * 100_003 + settings.server_round)
    update = new_trees(ensemble, x, y, params, trees.local_trees, kind=shape.kind)
    metrics: dict[str, float] = {NUM_EXAMPLES: factory.data.num_samples}
    for k in settings.recipe_shots:
        batch = sampler_for(factory, k, settings.query_size, seed=settings.seed, stream=f"recipe-k{k}").sample(
            RECIPE_TASKS)
        losses = recipe_losses(ensemble, batch, shape, trees, seed=settings.seed)
        metrics.update({f"{RECIPE_LOSS_PREFIX}-k{k}/{name}": loss for name, loss in losses.items()})
    return update, metrics


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
