"""The final model package reaches a factory: stored under its model folder per run and round, checked by
its hash, never written over, and the factory's reply says only whether it stored it. A tree run's package
travels as its ensemble; a finished run resumed for more rounds moves its earlier package aside."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict

from fedmeta.client import make_client_app
from fedmeta.common import EvaluationSettings, pack_meta_parameters, source_from_config
from fedmeta.common.federation import protocol
from fedmeta.common.package.model_package import PackageError, load_package
from fedmeta.common.trees.ensemble import boost, booster_params
from fedmeta.common.trees.settings import TreeSettings
from fedmeta.common.trees.shape import tree_shape
from fedmeta.server import RunDirectory, initial_meta_parameters
from fedmeta.server.package import write_run_package, write_tree_package
from fedmeta.server.strategy.fedmeta import model_records
from fedmeta.server.strategy.trees import ensemble_records
from tests.support.flower_messages import delivered

RUN_CONFIG = {"family": "quality", "num-factories": 3, "num-held-out": 1, "device": "cpu"}


def _run_package(tmp_path):
    source = source_from_config(RUN_CONFIG)
    params = initial_meta_parameters(source, "metasgd", 0.05, seed=0)
    run_dir = RunDirectory(tmp_path / "run-7")
    run_dir.append_metrics({"round": 4, "eval/loss-k5": 0.25, "train/query-loss": 0.5})
    evaluation = EvaluationSettings(algorithm="metasgd", steps=10, lr=0.05)
    return write_run_package(run_dir, params, source, evaluation, round=4)


def _deliver(app, package, node_config, weights_change: float = 0.0):
    weights = {name: t + weights_change for name, t in package.weights.items()}
    model = ensemble_records(package.ensemble) if package.manifest.trees else \
        model_records(pack_meta_parameters(weights, package.inner_lrs))
    records = {
        **model,
        protocol.CONFIG: ConfigRecord({protocol.MANIFEST: json.dumps(package.manifest.to_json())}),
    }
    context = Context(run_id=1, node_id=3, node_config=node_config, state=RecordDict(), run_config={})
    return app(delivered(RecordDict(records), protocol.MODEL_DELIVERY, 3), context)


def test_the_run_package_holds_the_final_model_its_recipe_and_held_out_metrics(tmp_path):
    package = _run_package(tmp_path)
    loaded = load_package(tmp_path / "run-7" / "model")
    assert loaded.manifest.to_json() == package.manifest.to_json()
    manifest = loaded.manifest
    assert (manifest.run, manifest.round, manifest.metrics) == ("run-7", 4, {"loss-k5": 0.25})
    assert (manifest.adaptation.algorithm, manifest.adaptation.steps, manifest.adaptation.lr) == ("metasgd", 10, 0.05)
    assert manifest.schema.features == ("x0", "x1", "x2", "x3", "x4", "x5") and manifest.scaling_rule == "factory-rows"
    assert set(loaded.inner_lrs) == set(loaded.weights)  # Meta-SGD's learned rates travel with the weights


def test_a_factory_stores_the_delivered_package_once_per_run_and_round(tmp_path):
    package = _run_package(tmp_path)
    app = make_client_app(RUN_CONFIG)
    models = tmp_path / "plant-models"
    node = {"partition-id": 3, "model-dir": str(models)}
    reply = _deliver(app, package, node)
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {"metrics"}  # what leaves the factory: one number
    assert isinstance(reply.content["metrics"], MetricRecord) and dict(reply.content["metrics"]) == {"stored": 1}
    stored = load_package(models / "run-7" / "round-000004")
    assert stored.manifest.to_json() == package.manifest.to_json()  # same hash, the server's versions
    assert all(torch.equal(stored.weights[n], package.weights[n]) for n in package.weights)

    again = _deliver(app, package, node)  # a resumed server delivers again: the same package is kept
    assert not again.has_error() and dict(again.content["metrics"]) == {"stored": 1}


def test_a_damaged_or_different_package_is_refused_and_nothing_stored_is_changed(tmp_path):
    package = _run_package(tmp_path)
    app = make_client_app(RUN_CONFIG)
    models = tmp_path / "plant-models"
    with pytest.raises(PackageError, match="changed or damaged on the way"):  # Flower replies with this error
        _deliver(app, package, {"partition-id": 3, "model-dir": str(models)}, weights_change=1e-3)
    assert not (models / "run-7").exists() or not any((models / "run-7").iterdir())

    _deliver(app, package, {"partition-id": 3, "model-dir": str(models)})
    before = (models / "run-7" / "round-000004" / "weights.safetensors").read_bytes()
    other = RunDirectory(tmp_path / "elsewhere" / "run-7")
    other_package = write_run_package(other, {n: t * 2 for n, t in pack_meta_parameters(
        package.weights, package.inner_lrs).items()}, source_from_config(RUN_CONFIG),
        EvaluationSettings(algorithm="metasgd", steps=10, lr=0.05), round=4)
    with pytest.raises(PackageError, match="holds another package"):
        _deliver(app, other_package, {"partition-id": 3, "model-dir": str(models)})
    assert (models / "run-7" / "round-000004" / "weights.safetensors").read_bytes() == before


def test_a_node_without_a_model_folder_says_it_stored_nothing(tmp_path):
    reply = _deliver(make_client_app(RUN_CONFIG), _run_package(tmp_path), {"partition-id": 3})
    assert not reply.has_error() and dict(reply.content["metrics"]) == {"stored": 0}


def test_a_finished_run_resumed_for_more_rounds_moves_its_earlier_package_aside(tmp_path):
    first = _run_package(tmp_path)
    run_dir = RunDirectory(tmp_path / "run-7")
    run_dir.append_metrics({"round": 6, "eval/loss-k5": 0.2})
    params = {n: t * 0.5 for n, t in pack_meta_parameters(first.weights, first.inner_lrs).items()}
    later = write_run_package(run_dir, params, source_from_config(RUN_CONFIG),
                              EvaluationSettings(algorithm="metasgd", steps=10, lr=0.05), round=6)
    assert load_package(tmp_path / "run-7" / "model").manifest.round == 6 == later.manifest.round
    aside = load_package(tmp_path / "run-7" / "model-round-000004")
    assert aside.manifest.weights_sha256 == first.manifest.weights_sha256  # kept, not overwritten


def _tree_package(tmp_path):
    source = source_from_config(RUN_CONFIG)
    shape = tree_shape(source.model_config, source.task_kind)
    x = torch.randn(60, shape.num_feature).double().numpy()
    trees = boost(None, x, x[:, 0], booster_params(shape, TreeSettings(), rate=0.3, seed=0), 4, kind="regression")
    run_dir = RunDirectory(tmp_path / "run-8")
    run_dir.append_metrics({"round": 4, "eval/loss-k5": 0.4})
    evaluation = EvaluationSettings(algorithm="xgb-bagging", tree_recipes=("5=5x0.3", "10=20x0.1"))
    return write_tree_package(run_dir, bytes(trees.save_raw("json")), source, evaluation, round=4)


def test_a_tree_runs_package_reaches_the_factory_as_its_ensemble_and_recipes(tmp_path):
    package = _tree_package(tmp_path)
    assert package.manifest.trees.recipes[5].name == "5x0.3" and package.manifest.metrics == {"loss-k5": 0.4}
    models = tmp_path / "plant-models"
    reply = _deliver(make_client_app(RUN_CONFIG), package, {"partition-id": 3, "model-dir": str(models)})
    assert not reply.has_error(), reply.error
    assert dict(reply.content["metrics"]) == {"stored": 1}
    stored = load_package(models / "run-8" / "round-000004")
    assert stored.ensemble == package.ensemble and stored.manifest.to_json() == package.manifest.to_json()
