"""The factory floor with the federation's trees: `fedmeta adapt` scores the trees continued by the federation's
recipe, as they are, least squares and trees on the rows alone, and writes the choice (trees on the rows alone
only on request); the kept trees predict what XGBoost predicts, update with more trees, export to ONNX that
predicts the same (a window package's with its channels' statistics in the graph), refuse optimisation by
name. A network package's adapt reports trees on the rows alone."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
import xgboost
from onnx import TensorProto, helper

from fedmeta.client.floor.candidates import REPORTED, candidate_names
from fedmeta.client.floor.export_trees import tree_onnx
from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.data.synthetic import make_family
from fedmeta.common.package.model_package import (
    BOOSTED,
    TREES_FILE,
    AdaptationPlan,
    Manifest,
    PackageSchema,
    load_package,
    package_model,
    save_tree_package,
)
from fedmeta.common.trees.ensemble import boost, booster_params
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.settings import TreePlan, TreeRecipe, TreeSettings
from fedmeta.common.trees.shape import tree_shape
from tests.client.conftest import FAMILY, FEATURES
from tests.support.cli import run_fedmeta
from tests.support.tree_packages import CLASSES, REGRESSION, small_ensemble, tree_config, tree_manifest

WINDOW = 16  # steps in a window package's windows
WINDOW_SCALING = FeatureScaling(torch.tensor([20.0, 1e3, -5.0]), torch.tensor([2.0, 50.0, 0.5]), 40)
PLAN = TreePlan(TreeSettings(depth=4), {10: TreeRecipe(5, 0.1), 20: TreeRecipe(20, 0.1)})
FEDERATION_ROUNDS = 30


@pytest.fixture(scope="module")
def tree_package(plant_package, tmp_path_factory):
    """Trees boosted on the training plants' rows (each plant's target standardised with its own rows, as a
    federation's factories do), as the package a tree run ends with; the plant's table of `plant_package`."""
    root, table = plant_package
    family = make_family(FAMILY)
    x = torch.cat([plant.x for plant in family.train]).double().numpy()
    y = torch.cat([TargetScaling.fit(plant.y).apply(plant.y) for plant in family.train]).double().numpy()
    shape = tree_shape(family.model_config, "regression")
    trees = boost(None, x, y, booster_params(shape, PLAN.settings, rate=0.1, seed=0), FEDERATION_ROUNDS,
                  kind="regression")
    manifest = Manifest(PackageSchema(FEATURES, "quality", "regression"), family.model_config,
                        AdaptationPlan("xgb-bagging", 0, 0.05), "factory-rows", "run-trees", FEDERATION_ROUNDS,
                        trees=PLAN)
    folder = tmp_path_factory.mktemp("trees") / "package"
    save_tree_package(folder, bytes(trees.save_raw("json")), manifest)
    return folder, root / "plant.csv", table


def _adapt(package, data, out, *extra: str) -> dict:
    code, output = run_fedmeta("adapt", "--model", str(package), "--data", str(data), "--rows", "20", "--out",
                               str(out), *extra)
    assert code == 0, output
    return json.loads((out / "adaptation-report.json").read_text())


def test_adapting_trees_scores_every_candidate_and_keeps_the_federations_trees_continued(tree_package, tmp_path):
    package, data, _ = tree_package
    report = _adapt(package, data, tmp_path / "best")
    assert set(report["scores"]) == set(candidate_names("regression", trees=True))
    kept_unasked = [name for name in report["scores"] if name not in REPORTED]
    assert report["chosen"] == report["best"] == min(kept_unasked, key=lambda n: report["scores"][n]["mse"])

    report = _adapt(package, data, tmp_path / "kept", "--keep", "adapted")
    kept = load_package(tmp_path / "kept")
    assert kept.manifest.adaptation.algorithm == BOOSTED and kept.manifest.trees == PLAN
    assert (tmp_path / "kept" / TREES_FILE).is_file() and not kept.weights
    booster = xgboost.Booster(model_file=str(tmp_path / "kept" / TREES_FILE))
    assert booster.num_boosted_rounds() == FEDERATION_ROUNDS + PLAN.recipe_for(20).trees  # the recipe for 20 rows

    code, output = run_fedmeta("predict", "--model", str(tmp_path / "kept"), "--data", str(data), "--out",
                               str(tmp_path / "predicted.csv"))
    assert code == 0, output
    predicted = pd.read_csv(tmp_path / "predicted.csv")["predicted_quality"].to_numpy()
    rows = pd.read_csv(data)[list(FEATURES)].to_numpy()  # as the file holds them (the fixture's frame is float32)
    scaled = kept.manifest.scaling.apply(torch.from_numpy(rows))
    target = kept.manifest.target_scaling
    expected = booster.predict(xgboost.DMatrix(scaled.double().numpy())) * target.std + target.mean
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6 * target.std)


def test_kept_trees_update_with_more_trees_and_refuse_optimisation(tree_package, tmp_path):
    package, data, table = tree_package
    _adapt(package, data, tmp_path / "kept", "--keep", "adapted")
    code, output = run_fedmeta("update", "--store", str(tmp_path / "store"), "--from", str(tmp_path / "kept"))
    assert code == 0, output
    table.iloc[20:60].to_csv(tmp_path / "new.csv", index=False)
    code, output = run_fedmeta("update", "--store", str(tmp_path / "store"), "--data", str(tmp_path / "new.csv"))
    assert code == 0 and "version 2 written from 40 new rows" in output, output
    updated = load_package(tmp_path / "store" / "versions" / "0002")
    added = xgboost.Booster(model_file=bytearray(updated.ensemble)).num_boosted_rounds()
    assert added == FEDERATION_ROUNDS + PLAN.recipe_for(20).trees + PLAN.recipe_for(40).trees
    assert updated.manifest.lineage["previous_version"] == 1

    bounds = {"controllable": {name: [0.0, 10.0] for name in FEATURES}, "goal": "maximize"}
    (tmp_path / "bounds.json").write_text(json.dumps(bounds))
    code, output = run_fedmeta("optimize", "--model", str(tmp_path / "kept"), "--bounds", str(tmp_path / "bounds.json"))
    assert code != 0 and "trees have none" in output


def test_a_network_packages_adapt_reports_trees_on_the_rows_alone_and_keeps_them_on_request(plant_package, tmp_path):
    root, _ = plant_package
    report = _adapt(root / "package", root / "plant.csv", tmp_path / "trees", "--keep", "trees alone")
    assert "trees alone" in report["scores"] and report["chosen"] == "trees alone"
    kept = load_package(tmp_path / "trees")
    assert kept.manifest.adaptation.algorithm == BOOSTED and kept.ensemble
    code, output = run_fedmeta("predict", "--model", str(tmp_path / "trees"), "--data", str(root / "plant.csv"),
                               "--out", str(tmp_path / "predicted.csv"))
    assert code == 0, output
    assert pd.read_csv(tmp_path / "predicted.csv")["predicted_quality"].notna().all()


def test_kept_trees_export_to_onnx_that_predicts_as_fedmeta_predict_does(tree_package, tmp_path):
    package, data, _ = tree_package
    _adapt(package, data, tmp_path / "kept", "--keep", "adapted")
    code, output = run_fedmeta("export", "--model", str(tmp_path / "kept"), "--out", str(tmp_path / "line.onnx"),
                               "--check", str(data))
    assert code == 0, output
    assert run_fedmeta("predict", "--model", str(tmp_path / "kept"), "--data", str(data), "--out",
                       str(tmp_path / "scored.csv"))[0] == 0
    session = onnxruntime.InferenceSession(tmp_path / "line.onnx", providers=["CPUExecutionProvider"])
    features = pd.read_csv(data)[list(FEATURES)].to_numpy(dtype=np.float64)  # raw: the graph scales them
    exported = session.run(None, {"features": features})[0]
    predicted = pd.read_csv(tmp_path / "scored.csv")["predicted_quality"].to_numpy()
    assert exported.shape == (len(features),)
    np.testing.assert_allclose(exported, predicted, atol=1e-4, rtol=0)


def test_a_classification_tree_package_exports_its_class_probabilities(tmp_path):
    save_tree_package(tmp_path / "package", small_ensemble(CLASSES), tree_manifest(CLASSES))
    code, output = run_fedmeta("export", "--model", str(tmp_path / "package"), "--out", str(tmp_path / "c.onnx"))
    assert code == 0 and "expects standardised inputs" in output, output
    x = np.random.default_rng(1).standard_normal((50, 3))
    session = onnxruntime.InferenceSession(tmp_path / "c.onnx", providers=["CPUExecutionProvider"])
    exported = session.run(None, {"features": x})[0]
    logits = package_model(load_package(tmp_path / "package"))(torch.from_numpy(x).float())
    np.testing.assert_allclose(exported, torch.softmax(logits, dim=1).numpy(), atol=1e-5)


def _window_package(path, schema: PackageSchema):
    """Trees on 3 channels' windows of `WINDOW` steps, adapted: the factory's channel scaling (and target's)."""
    target = TargetScaling(10.0, 3.0, 40) if schema.task == "regression" else None
    manifest = tree_manifest(schema, model=tree_config(schema, WINDOW), scaling=WINDOW_SCALING, target_scaling=target)
    return save_tree_package(path, small_ensemble(schema, rounds=20, length=WINDOW), manifest)


def _raw_windows(rows: int) -> np.ndarray:
    """Windows in the factory's units around its scaling; the last one's first channel constant (no spread)."""
    windows = np.random.default_rng(2).standard_normal((rows, 3, WINDOW))
    windows[-1, 0] = 1.5
    return windows * WINDOW_SCALING.std.numpy()[:, None] + WINDOW_SCALING.mean.numpy()[:, None]


@pytest.mark.parametrize("schema", [REGRESSION, CLASSES], ids=["regression", "classification"])
def test_a_window_tree_package_exports_to_onnx_that_predicts_as_its_model_does(schema, tmp_path):
    _window_package(tmp_path / "package", schema)
    code, output = run_fedmeta("export", "--model", str(tmp_path / "package"), "--out", str(tmp_path / "w.onnx"))
    assert code == 0, output
    windows = _raw_windows(200)
    session = onnxruntime.InferenceSession(tmp_path / "w.onnx", providers=["CPUExecutionProvider"])
    exported = session.run(None, {"features": windows})[0]
    scaled = ((torch.from_numpy(windows) - WINDOW_SCALING.mean[:, None]) / WINDOW_SCALING.std[:, None]).float()
    with torch.no_grad():  # what `fedmeta predict` gives the model: the windows scaled in float64, as float32
        out = package_model(load_package(tmp_path / "package"))(scaled)
    if schema.task == "regression":  # in the factory's units
        np.testing.assert_allclose(exported, out[:, 0].numpy(), atol=1e-4, rtol=0)
    else:
        np.testing.assert_allclose(exported, torch.softmax(out, dim=1).numpy(), atol=1e-5, rtol=0)


def test_a_window_tree_graph_computes_the_statistics_its_trees_read(tmp_path):
    model = tree_onnx(_window_package(tmp_path / "package", REGRESSION))
    model.graph.output.extend([helper.make_tensor_value_info("window", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("window_statistics", TensorProto.DOUBLE, None)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    windows = _raw_windows(200)
    window, statistics = session.run(["window", "window_statistics"], {"features": windows})
    scaled = ((torch.from_numpy(windows) - WINDOW_SCALING.mean[:, None]) / WINDOW_SCALING.std[:, None]).float()
    np.testing.assert_array_equal(window, scaled.numpy())
    np.testing.assert_allclose(statistics, window_features(window), rtol=1e-6, atol=1e-12)
