"""Robust aggregation of deltas: each rule equals Flower's strategy of the same name on the same replies,
the strategy combines a round by the run's rule, and each rule resists the attack it is made for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedmeta.server.settings import ServerSettings
from fedmeta.server.strategy import OuterOptimizer, OuterOptimizerConfig
from fedmeta.server.strategy.aggregation import AggregationRule
from fedmeta.server.strategy.fedmeta import FedMetaStrategy, SamplingSettings
from tests.support.flower_messages import reply_from

SHAPES = {"body.weight": (4, 3), "body.bias": (4,), "head.weight": (1, 4)}


def _deltas(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()} for _ in range(count)]


def _flower(strategy, deltas, weights) -> dict[str, np.ndarray]:
    replies = [reply_from(node + 1, RecordDict({"arrays": ArrayRecord(torch_state_dict=delta),
                                                "metrics": MetricRecord({"num-examples": weight})}))
               for node, (delta, weight) in enumerate(zip(deltas, weights, strict=True))]
    arrays, _ = strategy.aggregate_train(1, replies)
    return {name: array.numpy() for name, array in arrays.items()}


@pytest.mark.parametrize("count", [5, 8])
@pytest.mark.parametrize(("ours", "theirs"), [
    (AggregationRule("mean"), lambda n: FedAvg()),
    (AggregationRule("median"), lambda n: FedMedian()),
    (AggregationRule("trimmed-mean", trim_fraction=0.2), lambda n: FedTrimmedAvg(beta=0.2)),
    (AggregationRule("trimmed-mean", trim_fraction=0.4), lambda n: FedTrimmedAvg(beta=0.4)),
    (AggregationRule("krum", malicious=1), lambda n: Krum(num_malicious_nodes=1)),
    (AggregationRule("multi-krum", malicious=1, select=3),
     lambda n: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3)),
    (AggregationRule("multi-krum", malicious=2), lambda n: MultiKrum(num_malicious_nodes=2, num_nodes_to_select=n - 2)),
], ids=["mean", "median", "trimmed-0.2", "trimmed-0.4", "krum", "multi-krum-3", "multi-krum-n-f"])
def test_each_rule_equals_flowers_strategy_on_the_same_replies(ours, theirs, count):
    for seed in range(3):
        deltas, weights = _deltas(count, seed), [float(w) for w in np.random.default_rng(seed).integers(5, 50, count)]
        combined = ours.combine(deltas, weights)
        expected = _flower(theirs(count), deltas, weights)
        for name in SHAPES:
            np.testing.assert_allclose(combined[name].numpy(), expected[name], rtol=1e-5, atol=1e-6)


def test_the_capped_mean_counts_no_claim_above_the_median_claim():
    deltas = _deltas(4, 0)
    combined = AggregationRule("capped-mean").combine(deltas, [10.0, 20.0, 30.0, 1e9])  # median claim: 25
    expected = AggregationRule("mean").combine(deltas, [10.0, 20.0, 25.0, 25.0])
    for name in SHAPES:
        torch.testing.assert_close(combined[name], expected[name])
    fixed = AggregationRule("capped-mean", weight_cap=15.0).combine(deltas, [10.0, 20.0, 30.0, 1e9])
    capped = AggregationRule("mean").combine(deltas, [10.0, 15.0, 15.0, 15.0])
    torch.testing.assert_close(fixed["body.bias"], capped["body.bias"])


@pytest.mark.parametrize(("rule", "attack"), [
    ("median", "sign flip"), ("trimmed-mean", "sign flip"), ("krum", "noise"), ("multi-krum", "noise"),
    ("capped-mean", "claim"),
])
def test_a_robust_rule_stays_near_the_honest_mean_where_the_plain_mean_follows_the_attacker(rule, attack):
    """Eight honest factories send one direction with noise; two attackers (20%) send five times its
    opposite, large pure noise, or its opposite with a billion claimed examples each (capped at the median
    claim, they weigh as much as an honest factory: the plain mean of honest claims, 0.6 of the direction)."""
    generator = torch.Generator().manual_seed(0)
    direction = {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
    honest = [{n: t + 0.1 * torch.randn(t.shape, generator=generator) for n, t in direction.items()} for _ in range(8)]
    if attack == "sign flip":
        attackers = [{n: -5 * t for n, t in direction.items()} for _ in range(2)]
    elif attack == "noise":
        attackers = [{n: 10 * torch.randn(t.shape, generator=generator) for n, t in direction.items()}
                     for _ in range(2)]
    else:
        attackers = [{n: -t for n, t in direction.items()} for _ in range(2)]
    weights = [10.0] * 8 + ([1e9] * 2 if attack == "claim" else [10.0] * 2)

    def error(name: str) -> float:
        combined = AggregationRule(name, malicious=2).combine(honest + attackers, weights)
        return float(sum(torch.linalg.vector_norm(combined[n] - direction[n]) ** 2 for n in SHAPES) ** 0.5)

    size = float(sum(torch.linalg.vector_norm(t) ** 2 for t in direction.values()) ** 0.5)
    assert error(rule) < 0.5 * size < error("mean"), (error(rule), error("mean"), size)


def test_the_strategy_combines_a_round_by_the_runs_aggregation_setting():
    settings = ServerSettings.from_run_config({"aggregation": "median"})
    assert settings.sampling.aggregation == AggregationRule("median")
    params = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    strategy = FedMetaStrategy(OuterOptimizer(params, OuterOptimizerConfig("sgd", lr=1.0)), settings.sampling)
    deltas = _deltas(3, 1)
    accepted = [(delta, {"num-examples": weight}) for delta, weight in zip(deltas, [1.0, 1.0, 100.0], strict=True)]
    updated, _ = strategy.apply_deltas(1, accepted, offered=3)
    for name in SHAPES:
        torch.testing.assert_close(updated[name], torch.stack([d[name] for d in deltas]).median(dim=0).values)


@pytest.mark.parametrize(("settings", "problem"), [
    ({"aggregation": "average"}, "unknown aggregation 'average'; valid choices: mean, median"),
    ({"aggregation": "trimmed-mean", "trim-fraction": 0.5}, r"trim-fraction must be in \[0, 0.5\)"),
    ({"aggregation": "krum", "krum-malicious": -1}, "krum-malicious must be a whole number >= 0"),
    ({"aggregation": "capped-mean", "weight-cap": -1.0}, "weight-cap must be finite and >= 0"),
    ({"secure-aggregation": True, "aggregation": "median"}, "secure aggregation .* needs aggregation 'mean'"),
    ({"secure-aggregation": True, "compression": "int8"}, "secure aggregation .* needs compression 'none'"),
    ({"secure-aggregation": True, "secagg-threshold": 0.0}, r"secagg-threshold must be in \(0, 1\]"),
])
def test_a_bad_aggregation_setting_is_refused_by_name(settings, problem):
    with pytest.raises(ValueError, match=problem):
        ServerSettings.from_run_config(settings)


def test_flowers_sampling_settings_default_to_the_weighted_mean():
    assert SamplingSettings().aggregation == AggregationRule("mean")
