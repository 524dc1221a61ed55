"""Tests for server.strategy.outer_optimizer: FedAvg equivalence, state persistence, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from fedmeta.common import DeltaRejected, add
from fedmeta.server.strategy import OUTER_OPTIMIZERS, OuterOptimizer, OuterOptimizerConfig


def global_params() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "body.weight": torch.randn(3, 2, generator=generator),
        "head.bias": torch.randn(1, generator=generator, dtype=torch.float64),
        "lr.body.weight": torch.full((3, 2), 0.01),
    }


def mean_delta(seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: 0.1 * torch.randn(t.shape, generator=generator, dtype=t.dtype)
        for name, t in global_params().items()
    }


def test_sgd_with_lr_one_is_plain_averaging():
    params = global_params()
    optimizer = OuterOptimizer(params, OuterOptimizerConfig())
    delta = mean_delta(1)
    new = optimizer.step(delta)
    expected = add(params, delta)
    for name in params:
        assert torch.equal(new[name], expected[name]), name
        assert new[name].dtype == params[name].dtype
    assert optimizer.state_dict() == {}


def test_step_does_not_alias_inputs_or_outputs():
    params = global_params()
    original = {name: t.clone() for name, t in params.items()}
    optimizer = OuterOptimizer(params, OuterOptimizerConfig())
    new = optimizer.step(mean_delta(1))
    new["body.weight"].zero_()
    for name in params:
        assert torch.equal(params[name], original[name])
    assert not torch.equal(optimizer.params["body.weight"], new["body.weight"])


@pytest.mark.parametrize(
    "config",
    [
        OuterOptimizerConfig("momentum", lr=0.7, momentum=0.9),
        OuterOptimizerConfig("adam", lr=0.05, betas=(0.8, 0.99)),
    ],
)
def test_state_survives_save_rebuild_load(config):
    continuous = OuterOptimizer(global_params(), config)
    continuous.step(mean_delta(1))
    expected = continuous.step(mean_delta(2))

    first = OuterOptimizer(global_params(), config)
    after_one = first.step(mean_delta(1))
    tensors, metadata = first.state_dict(), first.metadata()
    resumed = OuterOptimizer(after_one, config)
    resumed.load_state_dict(tensors, metadata)
    result = resumed.step(mean_delta(2))

    for name in expected:
        assert torch.equal(result[name], expected[name]), name
    assert set(resumed.state_dict()) == set(continuous.state_dict())
    forgetful = OuterOptimizer(after_one, config).step(mean_delta(2))  # state not loaded
    assert not torch.equal(forgetful["body.weight"], expected["body.weight"])


def test_state_is_flattened_into_named_tensors():
    optimizer = OuterOptimizer(global_params(), OuterOptimizerConfig("adam", lr=0.1))
    optimizer.step(mean_delta(1))
    state = optimizer.state_dict()
    assert set(state) == {
        f"state/{name}/{key}"
        for name in global_params()
        for key in ("step", "exp_avg", "exp_avg_sq")
    }
    assert all(isinstance(t, Tensor) for t in state.values())
    assert state["state/head.bias/step"].item() == 1
    assert json.loads(optimizer.metadata()["outer_optimizer"]) == {
        "kind": "adam",
        "lr": 0.1,
        "betas": [0.9, 0.999],
        "names": list(global_params()),
    }


def test_load_rejects_a_different_kind_or_hyperparameters():
    saved = OuterOptimizer(global_params(), OuterOptimizerConfig("momentum"))
    saved.step(mean_delta(1))
    for config in (OuterOptimizerConfig("adam"), OuterOptimizerConfig("momentum", lr=0.5)):
        with pytest.raises(ValueError, match="saved outer optimizer is"):
            OuterOptimizer(global_params(), config).load_state_dict(
                saved.state_dict(), saved.metadata()
            )


def test_load_rejects_different_parameter_names():
    saved = OuterOptimizer(global_params(), OuterOptimizerConfig("momentum"))
    saved.step(mean_delta(1))
    other = {**global_params(), "extra": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"missing \['extra'\], unexpected \[\]"):
        OuterOptimizer(other, OuterOptimizerConfig("momentum")).load_state_dict(
            saved.state_dict(), saved.metadata()
        )


def test_load_rejects_inconsistent_state_tensors():
    config = OuterOptimizerConfig("adam")
    saved = OuterOptimizer(global_params(), config)
    saved.step(mean_delta(1))
    state, metadata = saved.state_dict(), saved.metadata()
    target = OuterOptimizer(global_params(), config)
    with pytest.raises(ValueError, match="unexpected outer optimizer state tensor 'state/x/step'"):
        target.load_state_dict({**state, "state/x/step": torch.tensor(1.0)}, metadata)
    partial = {k: v for k, v in state.items() if not k.endswith("exp_avg_sq")}
    with pytest.raises(ValueError, match="has keys"):
        target.load_state_dict(partial, metadata)
    wrong_shape = {**state, "state/head.bias/exp_avg": torch.zeros(5, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"has shape \(5,\), expected \(1,\)"):
        target.load_state_dict(wrong_shape, metadata)
    with pytest.raises(ValueError, match="no 'outer_optimizer' entry"):
        target.load_state_dict(state, {})


def test_bad_delta_leaves_parameters_and_state_untouched():
    optimizer = OuterOptimizer(global_params(), OuterOptimizerConfig("adam", lr=0.1))
    optimizer.step(mean_delta(1))
    before_params, before_state = optimizer.params, optimizer.state_dict()
    bad = {**mean_delta(2), "head.bias": torch.tensor([math.nan], dtype=torch.float64)}
    with pytest.raises(DeltaRejected, match="non-finite"):
        optimizer.step(bad)
    for name, tensor in optimizer.params.items():
        assert torch.equal(tensor, before_params[name])
    for name, tensor in optimizer.state_dict().items():
        assert torch.equal(tensor, before_state[name])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "rmsprop"}, "valid choices: " + ", ".join(OUTER_OPTIMIZERS)),
        ({"lr": 0.0}, "lr must be a positive finite number"),
        ({"lr": math.inf}, "lr must be a positive finite number"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"betas": (0.9,)}, "betas must be two numbers"),
        ({"betas": 0.9}, "betas must be two numbers"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OuterOptimizerConfig(**kwargs)


def test_config_accepts_betas_from_json():
    assert OuterOptimizerConfig("adam", betas=[0.5, 0.9]).betas == (0.5, 0.9)
