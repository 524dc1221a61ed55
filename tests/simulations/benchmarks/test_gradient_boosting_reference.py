"""The benchmark's gradient-boosting reference learns toy tasks."""

from __future__ import annotations

import math

import torch

from fedmeta.common import ClassificationTaskSampler, FactoryData, RegressionTaskSampler
from fedmeta.simulations.benchmarks.gradient_boosting import GradientBoostingReference


def _two_blobs(name: str, shift: float, n: int = 60) -> FactoryData:
    g = torch.Generator().manual_seed(len(name))
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) * 0.3 + (y[:, None] * 2 - 1) * 2.0 + shift
    return FactoryData(name, x, y)


def test_classifier_separates_blobs_and_returns_log_probabilities():
    train = [_two_blobs("a", 0.0), _two_blobs("bb", 0.2)]
    batch = ClassificationTaskSampler([_two_blobs("held", 0.1)], 2, 3, 5, seed=0, shuffle_labels=False).sample(2)
    reference = GradientBoostingReference(train, task_kind="classification", num_classes=3, seed=0)
    models = reference.fit(batch)
    assert len(models) == 2
    scores = reference.query_scores(models, batch)
    assert scores["accuracy"] == 1.0 and scores["num-examples"] == 20
    out = reference.predict(models, batch.query_x[0])
    assert out.shape == (2, 10, 3)
    # Class 2 never occurs: its probability is clipped to 1e-8, and every row's probabilities sum to 1.
    assert torch.allclose(out[..., 2], torch.full_like(out[..., 2], math.log(1e-8)))
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 10), atol=1e-6)


def test_regressor_learns_a_linear_target():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 2, generator=g)
    factory = FactoryData("line", x, 3 * x[:, 0] - x[:, 1])
    batch = RegressionTaskSampler([factory], 5, 20, seed=1).sample(2)
    reference = GradientBoostingReference([factory], task_kind="regression", num_classes=None, seed=0)
    scores = reference.query_scores(reference.fit(batch), batch)
    assert scores["loss"] < 0.01 and "accuracy" not in scores
