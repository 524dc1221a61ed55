"""``fedmeta benchmark --out DIR`` keeps each finished seed, so a run stopped midway resumes at its next seed."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedmeta.simulations.benchmarks import fewshot
from fedmeta.simulations.cli import app

SLICE = ["benchmark", "--dataset", "synthetic", "--quick", "--methods", "gradient-boosting", "--shots", "1,5",
         "--seeds", "2"]


class Stop(RuntimeError):
    """The machine going down in the middle of seed 1."""


def test_a_benchmark_stopped_after_a_seed_resumes_with_the_seeds_it_recorded(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_seed = fewshot.run_seed
    ran: list[int] = []

    def stopping_at_seed_1(plan, seed, advance):
        ran.append(seed)
        if seed == 1:
            raise Stop
        return run_seed(plan, seed, advance)

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
    monkeypatch.setattr(fewshot, "run_seed", lambda plan, seed, advance: ran.append(seed) or run_seed(plan, seed,
                                                                                                       advance))
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
