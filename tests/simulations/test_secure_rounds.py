"""Secure aggregation in real rounds (Flower's simulation engine, the real ServerApp and ClientApp): with a
factory lost mid-round the model moves exactly as the plain mean of the others moves it, and with too few
factories left to unmask, the round fails and the model stays as it was."""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import source_from_config
from fedmeta.server import RunDirectory, ServerSettings, initial_meta_parameters
from fedmeta.simulations import run_federated_simulation

SMALL = {"family": "quality", "num-factories": 5, "num-held-out": 1, "eval-shots": "5", "eval-tasks": 4,
         "local-steps": 2, "device": "cpu", "algorithm": "fomaml", "min-train-nodes": 2,
         "inject-faults": "0:crash"}  # factory 0 shares its keys, then crashes instead of sending its input


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    run_federated_simulation({**SMALL, "num-server-rounds": 2, "run-dir": str(root / "plain")})
    run_federated_simulation({**SMALL, "num-server-rounds": 2, "run-dir": str(root / "secure"),
                              "secure-aggregation": True})
    run_federated_simulation({**SMALL, "num-server-rounds": 1, "run-dir": str(root / "strict"),
                              "secure-aggregation": True, "secagg-threshold": 1.0})
    return root


def test_a_secure_round_moves_the_model_as_the_plain_mean_of_the_factories_that_answered(runs):
    plain = RunDirectory(runs / "plain" / "fomaml").load_checkpoint(2).params
    secure = RunDirectory(runs / "secure" / "fomaml").load_checkpoint(2).params
    for name in plain:  # 64-bit fixed point: the same float32 mean
        torch.testing.assert_close(secure[name], plain[name], rtol=0, atol=1e-6)
    records = RunDirectory(runs / "secure" / "fomaml").read_metrics()
    assert [(r["train/replies"], r["train/secagg-participants"]) for r in records] == [(4.0, 5.0), (4.0, 5.0)]
    assert "eval/loss-k5" in records[-1]


def test_with_fewer_factories_left_than_the_threshold_the_round_fails_and_the_model_is_unchanged(runs):
    strict = RunDirectory(runs / "strict" / "fomaml")
    (record,) = strict.read_metrics()
    assert record["train/model-unchanged"] == 1.0 and record["train/replies"] == 0.0
    config = {**SMALL, "num-server-rounds": 1}
    settings = ServerSettings.from_run_config(config)
    initial = initial_meta_parameters(source_from_config(config), "fomaml", settings.round.inner_lr,
                                      settings.round.seed)
    unchanged = strict.load_checkpoint(1).params
    assert all(torch.equal(unchanged[name], initial[name]) for name in initial)
