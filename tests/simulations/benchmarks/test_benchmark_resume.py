"""``fedmeta benchmark --out DIR`` keeps each finished seed, so a run stopped midway resumes at its next seed."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fedmeta.simulations.benchmarks import fewshot
from fedmeta.simulations.benchmarks.seed_records import SeedRecordError, SeedRecords, SeedSteps
from fedmeta.simulations.cli import app

SLICE = ["benchmark", "--dataset", "synthetic", "--quick", "--methods", "gradient-boosting", "--shots", "1,5",
         "--seeds", "2"]


class Stop(RuntimeError):
    """The machine going down in the middle of seed 1."""


def test_a_benchmark_stopped_after_a_seed_resumes_with_the_seeds_it_recorded(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_seed = fewshot.run_seed
    ran: list[int] = []

    def stopping_at_seed_1(plan, seed, advance, steps):
        ran.append(seed)
        if seed == 1:
            raise Stop
        return run_seed(plan, seed, advance, steps)

    monkeypatch.setattr(fewshot, "run_seed", stopping_at_seed_1)
    stopped = CliRunner().invoke(app, [*SLICE, "--out", str(out)])
    assert isinstance(stopped.exception, Stop) and ran == [0, 1]
    assert not (out / "results.json").exists()
    record = json.loads((out / "seeds" / "seed-0.json").read_text())
    assert not (out / "seeds" / "seed-1.json").exists()

    other_plan = CliRunner().invoke(app, [*SLICE, "--rounds", "3", "--out", str(out)])
    assert other_plan.exit_code == 1
    assert "seed-0.json was recorded under another plan (differs in rounds)" in " ".join(other_plan.output.split())
    assert ran == [0, 1]  # refused before running anything

    ran.clear()
    monkeypatch.setattr(fewshot, "run_seed", lambda plan, seed, advance, steps: ran.append(seed) or run_seed(
        plan, seed, advance, steps))
    resumed = CliRunner().invoke(app, [*SLICE, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert ran == [1]  # seed 0 came from its record
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["resumed_seeds"] == [0]
    recorded = record["run"]["scores"]["gradient-boosting"]
    for k in ("1", "5"):
        for metric, summary in results["results"]["gradient-boosting"][k].items():
            assert summary["values"][0] == recorded[k][metric]
    assert results["seconds"] == sum(results["seconds_per_seed"])
    assert results["seconds_per_seed"][0] == record["seconds"]
    assert "Seeds resumed from the records of an earlier process (`seeds/` beside this file): 0;" in (
        out / "results.md").read_text()


STEP_SLICE = ["benchmark", "--dataset", "synthetic", "--quick", "--methods", "fedavg+ft,gradient-boosting",
              "--shots", "1,5", "--seeds", "1"]


def test_a_seed_stopped_after_a_step_resumes_at_its_next_step_with_the_same_results(tmp_path, monkeypatch):
    whole = CliRunner().invoke(app, [*STEP_SLICE, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    tree = fewshot._tree

    def machine_down(*args, **kwargs):
        raise Stop

    out = tmp_path / "stopped"
    monkeypatch.setattr(fewshot, "_tree", machine_down)
    stopped = CliRunner().invoke(app, [*STEP_SLICE, "--out", str(out)])
    assert isinstance(stopped.exception, Stop)
    steps = out / "seeds" / "seed-0"
    assert (steps / "fedavg.json").exists() and (steps / "fedavg.safetensors").exists()
    assert not (out / "seeds" / "seed-0.json").exists()

    federated_runs: list[str] = []
    federated = fewshot._federated
    monkeypatch.setattr(fewshot, "_tree", tree)
    monkeypatch.setattr(fewshot, "_federated", lambda *a, **k: federated_runs.append("run") or federated(*a, **k))
    resumed = CliRunner().invoke(app, [*STEP_SLICE, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert federated_runs == []  # FedAvg came from its step record
    assert not steps.exists()  # the seed's record holds it all now
    expected = json.loads((tmp_path / "whole" / "results.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_steps"] == {"0": ["fedavg"]} and results["resumed_seeds"] == []
    assert results["results"] == expected["results"] and results["field"] == expected["field"]
    assert results["federated"]["fedavg"]["bytes_sent"] == expected["federated"]["fedavg"]["bytes_sent"]
    assert "seed 0: fedavg" in (out / "results.md").read_text()


def test_a_step_record_returns_its_parameters_and_refuses_another_plan(tmp_path):
    plan = fewshot.plan_for("synthetic", quick=True, seeds=1, methods=("fedavg+ft",))
    params = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.randn(3)}
    first = SeedSteps(SeedRecords(tmp_path, plan), 0)
    results, _ = first.run("fedavg", lambda: ({"scores": {"fedavg+ft": {1: {"accuracy": 0.5}}}}, params))
    assert results == {"scores": {"fedavg+ft": {"1": {"accuracy": 0.5}}}} and first.resumed == []

    again = SeedSteps(SeedRecords(tmp_path, plan), 0)
    loaded, loaded_params = again.run("fedavg", lambda: pytest.fail("a recorded step ran again"))
    assert loaded == results and again.resumed == ["fedavg"]
    assert all(torch.equal(loaded_params[name], value) for name, value in params.items())

    other = fewshot.plan_for("synthetic", quick=True, seeds=1, rounds=3, methods=("fedavg+ft",))
    with pytest.raises(SeedRecordError, match=r"fedavg.json was recorded under another plan \(differs in rounds\)"):
        SeedSteps(SeedRecords(tmp_path, other), 0).run("fedavg", lambda: pytest.fail("ran under another plan"))
