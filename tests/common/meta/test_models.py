"""Tests for common.meta.models: shapes, task-batched calls, ANIL calls, causality, configs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

from fedmeta.common import CNN1d, MetaModel, ModelConfig, TaskLinear, build_model

TASKS, BATCH = 3, 4
INPUT_SHAPES = {"mlp": (6,), "cnn1d": (3, 16), "tcn": (3, 12)}


def make_model(name: str) -> MetaModel:
    torch.manual_seed(0)
    config = ModelConfig(name, INPUT_SHAPES[name], output_dim=2, hidden=8, kernel_size=3)
    return build_model(config)


def perturbed_copies(params: dict[str, Tensor], tasks: int = TASKS) -> dict[str, Tensor]:
    """Stack ``tasks`` different random copies of each parameter along a new dim 0."""
    return {
        name: torch.stack([p + 0.1 * torch.randn_like(p) for _ in range(tasks)])
        for name, p in params.items()
    }


def task_slice(params: dict[str, Tensor], task: int, names: list[str]) -> dict[str, Tensor]:
    """Ordinary parameters for one task: index the task-batched ones at ``task``."""
    return {name: p[task] if name in names else p for name, p in params.items()}


def loop_over_tasks(
    model: MetaModel, params: dict[str, Tensor], batched: list[str], x: Tensor
) -> Tensor:
    """Reference result: one ordinary functional call per task."""
    outputs = [
        functional_call(model, task_slice(params, t, batched), (x[t],)) for t in range(len(x))
    ]
    return torch.stack(outputs)


@pytest.mark.parametrize("name", list(INPUT_SHAPES))
def test_output_shape_for_an_unbatched_batch(name: str) -> None:
    model = make_model(name)
    assert model(torch.randn(BATCH, *INPUT_SHAPES[name])).shape == (BATCH, 2)


@pytest.mark.parametrize("name", list(INPUT_SHAPES))
def test_task_batched_parameters_equal_a_loop_over_tasks(name: str) -> None:
    model = make_model(name)
    params = perturbed_copies(dict(model.named_parameters()))
    x = torch.randn(TASKS, BATCH, *INPUT_SHAPES[name])

    out = functional_call(model, params, (x,))

    assert out.shape == (TASKS, BATCH, 2)
    expected = loop_over_tasks(model, params, list(params), x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(INPUT_SHAPES))
def test_anil_shared_body_with_task_batched_head_equals_a_loop_over_tasks(name: str) -> None:
    model = make_model(name)
    head_names = model.head_parameter_names()
    params = dict(model.named_parameters())
    params |= perturbed_copies({n: params[n] for n in head_names})
    x = torch.randn(TASKS, BATCH, *INPUT_SHAPES[name])

    out = functional_call(model, params, (x,))

    assert out.shape == (TASKS, BATCH, 2)
    expected = loop_over_tasks(model, params, head_names, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(INPUT_SHAPES))
def test_head_parameter_names_are_the_single_task_linear_head(name: str) -> None:
    model = make_model(name)
    assert isinstance(model.head, TaskLinear)
    assert model.head_parameter_names() == ["head.weight", "head.bias"]
    assert set(model.head_parameter_names()) <= set(model.state_dict())
    assert list(model.buffers()) == []  # no running statistics for functional calls to miss


@pytest.mark.parametrize("task_batched", [False, True], ids=["ordinary", "task-batched"])
@pytest.mark.parametrize("name", list(INPUT_SHAPES))
def test_gradients_reach_every_parameter(name: str, task_batched: bool) -> None:
    model = make_model(name)
    params = dict(model.named_parameters())
    x = torch.randn(BATCH, *INPUT_SHAPES[name])
    if task_batched:
        params = perturbed_copies(params)
        x = torch.randn(TASKS, *x.shape)

    loss = functional_call(model, params, (x,)).square().sum()
    grads = torch.autograd.grad(loss, list(params.values()))

    for param_name, grad in zip(params, grads, strict=True):
        assert grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("task_batched", [False, True], ids=["ordinary", "task-batched"])
def test_tcn_features_at_time_t_do_not_depend_on_later_inputs(task_batched: bool) -> None:
    model = make_model("tcn")
    params = dict(model.named_parameters())
    x = torch.randn(BATCH, *INPUT_SHAPES["tcn"])
    if task_batched:
        params = perturbed_copies(params)
        x = torch.randn(TASKS, *x.shape)
    body = {name.removeprefix("body."): p for name, p in params.items() if name.startswith("body.")}

    full = functional_call(model.body, body, (x,))
    for t in (1, 5, x.shape[-1] - 1):
        prefix = functional_call(model.body, body, (x[..., :t],))
        torch.testing.assert_close(prefix, full[..., :t], atol=1e-6, rtol=1e-5)


def test_build_model_from_a_mapping_with_list_input_shape() -> None:
    mapping = {"name": "cnn1d", "input_shape": [2, 32], "output_dim": 5, "hidden": 4}

    model = build_model(mapping)

    assert isinstance(model, CNN1d)
    assert model.config == ModelConfig("cnn1d", (2, 32), 5, hidden=4)
    assert model(torch.randn(BATCH, 2, 32)).shape == (BATCH, 5)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"name": "gru", "input_shape": [3], "output_dim": 1}, r"unknown model name 'gru'.*mlp"),
        (
            {"name": "mlp", "input_shape": [3], "output_dim": 1, "hiden": 8},
            r"unknown ModelConfig keys \['hiden'\]; allowed keys: .*'hidden'",
        ),
        ({"name": "mlp", "input_shape": [3]}, r"missing ModelConfig keys \['output_dim'\]"),
        (
            {"name": "mlp", "input_shape": [3], "output_dim": 1, "hidden": 0},
            r"hidden must be a positive integer, got 0",
        ),
        (
            {"name": "tcn", "input_shape": [3], "output_dim": 1},
            r"tcn expects input_shape of length 2 \(channels, length\), got \(3,\)",
        ),
        (
            {"name": "mlp", "input_shape": [3, 10], "output_dim": 1},
            r"mlp expects input_shape of length 1 \(features\)",
        ),
        (
            {"name": "cnn1d", "input_shape": [3, 4], "output_dim": 1, "depth": 3},
            r"cnn1d .* needs length >= 8, got 4",
        ),
        (
            {"name": "cnn1d", "input_shape": [1, 32], "output_dim": 1, "depth": 3, "stem_stride": 8},
            r"cnn1d divides the length by stem_stride \(8\) .* needs length >= 64, got 32",
        ),
        (
            {"name": "tcn", "input_shape": [3, 12], "output_dim": 1, "stem_stride": 2},
            r"stem_stride applies to cnn1d only",
        ),
        (  # found by tests/fuzz (a damaged manifest): 2**depth was computed, which takes forever at this depth
            {"name": "cnn1d", "input_shape": [3, 64], "output_dim": 1, "depth": 2**63},
            r"needs length >= 1 x 2\^9223372036854775808, got 64",
        ),
    ],
    ids=[
        "unknown-name",
        "unknown-key",
        "missing-key",
        "non-positive-hidden",
        "short-input-shape",
        "long-input-shape",
        "too-short-for-pooling",
        "too-short-for-stem-stride",
        "stem-stride-not-cnn1d",
        "depth-past-the-length",
    ],
)
def test_invalid_config_raises_value_error_naming_the_problem(
    mapping: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(mapping)


def test_strided_stem_shortens_the_window_and_batches_over_tasks() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig("cnn1d", (1, 256), 4, hidden=8, depth=2, stem_stride=8))
    stem = model.body[0].conv
    assert stem.stride == (8,) and stem.kernel_size == (32,)
    assert model.body(torch.randn(BATCH, 1, 256)).shape == (BATCH, 8, 256 // 8 // 2 // 2)
    params = perturbed_copies(dict(model.named_parameters()))
    x = torch.randn(TASKS, BATCH, 1, 256)
    torch.testing.assert_close(
        functional_call(model, params, (x,)), loop_over_tasks(model, params, list(params), x), atol=1e-5, rtol=1e-5
    )


def _output_gradient_norm(model: MetaModel, x: Tensor) -> float:
    """|d output / d parameters|^2 of one window: the curvature of its squared error, so 1/it bounds
    the step size at which gradient descent on that window alone stays stable."""
    params = dict(model.named_parameters())
    output = functional_call(model, params, (x[None],))[0, 0]
    return float(sum(g.square().sum() for g in torch.autograd.grad(output, list(params.values()))))


def test_tcn_output_gradient_norm_stays_bounded_however_far_the_sensors_move() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig("tcn", (14, 30), 1, hidden=32, depth=4, kernel_size=5))
    window = torch.randn(14, 30)
    norms = [_output_gradient_norm(model, scale * window) for scale in (0.5, 1.0, 4.0, 16.0)]
    # Head: |features|^2 = 1 and the bias 1; through the normalisation the body adds a bounded share.
    assert all(2.0 <= norm < 10.0 for norm in norms), norms
