"""Hand-written references the algorithm tests compare against.

Deliberately naive: one task at a time, plain `torch.autograd.grad`, no batching,
no foreach ops, so that they share no code with `common.meta.inner_loop` beyond the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.common import TaskBatch, TaskLinear


class TinyNet(nn.Module):
    """A smooth (tanh) two-layer net, so finite differences are well behaved."""

    def __init__(self, inputs: int = 3, hidden: int = 4, outputs: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(TaskLinear(inputs, hidden), nn.Tanh())
        self.head = TaskLinear(hidden, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def head_parameter_names(self) -> list[str]:
        return ["head.weight", "head.bias"]


class LinearModel(nn.Module):
    """``f(x) = w . x``: MAML on it has a closed-form meta-gradient."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.body = nn.Identity()
        self.head = TaskLinear(inputs, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)

    def head_parameter_names(self) -> list[str]:
        return ["head.weight"]


class FixedSampler:
    """Returns the same batch every time: lets tests pin the tasks."""

    def __init__(self, batch: TaskBatch) -> None:
        self.batch = batch

    def sample(self, num_tasks: int) -> TaskBatch:
        assert num_tasks == self.batch.num_tasks
        return self.batch


def random_batch(tasks: int, shots: int, queries: int, inputs: int, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        support_x=torch.randn(tasks, shots, inputs, generator=g, dtype=torch.float64),
        support_y=torch.randn(tasks, shots, generator=g, dtype=torch.float64),
        query_x=torch.randn(tasks, queries, inputs, generator=g, dtype=torch.float64),
        query_y=torch.randn(tasks, queries, generator=g, dtype=torch.float64),
    )


def mse(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    return (functional_call(model, params, (x,)).squeeze(-1) - y).pow(2).mean()


def adapt_one_task(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float | dict[str, Tensor],
    names: list[str],
    create_graph: bool,
    taken_back: list[int] | None = None,
) -> dict[str, Tensor]:
    """Gradient steps with the inner loop's safeguard: a step that raises the loss is not
    taken, and the step size is halved for the steps left (``taken_back`` counts them)."""
    fast, scale = dict(params), 1.0
    for _ in range(steps):
        loss = mse(model, fast, x, y)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=create_graph)
        tried = dict(fast)
        for n, g in zip(names, grads, strict=True):
            step = lr[n] if isinstance(lr, dict) else lr
            tried[n] = fast[n] - scale * step * g
            if not create_graph:
                tried[n] = tried[n].detach().requires_grad_()
        if mse(model, tried, x, y) <= loss:
            fast = tried
        else:
            scale /= 2
            if taken_back is not None:
                taken_back.append(1)
    return fast


def taken_back_steps(
    model: nn.Module,
    params: dict[str, Tensor],
    batch: TaskBatch,
    steps: int,
    lr: float | dict[str, Tensor],
    names: list[str] | None = None,
) -> int:
    """How many inner steps the safeguard takes back over the batch's tasks."""
    taken_back: list[int] = []
    start = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    names = list(params) if names is None else names
    for t in range(batch.num_tasks):
        adapt_one_task(model, start, batch.support_x[t], batch.support_y[t], steps, lr, names, False, taken_back)
    return len(taken_back)


def maml_meta_loss(
    model: nn.Module,
    params: dict[str, Tensor],
    batch: TaskBatch,
    steps: int,
    lr: float | dict[str, Tensor],
    names: list[str] | None = None,
) -> Tensor:
    """Mean query loss after adaptation, differentiable through the inner loop."""
    names = list(params) if names is None else names
    losses = []
    for t in range(batch.num_tasks):
        fast = adapt_one_task(
            model, params, batch.support_x[t], batch.support_y[t], steps, lr, names, True
        )
        losses.append(mse(model, fast, batch.query_x[t], batch.query_y[t]))
    return torch.stack(losses).mean()


def fomaml_gradient(
    model: nn.Module, params: dict[str, Tensor], batch: TaskBatch, steps: int, lr: float
) -> dict[str, Tensor]:
    """Mean over tasks of the query gradient at the adapted parameters."""
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    start = {n: p.detach().requires_grad_() for n, p in params.items()}
    for t in range(batch.num_tasks):
        fast = adapt_one_task(
            model, start, batch.support_x[t], batch.support_y[t], steps, lr, list(params), False
        )
        grads = torch.autograd.grad(
            mse(model, fast, batch.query_x[t], batch.query_y[t]), list(fast.values())
        )
        for n, g in zip(fast, grads, strict=True):
            total[n] += g / batch.num_tasks
    return total


def leaf_params(model: nn.Module, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    return {n: p.detach().to(dtype).clone().requires_grad_() for n, p in model.named_parameters()}
