"""Client-level differential privacy: every delta is clipped to the bound exactly, the noise on the mean
has the promised scale, the accountant's epsilon matches an independent computation, and each round's
metrics carry the epsilon spent so far."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmeta.common.federation.deltas import global_norm
from fedmeta.common.security.privacy import ORDERS, DifferentialPrivacy, clip_delta, spent_epsilon
from fedmeta.server.settings import ServerSettings
from fedmeta.server.strategy import OuterOptimizer, OuterOptimizerConfig
from fedmeta.server.strategy.fedmeta import FedMetaStrategy


def test_a_long_delta_is_clipped_to_the_bound_exactly_and_a_short_one_is_left_alone():
    long = {"w": torch.full((3, 4), 2.0), "b": torch.full((4,), -1.0)}
    clipped = clip_delta(long, 1.5)
    assert global_norm(clipped) == pytest.approx(1.5, rel=1e-6)
    torch.testing.assert_close(clipped["w"] / clipped["w"].norm(), long["w"] / long["w"].norm())  # direction kept
    short = {"w": torch.full((3, 4), 0.01), "b": torch.zeros(4)}
    assert all(torch.equal(clip_delta(short, 1.5)[n], short[n]) for n in short)


def test_the_noise_on_the_mean_has_standard_deviation_z_c_over_n():
    privacy = DifferentialPrivacy(noise_multiplier=1.3, clip_norm=2.0)
    deltas = [{"w": torch.zeros(200, 100)} for _ in range(4)]  # no signal: the mean is the noise
    noise = privacy.noisy_mean(deltas, torch.Generator().manual_seed(0))["w"].double()
    expected = 1.3 * 2.0 / 4
    # 20,000 draws: the sample std is within 2% of the true one with overwhelming probability (4 sigma ~ 2%)
    assert float(noise.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())


def test_noisy_shares_of_a_secure_round_sum_to_the_noise_central_dp_adds():
    """Distributed DP: each of ``t`` factories adds std z C / sqrt(t), so their sum carries z C, as the
    server's noise on the sum would; each share is clipped to C before its noise."""
    privacy = DifferentialPrivacy(noise_multiplier=1.3, clip_norm=2.0)
    generator = torch.Generator().manual_seed(0)
    threshold = 4
    shares = [privacy.noisy_share({"w": torch.zeros(200, 100)}, threshold, generator)["w"] for _ in range(threshold)]
    assert float(shares[0].double().std()) == pytest.approx(1.3 * 2.0 / 2, rel=0.02)  # 20,000 draws each
    assert float(torch.stack(shares).double().sum(dim=0).std()) == pytest.approx(1.3 * 2.0, rel=0.02)
    quiet = DifferentialPrivacy(noise_multiplier=1e-9, clip_norm=2.0)
    long = quiet.noisy_share({"w": torch.full((10, 10), 3.0)}, threshold, generator)
    assert global_norm(long) == pytest.approx(2.0, rel=1e-6)


def _independent_epsilon(rounds: int, noise_multiplier: float, delta: float) -> float:
    """Every factory in every round (q = 1): the Gaussian mechanism's RDP at order a is a / (2 z^2), composed
    over the rounds, converted to (epsilon, delta) by Canonne et al.'s bound (their Proposition 12)."""
    orders = np.array(ORDERS, dtype=float)
    rdp = rounds * orders / (2 * noise_multiplier**2)
    return float(np.min(rdp + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)))


@pytest.mark.parametrize(("rounds", "noise_multiplier"), [(1, 1.0), (10, 2.0), (40, 5.0)])
def test_the_accountant_agrees_with_an_independent_computation_when_every_factory_trains(rounds, noise_multiplier):
    assert spent_epsilon(rounds, 1.0, noise_multiplier, 1e-5) == pytest.approx(
        _independent_epsilon(rounds, noise_multiplier, 1e-5), rel=1e-6)


def test_sampling_fewer_factories_per_round_spends_less_and_more_rounds_spend_more():
    assert spent_epsilon(20, 0.25, 1.0, 1e-5) < spent_epsilon(20, 1.0, 1.0, 1e-5)
    assert spent_epsilon(10, 0.5, 1.0, 1e-5) < spent_epsilon(20, 0.5, 1.0, 1e-5)
    assert spent_epsilon(0, 0.5, 1.0, 1e-5) == 0.0


def test_a_private_round_applies_the_noisy_mean_of_clipped_deltas_and_reports_its_epsilon():
    settings = ServerSettings.from_run_config({"dp-noise-multiplier": 0.8, "dp-clip-norm": 1.0,
                                               "fraction-train": 1.0})
    params = {"w": torch.zeros(100, 100)}
    strategy = FedMetaStrategy(OuterOptimizer(params, OuterOptimizerConfig("sgd", lr=1.0)), settings.sampling)
    deltas = [{"w": torch.full((100, 100), value)} for value in (0.05, -0.05, 0.001)]  # norms 5, 5, 0.1
    claims = [1.0, 1.0, 1e9]  # a claim buys nothing under DP: equal weights
    accepted = [(delta, {"num-examples": claim}) for delta, claim in zip(deltas, claims, strict=True)]
    for server_round in (1, 2):
        before = strategy.optimizer.params["w"].clone()
        updated, metrics = strategy.apply_deltas(server_round, accepted, offered=3)
        step = (updated["w"] - before).double()
        clipped_mean = (0.01 - 0.01 + 0.001) / 3  # the two long deltas clipped to norm 1 (0.01 a value)
        assert float(step.mean()) == pytest.approx(clipped_mean, abs=5 * 0.8 / 3 / 100)  # 5 standard errors
        assert float(step.std()) == pytest.approx(0.8 * 1.0 / 3, rel=0.05)
        assert metrics["dp-epsilon"] == pytest.approx(spent_epsilon(server_round, 1.0, 0.8, 1e-5))


def test_privacy_with_a_robust_rule_or_a_bad_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="needs aggregation 'mean', not 'median'"):
        ServerSettings.from_run_config({"dp-noise-multiplier": 1.0, "aggregation": "median"})
    # Under secure aggregation a noisy share must fit the masked sum's range: 2 + 6 * 20 * 2 / sqrt(2) = 172.
    with pytest.raises(ValueError, match=r"reaches 172 per value .* raise max-delta-norm to at least 172"):
        ServerSettings.from_run_config({"dp-noise-multiplier": 20.0, "dp-clip-norm": 2.0, "secure-aggregation": True})
    ServerSettings.from_run_config({"dp-noise-multiplier": 20.0, "dp-clip-norm": 2.0, "secure-aggregation": True,
                                    "max-delta-norm": 172.0})
    with pytest.raises(ValueError, match="dp-clip-norm must be finite and > 0"):
        ServerSettings.from_run_config({"dp-noise-multiplier": 1.0, "dp-clip-norm": 0.0})
    with pytest.raises(ValueError, match=r"dp-delta must be in \(0, 1\)"):
        ServerSettings.from_run_config({"dp-noise-multiplier": 1.0, "dp-delta": 1.0})
