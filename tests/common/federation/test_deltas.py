"""Tests for common.federation.deltas: delta arithmetic, the server's checks, weighted averaging."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from fedmeta.common import (
    DeltaRejected,
    add,
    global_norm,
    subtract,
    validate_delta,
    weighted_average,
)


def reference() -> dict[str, Tensor]:
    return {
        "body.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "head.weight": torch.ones(1, 4),
        "lr.head.weight": torch.full((1, 4), 0.01),  # Meta-SGD learning rates travel too
    }


def small_delta() -> dict[str, Tensor]:
    return {name: torch.full_like(tensor, 0.5) for name, tensor in reference().items()}


def test_subtract_then_add_round_trips():
    global_params = reference()
    local = {name: t * 2 + 1 for name, t in global_params.items()}
    delta = subtract(local, global_params)
    assert set(delta) == set(global_params)
    torch.testing.assert_close(delta["body.weight"], global_params["body.weight"] + 1)
    restored = add(global_params, delta)
    for name in global_params:
        torch.testing.assert_close(restored[name], local[name])


def test_subtract_and_add_check_names_and_shapes():
    with pytest.raises(ValueError, match=r"missing names: 'head.weight'"):
        subtract({"body.weight": torch.zeros(2, 3)}, reference())
    bad = {**small_delta(), "head.weight": torch.zeros(3, 4)}
    with pytest.raises(ValueError, match=r"cannot add: 'head.weight' has shape \(3, 4\)"):
        add(reference(), bad)


def test_global_norm_is_l2_over_all_entries():
    tensors = {"a": torch.tensor([3.0]), "b": torch.tensor([[4.0, 0.0]], dtype=torch.float64)}
    assert global_norm(tensors) == pytest.approx(5.0)
    assert global_norm({}) == 0.0


def test_valid_delta_passes():
    validate_delta(small_delta(), reference(), max_norm=10.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("head.weight"), r"missing names: 'head.weight'"),
        (lambda d: d.update(extra=torch.zeros(1)), r"unexpected names: 'extra'"),
        (
            lambda d: d.update({"head.weight": torch.zeros(3, 4)}),
            r"'head.weight' has shape \(3, 4\), expected \(1, 4\)",
        ),
        (
            lambda d: d.update({"head.weight": torch.zeros(1, 4, dtype=torch.float64)}),
            r"'head.weight' has dtype torch.float64, expected torch.float32",
        ),
        (
            lambda d: d.update({"body.weight": torch.tensor([[0, math.nan, 0], [math.inf, 0, 0]])}),
            r"'body.weight' has 2 non-finite values",
        ),
        (lambda d: d.update({"head.weight": [0.0] * 4}), r"'head.weight' is a list, not a tensor"),
    ],
)
def test_invalid_delta_is_rejected_naming_the_problem(change, message):
    delta = small_delta()
    change(delta)
    with pytest.raises(DeltaRejected, match=message):
        validate_delta(delta, reference(), max_norm=10.0)


def test_delta_above_max_norm_is_rejected_with_norm_and_bound():
    delta = small_delta()  # 14 entries of 0.5: norm sqrt(3.5)
    with pytest.raises(DeltaRejected, match=r"global norm 1\.87083 exceeds max_norm 1\b"):
        validate_delta(delta, reference(), max_norm=1.0)
    validate_delta(delta, reference(), max_norm=math.inf)


def test_delta_rejected_is_a_value_error():
    assert issubclass(DeltaRejected, ValueError)


def test_weighted_average_weights_by_examples():
    deltas = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([4.0, 8.0])}]
    average = weighted_average(deltas, [3, 1])
    torch.testing.assert_close(average["w"], torch.tensor([1.75, 3.5]))
    assert average["w"].dtype == torch.float32


def test_weighted_average_ignores_zero_weight_clients():
    deltas = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([100.0])}]
    torch.testing.assert_close(weighted_average(deltas, [2.0, 0.0])["w"], torch.tensor([1.0]))


@pytest.mark.parametrize(
    ("deltas", "weights", "message"),
    [
        ([], [], "empty"),
        ([{"w": torch.zeros(1)}], [1.0, 2.0], "1 deltas but 2 weights"),
        ([{"w": torch.zeros(1)}], [-1.0], "weight 0 must be finite and non-negative"),
        ([{"w": torch.zeros(1)}], [math.nan], "weight 0 must be finite and non-negative"),
        ([{"w": torch.zeros(1)}], [math.inf], "weight 0 must be finite and non-negative"),
        ([{"w": torch.zeros(1)}, {"w": torch.zeros(1)}], [0, 0.0], "all weights are zero"),
        ([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], [1, 1], "missing names: 'w'"),
        ([{"w": torch.zeros(1, dtype=torch.int64)}], [1], "not floating point"),
    ],
)
def test_weighted_average_rejects_bad_input(deltas, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_average(deltas, weights)
