"""``fedmeta simulate`` from the command line: bad flags fail clearly, a small run reports."""

from __future__ import annotations

import inspect

import torch
from typer.testing import CliRunner

from fedmeta.common.package.model_package import load_package
from fedmeta.common.run_settings import RUN_SETTINGS
from fedmeta.server import RunDirectory
from fedmeta.server.package import PACKAGE_FOLDER
from fedmeta.simulations.cli import app
from fedmeta.simulations.simulate_cli import FLAG_SETTINGS, SIMULATE_DEFAULTS, simulate

runner = CliRunner()


# How the run is hosted, not run settings.
ENGINE_OPTIONS = {"baseline", "output", "client_cpus", "client_gpus", "ray_address"}
TWO_SETTING_FLAGS = {"held_out"}  # num-held-out (synthetic), or held-out-tables with --tables


def test_every_flag_is_a_run_setting_with_the_table_default_unless_declared_different():
    parameters = inspect.signature(simulate).parameters
    assert set(parameters) == set(FLAG_SETTINGS) | ENGINE_OPTIONS | TWO_SETTING_FLAGS
    assert parameters["held_out"].default == str(RUN_SETTINGS["num-held-out"].default)
    assert set(SIMULATE_DEFAULTS) <= set(RUN_SETTINGS)
    for name, key in FLAG_SETTINGS.items():
        expected = SIMULATE_DEFAULTS.get(key, RUN_SETTINGS[key].default)
        assert parameters[name].default == expected, (name, key)
    for key, value in SIMULATE_DEFAULTS.items():
        assert value != RUN_SETTINGS[key].default, f"{key}: declared different but equal to the table's"


def test_unknown_algorithm_flag_lists_valid_choices():
    result = runner.invoke(app, ["simulate", "--algorithm", "mamll"])
    assert result.exit_code == 2
    assert "mamll" in result.output and "maml" in result.output and "fedavg" in result.output


def test_resume_without_output_folder_is_refused():
    result = runner.invoke(app, ["simulate", "--resume"])
    assert result.exit_code == 2
    assert "--output" in result.output


def test_a_run_folder_holding_a_run_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    saved = RunDirectory(tmp_path / "fedavg").save_checkpoint(3, {"w": torch.ones(2)}, {}, {})
    before = saved.read_bytes()
    result = runner.invoke(app, ["simulate", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert "already holds fedavg checkpoints up to round 3: pass --resume" in " ".join(result.output.split())
    assert "Traceback" not in result.output and "Simulating" not in result.output  # before the engine starts
    assert saved.read_bytes() == before and not (tmp_path / "maml").exists()


def test_small_fault_diagnosis_simulation_prints_the_comparison_table_and_packages_the_model(tmp_path):
    args = ["simulate", "--family", "fault", "--factories", "3", "--held-out", "1", "--rounds", "2",
            "--local-steps", "1", "--eval-shots", "5", "--eval-tasks", "3", "--output", str(tmp_path),
            "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for expected in ("round   2/2", "fedavg + fine-tune", "local only", "accuracy", "no adaptation", "K=5"):
        assert expected in result.output
    assert RunDirectory(tmp_path / "maml").latest_round() == 2
    assert RunDirectory(tmp_path / "fedavg").latest_round() == 2
    package = load_package(tmp_path / "maml" / PACKAGE_FOLDER)
    final = RunDirectory(tmp_path / "maml").load_checkpoint(2).params
    assert all(torch.equal(package.weights[name], final[name]) for name in package.weights)
    manifest = package.manifest
    assert (manifest.round, manifest.adaptation.algorithm, manifest.schema.task) == (2, "maml", "classification")
    assert manifest.scaling_rule == "source" and manifest.scaling is None
    assert 0.0 <= manifest.metrics["accuracy-k5"] <= 1.0
