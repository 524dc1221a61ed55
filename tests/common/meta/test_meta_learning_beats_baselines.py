"""Meta-training must produce an initialisation that adapts from 5 shots better than a
random one and better than a model pre-trained jointly on all tasks.

The family is the classic sinusoid benchmark (amplitude and phase differ per task):
joint pre-training can only learn the average curve, which is flat, while a good
initialisation adapts to each task's curve in a few steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedmeta.common import FactoryData, MetaConfig, RegressionTaskSampler, build_model, evaluate_adaptation, meta_train

SHOTS, INNER_STEPS, INNER_LR, META_STEPS = 5, 5, 0.02, 2000


def sinusoid_factories(count: int, seed: int, points: int = 40) -> list[FactoryData]:
    generator = torch.Generator().manual_seed(seed)
    factories = []
    for i in range(count):
        amplitude = 0.1 + 4.9 * torch.rand((), generator=generator)
        phase = math.pi * torch.rand((), generator=generator)
        x = torch.rand(points, 1, generator=generator) * 10 - 5
        factories.append(
            FactoryData(f"sine-{i}", x, (amplitude * torch.sin(x + phase)).squeeze(-1))
        )
    return factories


def best_adapted_loss(model, weights, batch, learning_rates) -> float:
    """A baseline gets its best fine-tuning step size, so the comparison is fair to it."""
    losses = [
        evaluate_adaptation(model, weights, batch, kind="regression", steps=INNER_STEPS, lr=lr)[
            "query_loss"
        ]
        for lr in learning_rates
    ]
    return min(loss for loss in losses if math.isfinite(loss))


@pytest.mark.parametrize("algorithm", ["maml"])
def test_meta_learned_initialisation_adapts_from_five_shots_better_than_baselines(algorithm):
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "input_shape": (1,), "output_dim": 1, "hidden": 40})
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    sampler_seed, train = 0, sinusoid_factories(100, seed=1)
    held_out = RegressionTaskSampler(sinusoid_factories(100, seed=2), SHOTS, 20, seed=3).sample(100)

    def train_with(name: str) -> dict[str, torch.Tensor]:
        config = MetaConfig(
            name,
            inner_steps=INNER_STEPS,
            inner_lr=INNER_LR,
            outer_lr=3e-3,
            meta_batch_size=8,
            local_steps=META_STEPS,
        )
        sampler = RegressionTaskSampler(train, SHOTS, 10, seed=sampler_seed)
        return meta_train(model, initial, sampler, config, device="cpu").weights

    meta = evaluate_adaptation(
        model, train_with(algorithm), held_out, kind="regression", steps=INNER_STEPS, lr=INNER_LR
    )["query_loss"]
    rates = (0.002, 0.005, 0.01, 0.02, 0.05)
    pretrained = best_adapted_loss(model, train_with("pretrain"), held_out, rates)
    random_init = best_adapted_loss(model, initial, held_out, rates)

    assert meta < 0.7 * pretrained, (meta, pretrained)
    assert meta < 0.7 * random_init, (meta, random_init)
