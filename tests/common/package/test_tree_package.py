"""A tree package (`common.package.model_package` with ``trees.json``): saved and loaded with its plan and hash;
a changed, foreign or non-finite ensemble is refused naming the problem; its model predicts what XGBoost does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xgboost

from fedmeta.common.data.scaling import TargetScaling
from fedmeta.common.package.model_package import (
    TREES_FILE,
    AdaptationPlan,
    Manifest,
    ModelPackage,
    PackageError,
    load_package,
    package_model,
    save_package,
    save_tree_package,
)
from fedmeta.common.trees.settings import TreePlan, TreeRecipe
from tests.support.tree_packages import CLASSES, PLAN, REGRESSION, small_ensemble, tree_manifest


def test_a_tree_package_loads_back_with_its_trees_plan_and_hash(tmp_path):
    ensemble = small_ensemble(REGRESSION)
    saved = save_tree_package(tmp_path / "model", ensemble, tree_manifest())
    loaded = load_package(tmp_path / "model")
    assert loaded.ensemble == ensemble and loaded.weights == {} and loaded.inner_lrs == {}
    assert loaded.manifest.to_json() == saved.manifest.to_json()
    assert loaded.manifest.trees == PLAN
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", TREES_FILE]
    assert (tmp_path / "model" / TREES_FILE).read_bytes() == ensemble  # XGBoost's own JSON, readable as it is
    assert xgboost.Booster(model_file=str(tmp_path / "model" / TREES_FILE)).num_boosted_rounds() == 10


def test_the_plan_gives_the_recipe_of_the_nearest_k():
    assert PLAN.recipe_for(1) == TreeRecipe(5, 0.3) and PLAN.recipe_for(12) == TreeRecipe(5, 0.3)
    assert PLAN.recipe_for(13) == TreeRecipe(20, 0.1) and PLAN.recipe_for(500) == TreeRecipe(20, 0.1)
    assert TreePlan().recipe_for(5) == TreeRecipe(20, 0.1)  # none chosen: the default continuation


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw.replace(b'"num_feature":"3"', b'"num_feature":"4"'), "on 4 columns"),
    (lambda raw: raw[: len(raw) // 2], "not an XGBoost JSON model"),
])
def test_foreign_or_damaged_trees_are_refused_when_saving(tmp_path, damage, message):
    with pytest.raises(PackageError, match=message):
        save_tree_package(tmp_path / "model", damage(small_ensemble(REGRESSION)), tree_manifest())
    assert not (tmp_path / "model").exists()


def test_a_changed_trees_file_or_a_non_finite_leaf_is_refused_when_loading(tmp_path):
    save_tree_package(tmp_path / "model", small_ensemble(REGRESSION), tree_manifest())
    trees_file = tmp_path / "model" / TREES_FILE
    document = json.loads(trees_file.read_bytes())
    document["learner"]["gradient_booster"]["model"]["trees"][0]["base_weights"][0] = 1.0
    trees_file.write_bytes(json.dumps(document).encode())
    with pytest.raises(PackageError, match="changed or damaged"):
        load_package(tmp_path / "model")

    tree = document["learner"]["gradient_booster"]["model"]["trees"][0]
    leaf = tree["left_children"].index(-1)
    tree["split_conditions"][leaf] = float("inf")
    with pytest.raises(PackageError, match="not finite"):
        save_tree_package(tmp_path / "other", json.dumps(document).encode(), tree_manifest())


def test_a_tree_manifest_needs_trees_and_a_tree_algorithm(tmp_path):
    with pytest.raises(PackageError, match="at least one tree"):
        save_tree_package(tmp_path / "model", b"", tree_manifest())
    with pytest.raises(PackageError, match="save_tree_package"):
        save_package(tmp_path / "model", {}, {}, tree_manifest())
    with pytest.raises(ValueError, match="a tree package adapts as xgb-bagging, xgb-cyclic, xgb-histogram, boosted"):
        tree_manifest(adaptation=AdaptationPlan("fomaml", 5, 0.1))


def test_the_package_model_predicts_what_xgboost_does_in_the_factorys_units():
    ensemble = small_ensemble(REGRESSION)
    target = TargetScaling(50.0, 4.0, rows=10)
    package = _package(ensemble, tree_manifest(target_scaling=target))
    x = torch.randn(7, 3)
    expected = xgboost.Booster(model_file=bytearray(ensemble)).predict(xgboost.DMatrix(x.numpy()))
    predicted = package_model(package)(x)[:, 0].numpy()
    np.testing.assert_allclose(predicted, expected * 4.0 + 50.0, rtol=1e-5)

    classes = _package(small_ensemble(CLASSES), tree_manifest(CLASSES))
    probability = xgboost.Booster(model_file=bytearray(classes.ensemble)).predict(xgboost.DMatrix(x.numpy()))
    logits = package_model(classes)(x)
    np.testing.assert_allclose(torch.softmax(logits, dim=1)[:, 1].numpy(), probability, rtol=1e-5)


def _package(ensemble: bytes, manifest: Manifest) -> ModelPackage:
    return ModelPackage({}, {}, manifest, ensemble=ensemble)
