"""The inner loop's safeguard: a step that raises a task's support loss is taken back, per task."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from fedmeta.common import adapt, expand_for_tasks
from tests.support.meta_reference import LinearModel, adapt_one_task, leaf_params, mse

STEPS, LR = 6, 0.5


def _two_tasks() -> tuple[torch.Tensor, torch.Tensor]:
    """Task 0 is gentle (inputs ~0.3), task 1 steep (inputs ~5): one step size cannot suit both."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 3, generator=generator, dtype=torch.float64) * torch.tensor([0.3, 5.0]).view(2, 1, 1)
    return x, torch.randn(2, 8, generator=generator, dtype=torch.float64)


def _adapt(steps: int, create_graph: bool = False):
    torch.manual_seed(0)  # the same start for every call
    model = LinearModel(3)
    params = leaf_params(model)
    x, y = _two_tasks()
    fast, support = adapt(model, expand_for_tasks(params, params.keys(), 2), x, y, kind="regression",
                          steps=steps, lr=LR, adapt_names=params.keys(), create_graph=create_graph)
    return model, params, x, y, fast, support


def _task_loss(model, weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(mse(model, {"head.weight": weight.detach()}, x, y))


@pytest.mark.parametrize("create_graph", [False, True], ids=["first-order", "second-order"])
def test_each_task_adapts_as_the_per_task_reference_with_its_own_take_backs(create_graph):
    model, params, x, y, fast, _ = _adapt(STEPS, create_graph)
    for task in range(2):
        taken_back: list[int] = []
        expected = adapt_one_task(model, params, x[task], y[task], STEPS, LR, list(params), create_graph, taken_back)
        torch.testing.assert_close(fast["head.weight"][task], expected["head.weight"], msg=f"task {task}")
        assert bool(taken_back) == (task == 1), f"task {task}: {len(taken_back)} steps taken back"


def test_a_task_whose_steps_all_lower_its_loss_takes_plain_gradient_steps():
    model, params, x, y, fast, _ = _adapt(STEPS)
    weight = params["head.weight"].detach()
    for _ in range(STEPS):
        probe = weight.clone().requires_grad_()
        (grad,) = torch.autograd.grad(mse(model, {"head.weight": probe}, x[0], y[0]), probe)
        weight = weight - LR * grad
    torch.testing.assert_close(fast["head.weight"][0].detach(), weight)


def test_the_steep_tasks_support_loss_never_rises_where_plain_steps_diverge():
    model, params, x, y, _, _ = _adapt(0)
    start = params["head.weight"].detach()
    probe = start.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mse(model, {"head.weight": probe}, x[1], y[1]), probe)
    plain = _task_loss(model, start - LR * grad, x[1], y[1])
    losses = [_task_loss(model, _adapt(k)[4]["head.weight"][1], x[1], y[1]) for k in range(STEPS + 1)]
    assert plain > 100 * losses[0], "one plain step must blow this task's loss up, or the test proves nothing"
    assert all(later <= earlier for earlier, later in pairwise(losses)), losses
    assert losses[-1] < losses[0], losses


def test_after_step_sees_the_parameters_of_every_step_count():
    """One run scored along its way equals separate runs of 1..steps steps (what recipe selection relies on)."""
    torch.manual_seed(0)
    model = LinearModel(3)
    params = leaf_params(model)
    x, y = _two_tasks()
    seen = {}
    adapt(model, expand_for_tasks(params, params.keys(), 2), x, y, kind="regression", steps=STEPS, lr=LR,
          adapt_names=params.keys(), create_graph=False,
          after_step=lambda n, fast: seen.update({n: fast["head.weight"].detach().clone()}))
    assert list(seen) == list(range(1, STEPS + 1))
    for steps in (1, 3, STEPS):
        _, _, _, _, fast, _ = _adapt(steps)
        torch.testing.assert_close(seen[steps], fast["head.weight"].detach())


def test_the_safeguard_on_a_parabola_worked_by_hand():
    """Loss w^2 (one row x = 1, y = 0; gradient 2w) from w = 1 at step size 1.5, worked without the reference
    (which shares the rule it checks): step 1 would land on -2 (loss 4 > 1), so it is taken back and the size
    halves to 0.75; step 2 lands on 1 - 0.75 * 2 = -0.5 (loss 0.25); step 3 on -0.5 + 0.75 = 0.25."""
    model = LinearModel(1)
    params = {"head.weight": torch.ones(1, 1, dtype=torch.float64, requires_grad=True)}
    x, y = torch.ones(1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    seen = {}
    adapt(model, expand_for_tasks(params, params.keys(), 1), x, y, kind="regression", steps=3, lr=1.5,
          adapt_names=params.keys(), create_graph=False,
          after_step=lambda n, fast: seen.update({n: float(fast["head.weight"].detach().reshape(-1)[0])}))
    assert seen == {1: 1.0, 2: -0.5, 3: 0.25}
