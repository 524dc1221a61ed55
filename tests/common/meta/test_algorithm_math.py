"""Every algorithm's meta-gradient against finite differences, a closed form or a
hand-written per-task reference, in float64 on tiny problems.

The inner loop takes back a step that raises a task's support loss and halves that
task's step size. Each check runs with a step size at which every step is kept and with
one at which some are taken back, so the gradient through the safeguard is checked too.
"""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import MetaConfig, init_inner_lrs, meta_step, meta_train
from tests.support.meta_reference import (
    FixedSampler,
    LinearModel,
    TinyNet,
    adapt_one_task,
    fomaml_gradient,
    leaf_params,
    maml_meta_loss,
    mse,
    random_batch,
    taken_back_steps,
)

STEPS, LR = 3, 0.1
# Inner step sizes: 0.1 keeps every step of these problems; at 1.0 about a third are taken back.
STEP_SIZES = pytest.mark.parametrize("lr", [0.1, 1.0], ids=["every-step-kept", "steps-taken-back"])


def _expect_safeguard(model, params, batch, lr, steps: int = STEPS, names=None, rates=None) -> None:
    """The case is what its id says: no step taken back at 0.1, some at 1.0 (``rates``: Meta-SGD's, near lr)."""
    taken_back = taken_back_steps(model, params, batch, steps, lr if rates is None else rates, names)
    assert (taken_back > 0) == (lr >= 1.0), taken_back


def _meta_gradient(model, params, batch, config, inner_lrs=None):
    inner_lrs = inner_lrs or {}
    meta_step(model, params, inner_lrs, batch, config)
    return {n: p.grad.clone() for n, p in params.items()}, {
        n: p.grad.clone() for n, p in inner_lrs.items()
    }


def _assert_close(actual: dict, expected: dict, **tolerances) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        torch.testing.assert_close(actual[name], expected[name], **tolerances, msg=name)


@STEP_SIZES
def test_second_order_maml_gradient_matches_finite_differences(lr):
    torch.manual_seed(0)
    model, batch = TinyNet(), random_batch(tasks=2, shots=5, queries=6, inputs=3)
    params = leaf_params(model)
    _expect_safeguard(model, params, batch, lr)
    grads, _ = _meta_gradient(
        model, params, batch, MetaConfig("maml", inner_steps=STEPS, inner_lr=lr)
    )

    eps = 1e-6
    flat_checked = 0
    for name, p in params.items():
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            shifted = {n: q.detach().clone() for n, q in params.items()}
            values = []
            for sign in (1, -1):
                shifted[name].view(-1)[i] = p.detach().view(-1)[i] + sign * eps
                probe = {n: q.clone().requires_grad_() for n, q in shifted.items()}
                values.append(maml_meta_loss(model, probe, batch, STEPS, lr).item())
            numeric.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
            flat_checked += 1
        torch.testing.assert_close(grads[name], numeric, rtol=1e-5, atol=1e-7, msg=name)
    assert flat_checked == sum(p.numel() for p in params.values())


def test_second_order_maml_gradient_matches_closed_form_for_linear_regression():
    torch.manual_seed(1)
    d, alpha = 4, 0.05
    model, batch = LinearModel(d), random_batch(tasks=3, shots=7, queries=9, inputs=d, seed=3)
    params = leaf_params(model)
    grads, _ = _meta_gradient(
        model, params, batch, MetaConfig("maml", inner_steps=1, inner_lr=alpha)
    )

    w = params["head.weight"].detach().reshape(d)
    expected = torch.zeros(d, dtype=torch.float64)
    for t in range(batch.num_tasks):
        xs, ys, xq, yq = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        n, m = len(ys), len(yq)
        contraction = torch.eye(d, dtype=torch.float64) - alpha * 2 / n * xs.T @ xs
        adapted = contraction @ w + alpha * 2 / n * xs.T @ ys
        expected += contraction.T @ (2 / m * xq.T @ (xq @ adapted - yq)) / batch.num_tasks
    torch.testing.assert_close(grads["head.weight"].reshape(d), expected)


@STEP_SIZES
def test_second_order_maml_matches_per_task_reference(lr):
    model, batch = TinyNet(), random_batch(tasks=4, shots=5, queries=5, inputs=3, seed=4)
    params = leaf_params(model)
    _expect_safeguard(model, params, batch, lr)
    grads, _ = _meta_gradient(
        model, params, batch, MetaConfig("maml", inner_steps=STEPS, inner_lr=lr)
    )
    reference = leaf_params(model)
    expected = torch.autograd.grad(
        maml_meta_loss(model, reference, batch, STEPS, lr), list(reference.values())
    )
    _assert_close(grads, dict(zip(reference, expected, strict=True)))


@STEP_SIZES
def test_first_order_maml_equals_query_gradient_at_adapted_parameters(lr):
    model, batch = TinyNet(), random_batch(tasks=4, shots=5, queries=5, inputs=3, seed=5)
    params = leaf_params(model)
    _expect_safeguard(model, params, batch, lr)
    grads, _ = _meta_gradient(
        model, params, batch, MetaConfig("fomaml", inner_steps=STEPS, inner_lr=lr)
    )
    _assert_close(grads, fomaml_gradient(model, leaf_params(model), batch, STEPS, lr))


def test_first_order_maml_differs_from_second_order():
    model, batch = TinyNet(), random_batch(tasks=2, shots=5, queries=5, inputs=3, seed=6)
    first, _ = _meta_gradient(
        model, leaf_params(model), batch, MetaConfig("fomaml", inner_steps=STEPS, inner_lr=LR)
    )
    second, _ = _meta_gradient(
        model, leaf_params(model), batch, MetaConfig("maml", inner_steps=STEPS, inner_lr=LR)
    )
    assert not torch.allclose(first["body.0.weight"], second["body.0.weight"])


def test_reptile_with_one_task_equals_plain_sgd_steps():
    model, batch = TinyNet(), random_batch(tasks=1, shots=8, queries=4, inputs=3, seed=7)
    config = MetaConfig(
        "reptile",
        inner_steps=4,
        inner_lr=LR,
        outer_optimizer="sgd",
        outer_lr=1.0,
        meta_batch_size=1,
    )
    start = leaf_params(model)
    result = meta_train(model, start, FixedSampler(batch), config, device="cpu")

    reference = TinyNet()
    reference.load_state_dict({n: p.detach().float() for n, p in start.items()})
    reference.double()
    sgd = torch.optim.SGD(reference.parameters(), lr=LR)
    for _ in range(config.inner_steps):
        sgd.zero_grad()
        (reference(batch.support_x[0]).squeeze(-1) - batch.support_y[0]).pow(2).mean().backward()
        sgd.step()
    _assert_close(result.weights, {n: p.detach() for n, p in reference.named_parameters()})


@STEP_SIZES
def test_reptile_averages_task_adaptations_with_outer_step_size(lr):
    model, batch = TinyNet(), random_batch(tasks=3, shots=6, queries=4, inputs=3, seed=8)
    _expect_safeguard(model, leaf_params(model), batch, lr, steps=2)
    epsilon = 0.3
    config = MetaConfig(
        "reptile",
        inner_steps=2,
        inner_lr=lr,
        outer_optimizer="sgd",
        outer_lr=epsilon,
        meta_batch_size=3,
    )
    start = leaf_params(model)
    result = meta_train(model, start, FixedSampler(batch), config, device="cpu")
    adapted = [
        adapt_one_task(
            model, start, batch.support_x[t], batch.support_y[t], 2, lr, list(start), False
        )
        for t in range(3)
    ]
    expected = {
        n: start[n].detach()
        + epsilon * (torch.stack([a[n].detach() for a in adapted]).mean(0) - start[n].detach())
        for n in start
    }
    _assert_close(result.weights, expected)


def test_metasgd_with_equal_learning_rates_matches_maml():
    model, batch = TinyNet(), random_batch(tasks=3, shots=5, queries=5, inputs=3, seed=9)
    maml, _ = _meta_gradient(
        model, leaf_params(model), batch, MetaConfig("maml", inner_steps=STEPS, inner_lr=LR)
    )
    params = leaf_params(model)
    lrs = {n: t.requires_grad_() for n, t in init_inner_lrs(params, LR).items()}
    metasgd, lr_grads = _meta_gradient(
        model, params, batch, MetaConfig("metasgd", inner_steps=STEPS, inner_lr=LR), lrs
    )
    _assert_close(metasgd, maml)
    assert all(g.abs().sum() > 0 for g in lr_grads.values())


@STEP_SIZES
def test_metasgd_learning_rate_gradient_matches_per_task_reference(lr):
    model, batch = TinyNet(), random_batch(tasks=2, shots=5, queries=5, inputs=3, seed=10)
    params = leaf_params(model)
    generator = torch.Generator().manual_seed(0)
    lrs = {  # per entry, between half and one and a half times lr
        n: (lr * (0.5 + torch.rand(p.shape, generator=generator, dtype=torch.float64))).requires_grad_()
        for n, p in params.items()
    }
    _expect_safeguard(model, params, batch, lr, steps=2, rates={n: r.detach() for n, r in lrs.items()})
    grads, lr_grads = _meta_gradient(
        model, params, batch, MetaConfig("metasgd", inner_steps=2), lrs
    )

    ref_params = leaf_params(model)
    ref_lrs = {n: t.detach().clone().requires_grad_() for n, t in lrs.items()}
    loss = maml_meta_loss(model, ref_params, batch, 2, ref_lrs)
    expected = torch.autograd.grad(loss, [*ref_params.values(), *ref_lrs.values()])
    _assert_close(grads, dict(zip(ref_params, expected[: len(ref_params)], strict=True)))
    _assert_close(lr_grads, dict(zip(ref_lrs, expected[len(ref_params) :], strict=True)))


@STEP_SIZES
def test_anil_adapts_only_the_head_and_matches_per_task_reference(lr):
    model, batch = TinyNet(), random_batch(tasks=3, shots=5, queries=5, inputs=3, seed=11)
    params = leaf_params(model)
    _expect_safeguard(model, params, batch, lr, names=model.head_parameter_names())
    grads, _ = _meta_gradient(
        model, params, batch, MetaConfig("anil", inner_steps=STEPS, inner_lr=lr)
    )
    reference = leaf_params(model)
    loss = maml_meta_loss(model, reference, batch, STEPS, lr, names=model.head_parameter_names())
    expected = torch.autograd.grad(loss, list(reference.values()))
    _assert_close(grads, dict(zip(reference, expected, strict=True)))


def test_pretrain_gradient_is_plain_loss_gradient_on_all_task_data():
    model, batch = TinyNet(), random_batch(tasks=3, shots=5, queries=4, inputs=3, seed=12)
    grads, _ = _meta_gradient(model, leaf_params(model), batch, MetaConfig("pretrain"))
    reference = leaf_params(model)
    x = torch.cat([batch.support_x, batch.query_x], dim=1).reshape(-1, 3)
    y = torch.cat([batch.support_y, batch.query_y], dim=1).reshape(-1)
    expected = torch.autograd.grad(mse(model, reference, x, y), list(reference.values()))
    _assert_close(grads, dict(zip(reference, expected, strict=True)))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "anil"])
def test_meta_train_applies_outer_sgd_to_the_meta_gradient(algorithm):
    model, batch = TinyNet(), random_batch(tasks=2, shots=5, queries=5, inputs=3, seed=13)
    config = MetaConfig(
        algorithm,
        inner_steps=2,
        inner_lr=LR,
        outer_optimizer="sgd",
        outer_lr=0.5,
        meta_batch_size=2,
    )
    params = leaf_params(model)
    lrs = (
        {n: t.requires_grad_() for n, t in init_inner_lrs(params, LR).items()}
        if algorithm == "metasgd"
        else {}
    )
    grads, lr_grads = _meta_gradient(model, params, batch, config, lrs)
    start = leaf_params(model)
    result = meta_train(model, start, FixedSampler(batch), config, device="cpu")
    _assert_close(result.weights, {n: start[n].detach() - 0.5 * grads[n] for n in start})
    if algorithm == "metasgd":
        _assert_close(result.inner_lrs, {n: LR - 0.5 * g for n, g in lr_grads.items()})
    for name, tensor in start.items():  # the caller's parameters are untouched
        torch.testing.assert_close(tensor.detach(), params[name].detach())


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "anil"])
@pytest.mark.parametrize("tasks_per_pass", [1, 2, 3])
def test_second_order_steps_in_parts_give_the_whole_batchs_gradient_and_losses(algorithm, tasks_per_pass):
    """``tasks_per_pass`` bounds memory only: 5 tasks in parts of 1, 2 or 3 (the last part shorter) give the
    meta-gradient (Meta-SGD's step-size gradient too) and the step's losses of the whole batch at once."""
    model, batch = TinyNet(), random_batch(tasks=5, shots=5, queries=5, inputs=3, seed=12)
    outcomes = []
    for parts in (0, tasks_per_pass):
        params = leaf_params(model)
        rates = {n: r.requires_grad_() for n, r in init_inner_lrs(params, LR).items()} if algorithm == "metasgd" \
            else {}
        config = MetaConfig(algorithm, inner_steps=STEPS, inner_lr=LR, tasks_per_pass=parts)
        losses = meta_step(model, params, rates, batch, config)
        outcomes.append(({n: p.grad for n, p in params.items()}, {n: r.grad for n, r in rates.items()}, losses))
    (whole_grads, whole_rates, whole), (part_grads, part_rates, parted) = outcomes
    _assert_close(part_grads, whole_grads)
    _assert_close(part_rates, whole_rates)
    torch.testing.assert_close(parted.support, whole.support)
    torch.testing.assert_close(parted.query, whole.query)
    assert all(g.abs().sum() > 0 for g in part_grads.values())


def test_a_negative_or_fractional_tasks_per_pass_is_refused_by_name():
    for value in (-1, 1.5, True):
        with pytest.raises(ValueError, match="tasks_per_pass must be a whole number >= 0"):
            MetaConfig("maml", tasks_per_pass=value)
