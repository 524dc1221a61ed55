"""``fedmeta benchmark``: the quick synthetic run end to end through the CLI, its files and guards."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from fedmeta.client import prepare_adaptation, sampler_for
from fedmeta.common import EvaluationSettings, predict
from fedmeta.server import initial_meta_parameters
from fedmeta.simulations.benchmarks import fewshot, fewshot_report
from fedmeta.simulations.cli import app
from tests.support.shared_data import needs_dataset

# Every method but the one scored on C-MAPSS engine shots alone: what a benchmark of another data set runs.
ALL_BUT_ENGINE_SHOTS = tuple(method for method in fewshot.METHODS if method != fewshot.JOINED_TREES)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick"
    result = CliRunner().invoke(app, ["benchmark", "--dataset", "synthetic", "--quick", "--tuned", "none",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def _finite(entry):
    return math.isfinite(entry["mean"]) and math.isfinite(entry["std"])


def test_quick_synthetic_results_json(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "synthetic" and results["metric"] == "loss"
    assert results["shots"] == [1, 5, 10, 20]
    assert set(results["results"]) == set(ALL_BUT_ENGINE_SHOTS)
    for method in ALL_BUT_ENGINE_SHOTS:
        columns = ["0"] if method == "fedavg" else [str(k) for k in results["shots"]]
        assert sorted(results["results"][method], key=int) == columns, method
        for k in columns:
            assert _finite(results["results"][method][k]["loss"]), (method, k)
    for method in fewshot.FEDERATED_METHODS:
        federated = results["federated"][method]
        assert federated["bytes_sent"]["mean"] > 0
        assert "rounds_to_target" in federated
        curves = federated[f"loss_k{fewshot.TARGET_K}_per_round"]
        assert len(curves) == 1 and len(curves[0]) == results["rounds"]
    for method in fewshot.FEDERATED_METHODS:
        federated = results["federated"][method]
        reached = federated["rounds_to_target"]
        assert len(reached) == 1 and (reached[0] is None or 1 <= reached[0] <= results["rounds"])
        per_round = federated["bytes_sent"]["mean"] / results["rounds"]
        assert federated["bytes_to_target"] == [None if r is None else r * per_round for r in reached]
    # FedAvg+FT always reaches its own final K=5 score, at the latest in the last round.
    assert results["federated"]["fedavg"]["rounds_to_target"][0] is not None
    # Meta-SGD sends its learned inner rates too: twice the bytes of MAML.
    sent = {method: results["federated"][method]["bytes_sent"]["mean"] for method in ("maml", "metasgd")}
    assert sent["metasgd"] == 2 * sent["maml"]


def test_quick_synthetic_writes_plots_and_the_aims_check(quick_run):
    out, output = quick_run
    for name in ("kshot.png", "learning.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    results = json.loads((out / "results.json").read_text())
    aims = results["aims"]
    assert sorted(aims["per_k"], key=int) == ["1", "5", "10"] and aims["largest_k"] == 20
    for k, verdict in aims["per_k"].items():
        best = results["results"][verdict["best_meta"]][k]["loss"]["mean"]
        trees = {m: results["results"][m][k]["loss"]["mean"] for m in ("gradient-boosting", "lightgbm")}
        assert verdict["best_tree"] == min(trees, key=trees.get)
        rivals = [results["results"]["fedavg+ft"][k]["loss"]["mean"], min(trees.values())]
        assert verdict["beats_both"] == all(best < r for r in rivals)
    refs = [results["results"][m]["20"]["loss"]["mean"] for m in ("oracle", "pooled-oracle")]
    best_meta = min(results["results"][m]["20"]["loss"]["mean"] for m in fewshot.META_METHODS)
    assert aims["share_of_best_full_data_reference"] == pytest.approx(min(refs) / best_meta)
    assert results["field"] == {} and results["field_metrics"] == []
    assert "aim: K=5" in output


def test_quick_synthetic_results_md_and_table(quick_run):
    out, output = quick_run
    markdown = (out / "results.md").read_text()
    for method in ALL_BUT_ENGINE_SHOTS:
        assert f"| {method} |" in markdown
        assert method in output
    assert "not yet" in markdown and "oracle" in output


def test_results_record_the_commit_versions_seeds_hyper_parameters_and_wall_time(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    origin = results["provenance"]
    assert origin["versions"]["torch"] and origin["versions"]["flwr"] == "1.42.0" and origin["python"]
    assert origin["commit"] is None or len(origin["commit"]) == 40
    assert results["seeds"] == [0] and results["tuned_from"] is None
    assert set(results["hyper_parameters"]) == set(ALL_BUT_ENGINE_SHOTS)
    assert results["hyper_parameters"]["maml"]["inner-lr"] == 0.05  # the synthetic default, resolved
    assert results["hyper_parameters"]["maml"]["eval-lr"] == 0.05
    assert results["hyper_parameters"]["lightgbm"] == {"n_estimators": 200}
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds in results["seconds_per_method"].values())
    assert "Hyper-parameters per method, from the shared defaults" in (out / "results.md").read_text()


def test_methods_and_shots_select_a_slice(tmp_path):
    out = tmp_path / "slice"
    result = CliRunner().invoke(app, ["benchmark", "--dataset", "synthetic", "--quick", "--methods",
                                      "maml,local-only,gradient-boosting", "--shots", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == [5] and list(results["results"]) == ["local-only", "maml", "gradient-boosting"]
    # FedAvg ran (local-only comes from its run), so MAML's rounds to FedAvg+FT's score are known.
    assert set(results["federated"]) == {"fedavg", "maml"} and results["target"] is not None
    assert set(results["seconds_per_method"]) == {"fedavg", "maml", "gradient-boosting"}


def test_an_unknown_method_or_bad_shots_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--quick", "--methods", "maml,magic", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "unknown method(s) ['magic']" in result.output
    result = CliRunner().invoke(app, ["benchmark", "--quick", "--shots", "5,x", "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "--shots must be comma-separated integers" in result.output
    with pytest.raises(fewshot.BenchmarkError, match="shots must be K values >= 1"):
        fewshot.plan_for("synthetic", quick=True, shots=[0, 5])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_refuses_to_overwrite(quick_run):
    out, _ = quick_run
    before = (out / "results.json").read_text()
    result = CliRunner().invoke(app, ["benchmark", "--dataset", "synthetic", "--quick", "--out", str(out)])
    assert result.exit_code == 1
    # The message names the folder, whose length decides where the console wraps it.
    assert "never overwritten" in " ".join(result.output.split())
    assert (out / "results.json").read_text() == before
    with pytest.raises(fewshot.BenchmarkError):
        fewshot_report.write_results(json.loads(before), out)


def test_bad_dataset_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--dataset", "mnist", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_oracle_query_rows_are_found():
    plan = fewshot.plan_for("synthetic", quick=True)
    config = plan.run_config(0)
    factory = fewshot._factories(config, "evaluate")[0]
    batch = fewshot.sampler_for(factory, 5, 10, seed=0, stream="eval-k5").sample(3)
    mask = fewshot._query_rows(factory.data, batch)
    assert 1 <= int(mask.sum()) <= 30 and mask.numel() == factory.data.num_samples


@needs_dataset("ai4i2020")
def test_oracle_trains_one_model_per_task_when_query_sets_use_up_a_rare_class():
    """AI4I's variant H has 21 failures: ten 5-shot tasks' query sets together take them all."""
    plan = fewshot.plan_for("ai4i", quick=True)
    held_out = fewshot._factories(plan.run_config(0), "evaluate")
    batch = sampler_for(held_out[0], 5, 10, seed=0, stream="eval-k5").sample(10)
    left = held_out[0].data.y[~fewshot._query_rows(held_out[0].data, batch)]
    assert int((left == 1).sum()) < 2  # the case the per-task fallback exists for
    settings = EvaluationSettings(shots=(5,), tasks=10, query_size=10, seed=0)
    scored = fewshot._oracle(plan, fewshot.HeldOut("ai4i", held_out, settings), seed=0)
    assert 0.0 <= scored.query[5]["accuracy"] <= 1.0
    assert scored.field == {}  # trained on the field rows: not scored there


@needs_dataset("ai4i2020")
def test_quick_ai4i_reports_f1_and_auroc_for_every_method():
    results = fewshot.run_benchmark(fewshot.plan_for("ai4i", quick=True, rounds=2))
    assert results["field_metrics"] == ["f1", "auroc", "brier", "threshold"]
    # The oracles trained on the field rows (the held-out factory's own), so they have no field metrics.
    assert set(results["field"]) == set(ALL_BUT_ENGINE_SHOTS) - {"oracle", "pooled-oracle"}
    assert list(results["field"]["fedavg"]) == ["0"]
    for method, columns in results["field"].items():
        for k, scores in columns.items():
            assert 0.0 <= scores["f1"]["mean"] <= 1.0 and 0.0 <= scores["auroc"]["mean"] <= 1.0, (method, k)
    markdown = fewshot_report.markdown(results)
    assert "F1 of the failure class" in markdown and "Published reference: AI4I 2020" in markdown
    # The headline (F1 at the failure rate) comes before the class-balanced query accuracy.
    assert markdown.index("F1 of the failure class") < markdown.index("| MB sent |")


def test_a_cross_validated_plan_adapts_every_field_task_with_its_chosen_recipe():
    plan = fewshot.plan_for("synthetic", quick=True, recipe="cross-validated")
    config = plan.run_config(0)
    assert config["eval-recipe"] == "cross-validated"
    assert any("recipe cross-validated" in note for note in fewshot.notes(plan, "regression"))
    factory = fewshot._factories(config, "evaluate")[0]
    settings = EvaluationSettings(shots=(5,), tasks=3, recipe="cross-validated", lr=0.05)
    params = initial_meta_parameters(factory.source, "maml", 0.05, seed=0)
    batch = sampler_for(factory, 5, 10, seed=0, stream="eval-k5").sample(3)
    outputs = fewshot._adapted_outputs(params, settings, steps=5)(factory, batch, batch.query_x[0])
    adaptation = prepare_adaptation(factory, params, settings, device=torch.device("cpu"))
    chosen = adaptation.adapt(batch, 5, cross_validate=True)
    torch.testing.assert_close(outputs, predict(adaptation.model, chosen, batch.query_x[0].expand(3, -1, -1)))


def test_an_unknown_recipe_is_refused():
    with pytest.raises(fewshot.BenchmarkError, match="unknown recipe 'guess'"):
        fewshot.plan_for("synthetic", quick=True, recipe="guess")
