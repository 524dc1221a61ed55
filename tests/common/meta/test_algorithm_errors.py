"""Bad settings and diverging training fail loudly, naming the problem."""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import ALGORITHMS, MetaConfig, NonFiniteLossError, TaskBatch, meta_train, resolve_device
from tests.support.meta_reference import FixedSampler, LinearModel, TinyNet, leaf_params, random_batch


def test_unknown_algorithm_lists_valid_choices():
    with pytest.raises(ValueError, match="unknown algorithm 'mamll'; valid choices: maml, fomaml"):
        MetaConfig("mamll")


@pytest.mark.parametrize("field", ["inner_lr", "outer_lr"])
@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_or_non_finite_learning_rate_is_rejected(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive finite number"):
        MetaConfig(**{field: value})


@pytest.mark.parametrize("field", ["inner_steps", "meta_batch_size", "local_steps"])
def test_zero_steps_or_tasks_are_rejected(field):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got 0"):
        MetaConfig(**{field: 0})


def test_unknown_outer_optimizer_and_task_kind_list_valid_choices():
    with pytest.raises(ValueError, match="valid choices: adam, sgd"):
        MetaConfig(outer_optimizer="rmsprop")
    with pytest.raises(ValueError, match="valid choices: regression, classification"):
        MetaConfig(task_kind="ranking")


def _steep_batch(seed: int = 1) -> TaskBatch:
    """Inputs of size ~1e3: at an inner step size of 1e3 plain gradient descent diverges at once."""
    batch = random_batch(tasks=2, shots=5, queries=5, inputs=3, seed=seed)
    return TaskBatch(*(t.float() for t in (batch.support_x * 1e3, batch.support_y, batch.query_x, batch.query_y)))


GRADIENT_STEPS = [a for a in ALGORITHMS if a not in ("pretrain", "r2d2")]  # r2d2 solves its head (test_r2d2.py)


@pytest.mark.parametrize("algorithm", GRADIENT_STEPS)
def test_a_far_too_large_inner_step_is_taken_back_and_training_stays_finite(algorithm):
    model = LinearModel(3)  # no saturating activation: without the safeguard this diverges
    config = MetaConfig(algorithm, inner_steps=5, inner_lr=1e3, meta_batch_size=2, local_steps=3)
    result = meta_train(model, leaf_params(model, torch.float32), FixedSampler(_steep_batch()), config, device="cpu")
    assert all(torch.isfinite(w).all() for w in result.weights.values())
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values()), result.metrics


@pytest.mark.parametrize("algorithm", GRADIENT_STEPS)
def test_a_non_finite_support_loss_stops_naming_the_step_and_leaves_parameters_untouched(algorithm):
    model = LinearModel(3)
    batch = random_batch(tasks=2, shots=5, queries=5, inputs=3, seed=1)
    batch.support_y[1, 2] = float("inf")  # a corrupt label: no step size helps
    start = leaf_params(model)
    before = {n: p.detach().clone() for n, p in start.items()}
    config = MetaConfig(algorithm, inner_steps=5, meta_batch_size=2)
    with pytest.raises(NonFiniteLossError, match=r"support loss became non-finite at meta-step 1, inner step 1"):
        meta_train(model, start, FixedSampler(batch), config, device="cpu")
    for name, tensor in start.items():
        torch.testing.assert_close(tensor.detach(), before[name])


def test_non_finite_query_loss_is_reported():
    model = TinyNet()
    batch = random_batch(tasks=1, shots=5, queries=5, inputs=3, seed=2)
    batch.query_y[0, 0] = float("nan")
    config = MetaConfig("maml", inner_steps=2, meta_batch_size=1)
    with pytest.raises(NonFiniteLossError, match="query loss became non-finite at meta-step 1"):
        meta_train(model, leaf_params(model), FixedSampler(batch), config, device="cpu")


def test_device_auto_falls_back_to_cpu_and_rejects_unknown_or_missing_devices():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(
        ValueError, match="unknown device 'tpu'; valid choices: auto, cuda, mps, cpu"
    ):
        resolve_device("tpu")
