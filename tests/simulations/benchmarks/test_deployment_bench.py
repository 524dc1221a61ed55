"""`fedmeta bench deployment`: the same federation simulated and deployed, compared per round."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from fedmeta.common import FamilyConfig, make_family
from fedmeta.common.data.connector import DataSchema, load_factory_table
from fedmeta.simulations.benchmarks.deployment import (
    OVERHEAD_AIM_S,
    DeploymentBenchResult,
    ModeResult,
    export_tables,
    render,
    run_deployment_benchmark,
)


def test_exported_tables_read_back_as_the_same_factories(tmp_path):
    family = make_family(FamilyConfig("quality", num_factories=2, num_held_out=0))
    schema = DataSchema.from_json(export_tables(family, tmp_path))
    for factory in family.train:
        table = load_factory_table(tmp_path / f"{factory.name}.csv", schema)
        assert torch.equal(table.x, factory.x)
        assert torch.equal(table.y, factory.y)


@pytest.mark.parametrize(("factories", "rounds", "isolations", "supernodes"), [
    (1, 2, ("process",), ("tuned",)), (2, 1, ("process",), ("tuned",)), (2, 2, ("thread",), ("tuned",)),
    (2, 2, (), ("tuned",)), (2, 2, ("process",), ("fast",)), (2, 2, ("process",), ()),
])
def test_bad_settings_are_refused_before_anything_runs(factories, rounds, isolations, supernodes):
    with pytest.raises(ValueError):
        run_deployment_benchmark(factories, rounds, isolations=isolations, supernodes=supernodes)


def test_tiny_benchmark_deploys_the_simulated_work():
    result = run_deployment_benchmark(2, 2, isolations=("process",), supernodes=("tuned",))
    simulation, deployed = result.modes
    assert (simulation.mode, deployed.mode) == ("simulation", "deployment, process isolation, tuned SuperNode")
    assert deployed.first_round_loss == pytest.approx(simulation.first_round_loss, abs=1e-5)
    assert len(deployed.round_seconds) == len(simulation.round_seconds) == 2
    assert result.ratio(deployed) > 1  # a process per message costs more than an in-memory call
    console = Console(record=True, width=150)
    render(result, console)
    output = console.export_text()
    assert "deployment, process isolation, tuned SuperNode" in output
    verdict = output.split(f"under {OVERHEAD_AIM_S:g} s a round:")[1]
    assert ("PASS" if result.overhead_s(deployed) < OVERHEAD_AIM_S else "FAIL") in verdict
    assert json.loads(json.dumps(result.to_dict()))["modes"][1]["ratio_to_simulation"] == result.ratio(deployed)


@pytest.mark.parametrize(("fastest_round_s", "word"), [(0.95, "PASS"), (1.2, "FAIL")])
def test_the_fastest_deployment_is_held_to_the_aim(fastest_round_s, word):
    modes = [ModeResult("simulation", [0.3, 0.1, 0.1], 0.5), ModeResult("slow", [9.0, 8.0, 8.0], 0.5),
             ModeResult("fast", [2.0, fastest_round_s, fastest_round_s], 0.5)]
    result = DeploymentBenchResult(3, 3, modes, 2, 0.1)
    console = Console(record=True, width=200)
    render(result, console)
    line = next(line for line in console.export_text().splitlines() if line.startswith("fastest deployment"))
    overhead = fastest_round_s - 0.1
    assert line == f"fastest deployment (fast) over the simulation under 1 s a round: {overhead:+.2f} s {word}"
    assert result.to_dict()["overhead_aim_s"] == OVERHEAD_AIM_S
