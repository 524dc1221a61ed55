"""Secure aggregation in real rounds (Flower's simulation engine, the real ServerApp and ClientApp): with a
factory lost mid-round the model moves exactly as the plain mean of the others moves it, and with too few
factories left to unmask, the round fails and the model stays as it was."""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import source_from_config
from fedmeta.common.security.privacy import spent_epsilon
from fedmeta.common.security.secure_aggregation import secagg_plus_parameters
from fedmeta.server import RunDirectory, ServerSettings, initial_meta_parameters
from fedmeta.simulations import run_federated_simulation

SMALL = {"family": "quality", "num-factories": 5, "num-held-out": 1, "eval-shots": "5", "eval-tasks": 4,
         "local-steps": 2, "device": "cpu", "algorithm": "fomaml", "min-train-nodes": 2,
         "inject-faults": "0:crash"}  # factory 0 shares its keys, then crashes instead of sending its input

# Distributed DP: a clipping norm far above these deltas' norms, so the inputs differ from the secure run's only
# by their weights (equal here: every synthetic factory has as many rows) and their noise.
PRIVATE = {"dp-noise-multiplier": 0.5, "dp-clip-norm": 20.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    run_federated_simulation({**SMALL, "num-server-rounds": 2, "run-dir": str(root / "plain")})
    run_federated_simulation({**SMALL, "num-server-rounds": 2, "run-dir": str(root / "secure"),
                              "secure-aggregation": True})
    run_federated_simulation({**SMALL, "num-server-rounds": 2, "run-dir": str(root / "plus"),
                              "secure-aggregation": True, "secagg-plus": True})
    run_federated_simulation({**SMALL, "num-server-rounds": 1, "run-dir": str(root / "strict"),
                              "secure-aggregation": True, "secagg-threshold": 1.0})
    run_federated_simulation({**SMALL, "num-server-rounds": 1, "run-dir": str(root / "private"),
                              "secure-aggregation": True, **PRIVATE})
    return root


def test_a_secure_round_moves_the_model_as_the_plain_mean_of_the_factories_that_answered(runs):
    plain = RunDirectory(runs / "plain" / "fomaml").load_checkpoint(2).params
    secure = RunDirectory(runs / "secure" / "fomaml").load_checkpoint(2).params
    for name in plain:  # 64-bit fixed point: the same float32 mean
        torch.testing.assert_close(secure[name], plain[name], rtol=0, atol=1e-6)
    records = RunDirectory(runs / "secure" / "fomaml").read_metrics()
    assert [(r["train/replies"], r["train/secagg-participants"]) for r in records] == [(4.0, 5.0), (4.0, 5.0)]
    assert "eval/loss-k5" in records[-1]


def test_a_secagg_plus_round_over_a_sparse_ring_moves_the_model_as_the_plain_mean(runs):
    """5 factories, 10% dropout and corruption assumed: each masks and shares with 2 neighbours of the 4 (t = 2);
    the crashed factory's masks are cancelled from its neighbours' shares alone."""
    assert secagg_plus_parameters(5, 0.1, 0.1) == (2, 2)
    plain = RunDirectory(runs / "plain" / "fomaml").load_checkpoint(2).params
    plus = RunDirectory(runs / "plus" / "fomaml").load_checkpoint(2).params
    for name in plain:
        torch.testing.assert_close(plus[name], plain[name], rtol=0, atol=1e-6)
    records = RunDirectory(runs / "plus" / "fomaml").read_metrics()
    assert [(r["train/replies"], r["train/secagg-participants"]) for r in records] == [(4.0, 5.0), (4.0, 5.0)]


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


def test_with_differential_privacy_each_factory_adds_its_share_and_the_sum_carries_the_central_noise(runs):
    """4 of 5 factories answered a round that unmasks from t = 3: their noise sums to std z C sqrt(4 / 3),
    which the mean of 4 divides by 4; epsilon is counted as with the server's noise."""
    secure = RunDirectory(runs / "secure" / "fomaml").load_checkpoint(1).params
    private = RunDirectory(runs / "private" / "fomaml").load_checkpoint(1).params
    noise = torch.cat([(private[name] - secure[name]).double().flatten() for name in secure])
    z, clip = PRIVATE["dp-noise-multiplier"], PRIVATE["dp-clip-norm"]
    assert noise.numel() > 4000  # the sample std is then within 10% of the true one (beyond 6 standard errors)
    assert float(noise.std()) == pytest.approx(z * clip * (4 / 3) ** 0.5 / 4, rel=0.1)
    (record,) = RunDirectory(runs / "private" / "fomaml").read_metrics()
    assert record["train/replies"] == 4.0
    assert record["train/dp-epsilon"] == pytest.approx(spent_epsilon(1, 1.0, z, 1e-5))
