"""``fedmeta benchmark``'s tree rows: federated XGBoost (bagging, cyclic) in-process and trees on the K rows
alone, scored on the same K-shot tasks as every method, with their wall time and a tree round's cost to a
factory beside a meta-learning round's."""

from __future__ import annotations

import math

import pytest
import torch

from fedmeta.client import LoadedFactory
from fedmeta.client.rounds.trees import factory_tree_shape, rows_alone_trees
from fedmeta.common import FactoryData
from fedmeta.common.data.scaling import TargetScaling
from fedmeta.common.trees.ensemble import load_ensemble, margins
from fedmeta.common.trees.features import window_features
from fedmeta.simulations.benchmarks import fewshot, fewshot_report
from fedmeta.simulations.benchmarks.seed_records import SeedRecords, SeedSteps
from fedmeta.simulations.benchmarks.tree_rounds import (
    engine_predictor,
    ensemble_of,
    ensemble_tensor,
    joined_histogram_predictor,
    round_factories,
    run_tree_rounds,
)

TREES = ("xgb-bagging", "xgb-cyclic", "xgb-histogram", "trees-alone")
FEDERATED = ("xgb-bagging", "xgb-cyclic", "xgb-histogram")


@pytest.fixture(scope="module")
def tree_run():
    plan = fewshot.plan_for("synthetic", quick=True, methods=TREES, shots=(1, 5, 20))
    training = fewshot._factories(plan.run_config(0), "train")
    return plan, fewshot.run_benchmark(plan), len(training)


def test_every_tree_method_scores_every_k_on_the_shared_tasks(tree_run):
    _, results, _ = tree_run
    assert list(results["results"]) == list(TREES) and results["shots"] == [1, 5, 20]
    for method in TREES:
        assert list(results["results"][method]) == ["1", "5", "20"], method
        for k, scores in results["results"][method].items():
            assert math.isfinite(scores["loss"]["mean"]) and scores["loss"]["mean"] > 0, (method, k)
    # Default tree settings, as the run settings give them; trees alone boost the recipe of no federation.
    cyclic = results["hyper_parameters"]["xgb-cyclic"]
    assert {key: cyclic[key] for key in ("tree-depth", "tree-rate", "tree-subsample", "local-trees")} == {
        "tree-depth": 6, "tree-rate": 0.1, "tree-subsample": 0.8, "local-trees": 1}
    assert results["hyper_parameters"]["trees-alone"] == {"tree-depth": 3, "tree-subsample": 1.0, "recipe": "20x0.3"}


def test_replies_past_the_servers_bound_are_left_out_as_the_server_leaves_them_not_a_crash():
    plan = fewshot.plan_for("synthetic", quick=True, methods=["xgb-bagging"])
    config = {**plan.run_config(0, "xgb-bagging"), "max-delta-norm": 1e-9}  # every leaf beyond it: a diverged run
    training = fewshot._factories(config, "train")
    run = run_tree_rounds(config, training, (5,), lambda: None)
    assert run.rejected == plan.rounds * len(training) and run.summary()["rejected"] == run.rejected
    assert run.trees == 0 and run.recipes == {}  # the ensemble stayed empty; no recipe was reported
    sane = run_tree_rounds(plan.run_config(0, "xgb-bagging"), training, (5,), lambda: None)
    assert sane.rejected == 0 and sane.trees == plan.rounds * len(training) and set(sane.recipes) == {5}


def test_wall_time_and_a_tree_rounds_cost_beside_a_meta_learning_rounds(tree_run):
    _, results, _ = tree_run
    seconds = results["seconds_per_method"]
    assert set(seconds) == {*TREES, "meta-round"} and all(value[0] > 0 for value in seconds.values())
    for method in FEDERATED:
        rounds = results["tree_rounds"][method]
        assert rounds["meta_algorithm"] == "maml"  # no meta-learner in the plan: MAML's round
        for name in ("round_seconds", "recipe_round_seconds", "meta_round_seconds", "bytes_sent"):
            assert rounds[name]["mean"] > 0, (method, name)
        assert set(rounds["recipes"][0]) == {"1", "5", "20"}
    lines = fewshot_report.round_cost_lines(results)
    assert len(lines) == 3 and "xgb-cyclic: a tree round costs a factory" in lines[1]
    assert "a meta-learning round (maml)" in lines[1] and "x a meta-learning round" in lines[1]
    markdown = fewshot_report.markdown(results)
    assert all(f"| {method} |" in markdown for method in TREES) and "a tree round costs a factory" in markdown


def test_bagging_appends_every_factorys_trees_and_cyclic_one_factorys_a_round(tree_run):
    plan, results, training = tree_run
    local_trees, groups = 1, 1  # the defaults; a regression target: one tree a boosting round
    assert results["tree_rounds"]["xgb-cyclic"]["trees"] == [plan.rounds * local_trees * groups]
    assert results["tree_rounds"]["xgb-bagging"]["trees"] == [plan.rounds * local_trees * groups * training]
    assert results["tree_rounds"]["xgb-histogram"]["trees"] == [plan.rounds * local_trees * groups]  # grown together
    factories = [LoadedFactory(FactoryData(name, torch.zeros(1, 1), torch.zeros(1)), "train", None)
                 for name in ("c", "a", "b")]
    turns = [round_factories(factories, server_round, cyclic=True)[0].data.name for server_round in range(1, 5)]
    assert turns == ["a", "b", "c", "a"]  # in turn by factory key, as TreeStrategy.sample_train
    assert [f.data.name for f in round_factories(factories, 1, cyclic=False)] == ["a", "b", "c"]


def test_the_report_marks_pooled_references_not_private_and_federated_trees_private():
    entry = {"loss": {"mean": 0.5, "std": 0.0}}
    results = {"metric": "loss", "shots": [5], "federated": {},
               "results": {method: {"5": entry} for method in ("xgb-bagging", "trees-alone", "lightgbm")},
               "tree_rounds": {"xgb-bagging": {"bytes_sent": {"mean": 2e6, "std": 0.0}}}}
    _, rows = fewshot_report.table_rows(results)
    by_method = {row[0]: row for row in rows}
    assert by_method["lightgbm"][-1] == "no (pooled rows)" and by_method["xgb-bagging"][-1] == "yes"
    assert by_method["xgb-bagging"][3] == "2.000" and by_method["trees-alone"][3] == "-"  # MB sent
    verdict = fewshot_report.aims_of({**results["results"], "maml": {"5": {"loss": {"mean": 0.4, "std": 0.0}}}},
                                     "loss", False, [5])["per_k"]["5"]
    assert verdict["best_tree"] == "lightgbm" and verdict["best_private_tree"] == "xgb-bagging"
    assert verdict["beats_private_trees"]


def test_trees_predict_target_engines_and_their_ensemble_survives_a_step_record(tmp_path):
    source = fewshot._factories(fewshot.plan_for("synthetic", quick=True).run_config(0), "evaluate")[0].source
    engines = FactoryData("engines", torch.randn(30, 6), torch.randn(30))
    predicted = engine_predictor(source, lambda factory, k: rows_alone_trees(factory, seed=0))(engines,
                                                                                            torch.randn(7, 6))
    assert predicted.shape == (7, 1) and bool(torch.isfinite(predicted).all())
    plan = fewshot.plan_for("synthetic", quick=True, methods=("xgb-cyclic",))
    ensemble = b'{"learner": "trees"}'
    steps = SeedSteps(SeedRecords(tmp_path, plan), 0)
    steps.run("xgb-cyclic", lambda: ({}, ensemble_tensor(ensemble)))
    _, params = SeedSteps(SeedRecords(tmp_path, plan), 0).run("xgb-cyclic", lambda: pytest.fail("ran again"))
    assert ensemble_of(params) == ensemble


def test_a_joining_factorys_rows_grow_the_federations_trees_toward_it():
    config = {**fewshot.plan_for("synthetic", quick=True).run_config(0, "xgb-histogram"), "local-trees": 5,
              "tree-rate": 0.3}
    training = fewshot._factories(config, "train")
    joining = fewshot._factories(config, "evaluate")[0]
    predicted = joined_histogram_predictor(config, training)(joining.data, joining.data.x)
    alone = run_tree_rounds(config, training, (), lambda: None).ensemble
    without = margins(load_ensemble(alone), window_features(joining.data.x), factory_tree_shape(joining))
    without = TargetScaling.fit(joining.data.y).invert(torch.from_numpy(without))  # its own units, as predicted
    y = joining.data.y.double()[:, None]
    assert predicted.shape == (len(y), 1)
    assert float(((predicted - y) ** 2).mean()) < 0.5 * float(((without - y) ** 2).mean())  # 20x lower or more
