"""Federated trees in the real Flower simulation: a resumed xgb-bagging run ends with the ensemble an
uninterrupted one ends with, byte for byte; the last round chooses a recipe for each K from the factories'
query losses; the run's model package holds the ensemble and those recipes; the held-out table has the trees'
rows; an xgb-cyclic run grows one factory's trees a round; an xgb-histogram run, resumed midway, grows the trees
the benchmark's in-process rounds grow from the same factories, byte for byte, and they predict the held-out
factories."""

from __future__ import annotations

import json

from fedmeta.client import load_factories
from fedmeta.common import source_from_config
from fedmeta.common.package.model_package import load_package
from fedmeta.common.trees.ensemble import load_ensemble
from fedmeta.common.trees.settings import TreeRecipe
from fedmeta.server import RunDirectory
from fedmeta.simulations import final_evaluation, run_federated_simulation
from fedmeta.simulations.benchmarks.tree_rounds import run_tree_rounds

SMALL = {"family": "quality", "num-factories": 4, "num-held-out": 1, "eval-shots": "5,10", "eval-tasks": 4,
         "device": "cpu"}


def _ensemble(run_dir, round_: int) -> bytes:
    return RunDirectory(run_dir).load_checkpoint(round_).params["ensemble"].numpy().tobytes()


def test_a_resumed_bagging_run_ends_with_the_same_ensemble_and_chooses_recipes(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    trees = {**SMALL, "algorithm": "xgb-bagging", "local-trees": 2}
    run_federated_simulation({**trees, "num-server-rounds": 3, "run-dir": str(whole)})
    run_federated_simulation({**trees, "num-server-rounds": 2, "run-dir": str(split)})
    run_federated_simulation({**trees, "num-server-rounds": 3, "run-dir": str(split), "resume": True})
    assert _ensemble(split / "xgb-bagging", 3) == _ensemble(whole / "xgb-bagging", 3)
    assert load_ensemble(_ensemble(whole / "xgb-bagging", 3)).num_boosted_rounds() == 3 * 4 * 2

    last = RunDirectory(whole / "xgb-bagging").read_metrics()[-1]
    assert {key for key in last if key.startswith("train/tree-recipe-")} == {"train/tree-recipe-k5",
                                                                             "train/tree-recipe-k10"}
    recorded = json.loads(RunDirectory(whole / "xgb-bagging").load_checkpoint(3).metadata["tree-recipes"])
    assert recorded == {"5": last["train/tree-recipe-k5"], "10": last["train/tree-recipe-k10"]}
    package = load_package(whole / "xgb-bagging" / "model")
    assert package.ensemble == _ensemble(whole / "xgb-bagging", 3)
    assert package.manifest.trees.recipes == {int(k): TreeRecipe.parse(name) for k, name in recorded.items()}
    assert load_package(split / "xgb-bagging" / "model").manifest.weights_sha256 == package.manifest.weights_sha256
    held_out = final_evaluation(whole / "xgb-bagging")
    for key in ("eval/loss-k0", "eval/loss-k5", "eval/linear-loss-k5", "eval/chosen-loss-k10"):
        assert key in held_out, key


def test_a_cyclic_run_grows_one_factorys_trees_a_round(tmp_path):
    run_federated_simulation({**SMALL, "algorithm": "xgb-cyclic", "num-server-rounds": 3, "run-dir": str(tmp_path)})
    records = RunDirectory(tmp_path / "xgb-cyclic").read_metrics()
    assert [record["train/replies"] for record in records] == [1.0, 1.0, 1.0]
    assert load_ensemble(_ensemble(tmp_path / "xgb-cyclic", 3)).num_boosted_rounds() == 3


def test_a_resumed_histogram_run_grows_the_trees_of_the_in_process_rounds(tmp_path):
    trees = {**SMALL, "algorithm": "xgb-histogram", "local-trees": 3, "tree-rate": 0.3, "tree-depth": 3}
    run_federated_simulation({**trees, "num-server-rounds": 2, "run-dir": str(tmp_path)})
    run_federated_simulation({**trees, "num-server-rounds": 3, "run-dir": str(tmp_path), "resume": True})
    run_dir = tmp_path / "xgb-histogram"
    records = RunDirectory(run_dir).read_metrics()
    assert [record["train/replies"] for record in records] == [4.0, 4.0, 4.0]

    config = {**trees, "num-server-rounds": 3}
    factories = [factory for node in range(source_from_config(config).num_nodes)
                 for factory in load_factories({"partition-id": node}, config) if factory.role == "train"]
    in_process = run_tree_rounds(config, factories, (5, 10), lambda: None)
    assert _ensemble(run_dir, 3) == in_process.ensemble
    assert load_ensemble(in_process.ensemble).num_boosted_rounds() == 3 * 3
    recorded = json.loads(RunDirectory(run_dir).load_checkpoint(3).metadata["tree-recipes"])
    assert recorded == {str(k): recipe.name for k, recipe in in_process.recipes.items()}

    held_out = final_evaluation(run_dir)
    # the standardised target's variance is 1: the trees alone, unadapted, explain a good part of it
    assert held_out["eval/loss-k0"] < 0.8, held_out["eval/loss-k0"]
