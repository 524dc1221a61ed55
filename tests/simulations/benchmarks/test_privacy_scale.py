"""Client-level DP's cost falls as the federation grows: the privacy bench's sweep over numbers of factories
runs the server's DP aggregation for real on a Poisson sample, and its accountant amplifies by subsampling."""

from __future__ import annotations

import pytest

from fedmeta.common.security.privacy import spent_epsilon
from fedmeta.simulations.benchmarks.privacy import (
    NO_DP,
    PrivacyResult,
    noise_for_epsilon,
    poisson_sample,
    privacy_sweep,
    smallest_usable,
)

# The quality family at its smallest (but 4 rounds, below): one cheap local step, one held-out factory scored on
# one task per K.
TINY = {"dataset": "synthetic", "family": "quality", "num-held-out": 1, "max-samples": 60, "algorithm": "fomaml",
        "num-server-rounds": 4, "local-steps": 1, "meta-batch-size": 1, "inner-steps": 1, "eval-tasks": 2,
        "eval-steps": 2, "eval-shots": "5", "min-train-nodes": 1, "device": "cpu", "seed": 0, "family-seed": 0}


def test_subsampling_lowers_the_noise_for_the_same_epsilon_and_the_epsilon_stays_at_the_target():
    full, sampled = noise_for_epsilon(8.0, 20, 1.0), noise_for_epsilon(8.0, 20, 0.05)
    assert sampled < full / 3  # amplification: 0.05 of the factories a round needs a fraction of the noise
    assert spent_epsilon(20, 0.05, sampled, 1e-5) <= 8.0 < spent_epsilon(20, 0.05, sampled / 1.002, 1e-5)


def test_poisson_sampling_is_reproducible_and_near_its_rate():
    rounds = [poisson_sample(1000, 0.1, seed=0, round_=r) for r in range(1, 6)]
    assert rounds[0] == poisson_sample(1000, 0.1, seed=0, round_=1) != rounds[1]
    assert all(60 <= len(chosen) <= 140 for chosen in rounds)  # binomial(1000, 0.1): sd 9.5


def test_more_factories_at_the_same_epsilon_cost_less_of_the_held_out_loss():
    # The server draws DP noise from a secret seed, so the costs vary from run to run. Over 2 rounds the cost with
    # 2 factories ranged 0.74-10.8 in 18 runs, too close to the bound; over 4 rounds it ranged 21-91 in 8 runs,
    # with 12 factories at most 0.36.
    result = privacy_sweep(TINY, [1.0], print, factories=[2, 12], sampling_rate=0.5)
    rows = {(row["factories"], row["run"]): row for row in result.rows}
    assert set(rows) == {(count, run) for count in (2, 12) for run in (NO_DP, "clipped, no noise", "epsilon 1")}
    noisy = [rows[count, "epsilon 1"] for count in (2, 12)]
    assert noisy[0]["noise_multiplier"] == noisy[1]["noise_multiplier"] < noise_for_epsilon(1.0, 2, 1.0)
    assert all(row["epsilon"] <= 1.0 for row in noisy)
    # The same noise multiplier spread over ~6 deltas a round instead of ~1: the noise on the mean is far smaller.
    small, large = (result.cost(row) for row in noisy)
    assert small > 10 * max(large, 0.1)
    assert result.cost(rows[2, "clipped, no noise"]) < small / 10  # the noise, not the clipping, did it


def _result(costs: dict[int, float]) -> PrivacyResult:
    rows = []
    for count, cost in costs.items():
        rows += [{"factories": count, "run": NO_DP, "target": None, "k5": 1.0},
                 {"factories": count, "run": "epsilon 8", "target": 8.0, "k5": 1.0 + cost}]
    return PrivacyResult("synthetic", "fomaml", 20, 0, 0.05, "loss", False, [5], dict.fromkeys(costs, 1.0), rows)


@pytest.mark.parametrize(("costs", "usable"), [({10: 5.0, 100: 0.09, 1000: 0.01}, 100),
                                               ({10: 5.0, 100: 0.5, 1000: 0.11}, None)])
def test_the_verdict_is_the_fewest_factories_where_epsilon_8_costs_at_most_10_percent(costs, usable):
    assert smallest_usable(_result(costs), 8.0) == usable
