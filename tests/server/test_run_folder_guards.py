"""The round loop never loses or overwrites what a run folder already holds."""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import source_from_config
from fedmeta.server import CheckpointError, RunDirectory, ServerSettings, run_experiment


def _settings(tmp_path, **overrides) -> ServerSettings:
    return ServerSettings.from_run_config({"run-dir": str(tmp_path), **overrides})


def test_resuming_from_a_corrupt_checkpoint_fails_clearly_and_leaves_it_untouched(tmp_path):
    run_dir = RunDirectory(tmp_path / "maml")
    run_dir.save_checkpoint(1, {"w": torch.ones(2)}, {}, {})
    corrupt = run_dir.checkpoint_path(2)
    corrupt.write_bytes(b"not a safetensors file")
    settings = _settings(tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="round-000002"):
        run_experiment(None, settings, source_from_config({}), "maml", run_dir.path)
    assert corrupt.read_bytes() == b"not a safetensors file"
    assert run_dir.latest_round() == 2


def test_starting_over_an_existing_run_is_refused(tmp_path):
    run_dir = RunDirectory(tmp_path / "maml")
    saved = run_dir.save_checkpoint(1, {"w": torch.ones(2)}, {}, {})
    before = saved.read_bytes()
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run_experiment(None, _settings(tmp_path), source_from_config({}), "maml", run_dir.path)
    assert saved.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-server-rounds", 0, "num-server-rounds must be >= 1"),
        ("algorithm", "mamll", "unknown algorithm 'mamll'"),
        ("eval-shots", "1,five", "eval-shots must be comma-separated integers"),
        ("fraction-train", 1.5, r"fraction_train must be in \(0, 1\]"),
        ("outer-optimizer", "rmsprop", "rmsprop"),
    ],
)
def test_bad_run_settings_name_the_problem(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        _settings(tmp_path, **{key: value})
