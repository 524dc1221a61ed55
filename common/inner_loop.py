"""The functional inner loop every algorithm shares.

All tasks of a meta-batch adapt at once: the parameters being adapted get a leading
task dimension (an `expand`, no copy) and the model runs once per inner step on the
stacked task data through `torch.func.functional_call` (see `common.layers`). Because
each task's loss depends only on its own slice, one backward pass of the summed
per-task losses yields every task's gradient.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.common.losses import task_losses

__all__ = ["Params", "adapt", "expand_for_tasks", "predict"]

Params = dict[str, Tensor]


def expand_for_tasks(
    params: Mapping[str, Tensor], names: Collection[str], num_tasks: int
) -> Params:
    """Give each of ``num_tasks`` tasks its own view of the named parameters.

    Gradients flowing into the views sum back into the shared parameter, which is
    exactly the meta-gradient's sum over tasks.
    """
    return {n: p.expand(num_tasks, *p.shape) if n in names else p for n, p in params.items()}


def predict(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run ``model`` with ``params`` in place of its own parameters."""
    return functional_call(model, dict(params), (x,))


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    kind: str,
    steps: int,
    lr: float | Mapping[str, Tensor],
    adapt_names: Collection[str],
    create_graph: bool,
) -> tuple[Params, Tensor]:
    """Take ``steps`` gradient steps on each task's ``(x, y)``.

    ``params`` holds task-batched tensors for ``adapt_names`` and shared ones for the
    rest; ``lr`` is one step size or, for Meta-SGD, a tensor per adapted parameter.
    With ``create_graph`` the result stays differentiable with respect to the
    starting parameters and learning rates (second-order MAML); without it each step
    is cut from the graph (first-order MAML, Reptile, fine-tuning).

    Returns the adapted parameters and the mean support loss before each step
    (shape ``[steps]``, detached) for metrics and finiteness checks.
    """
    fast = dict(params)
    names = [n for n in fast if n in adapt_names]
    step_losses = []
    for _ in range(steps):
        losses = task_losses(predict(model, fast, x), y, kind)
        current = [fast[n] for n in names]
        grads = torch.autograd.grad(losses.sum(), current, create_graph=create_graph)
        with torch.set_grad_enabled(create_graph):
            if isinstance(lr, Mapping):
                updated = torch._foreach_sub(
                    current, torch._foreach_mul(grads, [lr[n] for n in names])
                )
            else:
                updated = torch._foreach_add(current, grads, alpha=-lr)
        if not create_graph:
            for tensor in updated:
                tensor.requires_grad_()
        fast.update(zip(names, updated, strict=True))
        step_losses.append(losses.detach().mean())
    return fast, torch.stack(step_losses)
