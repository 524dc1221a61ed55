"""Small tree packages for tests: an ensemble boosted on a few synthetic rows, with its manifest."""

from __future__ import annotations

import numpy as np

from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.package.model_package import AdaptationPlan, Manifest, PackageSchema
from fedmeta.common.trees.ensemble import boost, booster_params
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.settings import TreePlan, TreeRecipe, TreeSettings
from fedmeta.common.trees.shape import tree_shape

REGRESSION = PackageSchema(("temperature", "pressure", "speed"), "strength", "regression")
CLASSES = PackageSchema(("temperature", "pressure", "speed"), "defect", "classification", ("ok", "scrap"))
PLAN = TreePlan(TreeSettings(depth=3), {5: TreeRecipe(5, 0.3), 20: TreeRecipe(20, 0.1)})


def tree_config(schema: PackageSchema, length: int | None = None) -> ModelConfig:
    """A table model's config, or with ``length`` a window model's (the schema's features as its channels)."""
    outputs = 1 if schema.task == "regression" else len(schema.classes or ())
    if length is None:
        return ModelConfig("mlp", (len(schema.features),), outputs, hidden=8, depth=1)
    return ModelConfig("cnn1d", (len(schema.features), length), outputs, hidden=8, depth=1)


def small_ensemble(schema: PackageSchema, rows: int = 200, rounds: int = 10, seed: int = 0,
                   length: int | None = None) -> bytes:
    """Trees boosted on ``rows`` standardised rows whose target follows the first two features, or with
    ``length`` on windows' statistics whose target mixes all of them (so the trees split on every kind)."""
    rng = np.random.default_rng(seed)
    config = tree_config(schema, length)
    x = window_features(rng.standard_normal((rows, *config.input_shape)))
    if length is None:
        signal = x[:, 0] - 0.5 * x[:, 1]
    else:
        signal = (x - x.mean(axis=0)) / x.std(axis=0) @ rng.standard_normal(x.shape[1])
    y = signal if schema.task == "regression" else (signal > 0).astype(np.float64)
    shape = tree_shape(config, schema.task)
    params = booster_params(shape, PLAN.settings, rate=0.3, seed=seed)
    return bytes(boost(None, x, y, params, rounds, kind=schema.task).save_raw("json"))


def tree_manifest(schema: PackageSchema = REGRESSION, **changes: object) -> Manifest:
    values: dict[str, object] = dict(
        schema=schema, model=tree_config(schema), adaptation=AdaptationPlan("xgb-bagging", 0, 0.1),
        scaling_rule="factory-rows", run="run-trees", round=3, trees=PLAN)
    return Manifest(**{**values, **changes})
