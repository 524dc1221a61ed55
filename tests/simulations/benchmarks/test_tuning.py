"""``fedmeta tune``: searched on the training side only, the same budget per method, written without
overwriting, and read back and used by ``fedmeta benchmark``."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from fedmeta.common import FactoryData, ModelConfig, source_from_config
from fedmeta.common.data.datasets import FactorySplit
from fedmeta.simulations.benchmarks import fewshot, tuning
from fedmeta.simulations.benchmarks.gradient_boosting import TREE_DEFAULTS
from fedmeta.simulations.cli import app
from tests.support.shared_data import needs_dataset


def _toy(name: str) -> FactoryData:
    return FactoryData(name, torch.zeros(3, 2), torch.zeros(3))


def test_a_validation_split_holds_out_the_last_training_factory_and_drops_the_real_ones():
    split = FactorySplit("toy", (_toy("a"), _toy("b"), _toy("c")), (_toy("target"),), "regression",
                         ModelConfig("mlp", (2,), 1), None, "", test=(_toy("test"),))
    validation = split.validation()
    assert [f.name for f in validation.train] == ["a", "b"] and [f.name for f in validation.held_out] == ["c"]
    assert validation.test == ()
    with pytest.raises(ValueError, match="at least 2 training factories"):
        FactorySplit("one", (_toy("a"),), (), "regression", ModelConfig("mlp", (2,), 1), None, "").validation()


def test_a_synthetic_validation_run_never_loads_a_held_out_factory():
    plan = fewshot.plan_for("synthetic", quick=True)
    real = fewshot._factories(plan.run_config(0), "evaluate")
    config = {**plan.run_config(0), "validation-split": True}
    source = source_from_config(config)
    train, held = fewshot._factories(config, "train"), fewshot._factories(config, "evaluate")
    assert source.num_partitions == 4 and len(train) == 3 and len(held) == 1
    assert held[0].data.name == source.factory(3).data.name
    assert not {f.data.name for f in train + held} & {f.data.name for f in real}


@needs_dataset("ai4i2020")
def test_the_ai4i_validation_split_trains_on_l_and_validates_on_m():
    split = source_from_config({"dataset": "ai4i", "validation-split": True}).split
    assert [f.name for f in split.train] == ["L"] and [f.name for f in split.held_out] == ["M"]


def test_tune_writes_every_trial_and_never_overwrites_a_tuned_method(tmp_path):
    out = tmp_path / "tuned.json"
    args = ["tune", "--dataset", "synthetic", "--quick", "--trials", "3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--methods", "maml,lightgbm"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["dataset"] == "synthetic" and set(data["methods"]) == {"maml", "lightgbm"}
    for method, entry in data["methods"].items():
        space = tuning.search_space(method)
        assert len(entry["trials"]) == 3 and set(entry["best"]) == set(space), method
        assert entry["objective"] == {"table": "scores", "metric": "loss", "higher_is_better": False}
        assert entry["value"] == min(trial["value"] for trial in entry["trials"])
        for name, value in entry["best"].items():
            assert space[name].low <= value <= space[name].high
    # The first trial is the untuned starting point; the trials really differ in what they score.
    first = data["methods"]["maml"]["trials"][0]["params"]
    assert first == {"inner-lr": 0.05, "local-lr": 0.001, "local-steps": 2, "eval-steps": 5}
    assert len({trial["value"] for trial in data["methods"]["maml"]["trials"]}) > 1
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes, not mkstemp's private one
    before = out.read_text()
    again = CliRunner().invoke(app, [*args, "--methods", "maml"])
    assert again.exit_code == 1 and "already holds tuned values for maml" in " ".join(again.output.split())  # wrapped
    assert out.read_text() == before
    added = CliRunner().invoke(app, [*args, "--trials", "1", "--methods", "gradient-boosting"])
    assert added.exit_code == 0, added.output
    merged = json.loads(out.read_text())
    assert set(merged["methods"]) == {"maml", "lightgbm", "gradient-boosting"}
    assert merged["methods"]["maml"] == data["methods"]["maml"]
    assert tuning.load_tuned(out)["maml"] == data["methods"]["maml"]["best"]


def test_federated_trees_are_tuned_on_how_factories_boost_and_the_benchmark_boosts_so(tmp_path):
    out = tmp_path / "tuned.json"
    result = CliRunner().invoke(app, ["tune", "--dataset", "synthetic", "--quick", "--trials", "3",
                                      "--methods", "xgb-bagging", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads(out.read_text())["methods"]["xgb-bagging"]
    assert set(entry["best"]) == set(tuning.FEDERATED_TREE_SEARCH_SPACE)
    assert entry["trials"][0]["params"] == {"tree-rate": 0.1, "tree-depth": 6, "tree-subsample": 0.8, "local-trees": 1}
    assert len({trial["value"] for trial in entry["trials"]}) > 1  # the settings reach the factories' boosting
    plan = fewshot.plan_for("synthetic", quick=True, tuned=tuning.load_tuned(out))
    recorded = plan.hyper_parameters("xgb-bagging")
    assert {name: recorded[name] for name in entry["best"]} == entry["best"]
    assert plan.hyper_parameters("xgb-cyclic")["tree-rate"] == 0.1  # another method keeps the defaults


def test_the_benchmark_reads_a_tuned_file_and_uses_its_values(tmp_path):
    tuned = tmp_path / "tuned.json"
    values = {"maml": {"inner-lr": 0.02, "local-lr": 0.003, "eval-steps": 3},
              "gradient-boosting": {"max_iter": 1, "learning_rate": 0.05}}
    tuned.write_text(json.dumps({"dataset": "synthetic", "methods": {m: {"best": v} for m, v in values.items()}}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["benchmark", "--quick", "--methods", "maml,gradient-boosting", "--shots", "5",
                                      "--tuned", str(tuned), "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["tuned_from"] == str(tuned)
    assert results["hyper_parameters"]["gradient-boosting"] == values["gradient-boosting"]
    maml = results["hyper_parameters"]["maml"]
    assert (maml["inner-lr"], maml["local-lr"], maml["eval-steps"], maml["eval-lr"]) == (0.02, 0.003, 3, 0.02)
    # Used, not only recorded: one boosting iteration scores far from the default 200 on the same tasks.
    default = fewshot.run_benchmark(fewshot.plan_for("synthetic", quick=True, methods=["gradient-boosting"],
                                                     shots=[5]))
    assert TREE_DEFAULTS["gradient-boosting"] == {"max_iter": 200}
    tuned_loss = results["results"]["gradient-boosting"]["5"]["loss"]["mean"]
    assert tuned_loss != pytest.approx(default["results"]["gradient-boosting"]["5"]["loss"]["mean"], rel=0.2)
    plan = fewshot.plan_for("synthetic", quick=True, tuned=tuning.load_tuned(tuned))
    assert plan.run_config(0, "maml")["inner-lr"] == 0.02 and plan.run_config(0, "reptile")["inner-lr"] == 0.05


def test_a_bad_tuned_file_is_refused_with_its_problem_named(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(fewshot.BenchmarkError, match="not a readable tuned configuration"):
        tuning.load_tuned(broken)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"dataset": "synthetic", "methods": {"maml": {"best": {"num-server-rounds": 9}}}}))
    with pytest.raises(fewshot.BenchmarkError, match=r"outside its search space: \['num-server-rounds'\]"):
        tuning.load_tuned(outside)
    result = CliRunner().invoke(app, ["benchmark", "--quick", "--tuned", str(tmp_path / "missing.json"),
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no such file" in result.output and not (tmp_path / "x").exists()
    with pytest.raises(fewshot.BenchmarkError, match="is not tuned"):
        tuning.search_space("oracle")


def test_a_search_stopped_midway_keeps_the_methods_it_finished(tmp_path, monkeypatch):
    out = tmp_path / "tuned.json"
    finished = {"best": {"inner-lr": 0.02, "local-lr": 0.001, "local-steps": 2, "eval-steps": 5}, "value": 0.1,
                "objective": {}, "trials": [], "seconds": 0.0}

    def tune_method(plan, method, trials, journal, log):
        if method == "reptile":
            raise KeyboardInterrupt  # the user stops the search during the second method
        return dict(finished)

    monkeypatch.setattr(tuning, "tune_method", tune_method)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(fewshot.plan_for("synthetic", quick=True), ["maml", "reptile"], 2, out)
    assert tuning.load_tuned(out) == {"maml": finished["best"]}


def test_a_search_stopped_inside_a_method_resumes_with_the_trials_it_recorded(tmp_path, monkeypatch):
    out, plan = tmp_path / "tuned.json", fewshot.plan_for("synthetic", quick=True)
    calls = []

    def stopped_at_the_third_trial(trial_plan, seed, advance):
        calls.append(trial_plan.tuned["lightgbm"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fewshot.run_seed(trial_plan, seed, advance)

    monkeypatch.setattr(tuning, "run_seed", stopped_at_the_third_trial)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(plan, ["lightgbm"], 4, out)
    assert not out.exists() and tuning.journal_path(out).exists()
    with pytest.raises(fewshot.BenchmarkError, match="trials of another search"):
        tuning.tune(fewshot.plan_for("synthetic", quick=True, rounds=2), ["lightgbm"], 4, out)

    resumed = []

    def counted(trial_plan, seed, advance):
        resumed.append(trial_plan.tuned["lightgbm"])
        return fewshot.run_seed(trial_plan, seed, advance)

    monkeypatch.setattr(tuning, "run_seed", counted)
    entry = tuning.tune(plan, ["lightgbm"], 4, out)["methods"]["lightgbm"]
    assert len(resumed) == 2  # only the missing trials ran: the interrupted one is drawn anew
    assert [trial["params"] for trial in entry["trials"][:2]] == calls[:2]
    assert resumed[0] == calls[2]  # the interrupted trial's draw, not a draw the search already tried
    unbroken = tuning.tune(plan, ["lightgbm"], 4, tmp_path / "unbroken.json")["methods"]["lightgbm"]
    assert entry["trials"] == [{**trial, "seconds": mine["seconds"]}
                               for trial, mine in zip(unbroken["trials"], entry["trials"], strict=True)]
    assert entry["sampler"] == unbroken["sampler"] == tuning.SAMPLER
    assert entry["trials"][0]["params"]["n_estimators"] == TREE_DEFAULTS["lightgbm"]["n_estimators"]
    assert len(entry["trials"]) == 4 and entry["value"] == min(trial["value"] for trial in entry["trials"])
    assert not tuning.journal_path(out).exists()  # a finished method leaves no journal behind
    assert tuning.load_tuned(out)["lightgbm"] == entry["best"]


@needs_dataset("cwru")
def test_cwru_fe_is_tuned_by_cwrus_search_because_their_validation_splits_are_the_same():
    def split(dataset):
        return source_from_config({"dataset": dataset, "validation-split": True}).split

    cwru, fan_end = split("cwru"), split("cwru-fe")
    for ours, theirs in zip((*cwru.train, *cwru.held_out), (*fan_end.train, *fan_end.held_out), strict=True):
        assert ours.name == theirs.name and torch.equal(ours.x, theirs.x) and torch.equal(ours.y, theirs.y)
    assert tuning.tuned_path("cwru-fe") == tuning.tuned_path("cwru") != tuning.tuned_path("cmapss")
