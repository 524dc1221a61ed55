"""Packages whose head is solved on a factory's rows work on the whole factory floor: an ``r2d2`` federation's
package adapted, and a least-squares or closed-form head kept from any package; predict, update and export
follow what was kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedmeta.client.floor.cli import REPORT_FILE
from fedmeta.common import MetaConfig, RegressionTaskSampler, algorithm_model_config, build_model, meta_train
from fedmeta.common.data.synthetic import make_family
from fedmeta.common.package.model_package import CLOSED_FORM, AdaptationPlan, Manifest, PackageSchema, load_package
from fedmeta.common.package.model_package import save_package as write_package
from tests.client.conftest import FAMILY, FEATURES
from tests.support.cli import run_fedmeta


@pytest.fixture(scope="module")
def r2d2_package(tmp_path_factory):
    """A package meta-trained with ``r2d2`` on the family's training plants (its head reads the inputs too)."""
    root = tmp_path_factory.mktemp("r2d2")
    family = make_family(FAMILY)
    config = algorithm_model_config(family.model_config, "r2d2")
    torch.manual_seed(0)
    model = build_model(config)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    sampler = RegressionTaskSampler(list(family.train), 10, 10, seed=0, standardize_targets=True)
    trained = meta_train(model, weights, sampler, MetaConfig("r2d2", outer_lr=3e-3, meta_batch_size=8,
                                                             local_steps=100), device="cpu")
    manifest = Manifest(PackageSchema(FEATURES, "quality", "regression"), config, AdaptationPlan("r2d2", 1, 0.05),
                        "factory-rows", "run-r2d2", 5)
    write_package(root / "package", trained.weights, {}, manifest)
    return root / "package"


def _adapt(package, data, out, *extra: str) -> dict:
    code, output = run_fedmeta("adapt", "--model", str(package), "--data", str(data), "--rows", "20", "--out",
                               str(out), *extra)
    assert code == 0, output
    return json.loads((out / REPORT_FILE).read_text())


def _predict(package, data, out) -> np.ndarray:
    code, output = run_fedmeta("predict", "--model", str(package), "--data", str(data), "--out", str(out))
    assert code == 0, output
    return pd.read_csv(out)["predicted_quality"].to_numpy()


def test_an_r2d2_package_adapts_by_solving_its_head_and_predicts_updates_and_exports(r2d2_package, plant_package,
                                                                                    tmp_path):
    root, table = plant_package
    report = _adapt(r2d2_package, root / "plant.csv", tmp_path / "adapted", "--keep", "adapted")
    adapted = load_package(tmp_path / "adapted")
    assert adapted.manifest.adaptation.algorithm == "r2d2" and adapted.manifest.model.skip_inputs
    base = load_package(r2d2_package)
    assert torch.equal(adapted.weights["body.0.weight"], base.weights["body.0.weight"])  # only the head is solved
    assert not torch.equal(adapted.weights["head.weight"], base.weights["head.weight"])
    assert report["scores"]["adapted"]["rmse"] < 0.7 * report["scores"]["unadapted"]["rmse"], report["scores"]
    later = table.iloc[20:].drop(columns=["quality"])
    later.to_csv(tmp_path / "later.csv", index=False)
    predicted = _predict(tmp_path / "adapted", tmp_path / "later.csv", tmp_path / "scored.csv")
    rmse = float(np.sqrt(np.mean((predicted - table["quality"].iloc[20:].to_numpy()) ** 2)))
    assert rmse < 1.5 * report["scores"]["adapted"]["rmse"], (rmse, report["scores"])
    _update_and_export(tmp_path / "adapted", table, tmp_path)


def _update_and_export(package, table: pd.DataFrame, tmp_path) -> None:
    """An update solves the head again on the new rows (the body kept); the export predicts as predict does."""
    store = tmp_path / "store"
    assert run_fedmeta("update", "--store", str(store), "--from", str(package))[0] == 0
    table.iloc[20:70].to_csv(tmp_path / "week.csv", index=False)
    code, output = run_fedmeta("update", "--store", str(store), "--data", str(tmp_path / "week.csv"))
    assert code == 0, output
    first, second = (load_package(store / "versions" / name) for name in ("0001", "0002"))
    assert torch.equal(first.weights["body.0.weight"], second.weights["body.0.weight"])
    assert not torch.equal(first.weights["head.weight"], second.weights["head.weight"])
    pytest.importorskip("onnxruntime")
    code, output = run_fedmeta("export", "--model", str(package), "--out", str(tmp_path / "model.onnx"))
    assert code == 0, output


def test_least_squares_kept_from_any_package_is_the_line_through_the_rows(plant_package, tmp_path):
    root, table = plant_package
    report = _adapt(root / "package", root / "plant.csv", tmp_path / "line", "--keep", "least squares")
    kept = load_package(tmp_path / "line")
    assert kept.manifest.chosen == "least squares" and kept.manifest.adaptation.algorithm == CLOSED_FORM
    assert float(kept.weights["feature_scale"]) == 0.0 and report["chosen"] == "least squares"
    table.drop(columns=["quality"]).to_csv(tmp_path / "all.csv", index=False)
    predicted = _predict(tmp_path / "line", tmp_path / "all.csv", tmp_path / "scored.csv")
    # Ridge on the standardised inputs and target at the penalty it records (chosen by leave-one-out), the
    # intercept unpenalised: the normal equations, in the plant's units.
    manifest, penalty = kept.manifest, float(kept.weights["head_log_penalty"].double().exp())
    x = manifest.scaling.apply(torch.tensor(table[list(FEATURES)].to_numpy())).double().numpy()
    y = (table["quality"].to_numpy() - manifest.target_scaling.mean) / manifest.target_scaling.std
    design = np.column_stack([x, np.ones(len(x))])
    ridge = np.diag([penalty] * x.shape[1] + [0.0])
    line = np.linalg.solve(design[:20].T @ design[:20] + ridge, design[:20].T @ y[:20])
    expected = (design @ line) * manifest.target_scaling.std + manifest.target_scaling.mean
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-4 * table["quality"].std())
    _update_and_export(tmp_path / "line", table, tmp_path)
