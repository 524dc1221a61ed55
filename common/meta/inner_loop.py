"""The functional inner loop every algorithm shares.

All tasks of a meta-batch adapt at once: the parameters being adapted get a leading
task dimension (an `expand`, no copy) and the model runs once per inner step on the
stacked task data through `torch.func.functional_call` (see `common.meta.layers`). Because
each task's loss depends only on its own slice, one backward pass of the summed
per-task losses yields every task's gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.common.meta.losses import task_losses

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


def _per_task(values: Tensor, like: Tensor) -> Tensor:
    """``values`` (one per task) shaped to broadcast over ``like``'s per-task slices."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _gradient_step(
    current: list[Tensor], grads: list[Tensor], names: list[str], lr: float | Mapping[str, Tensor],
    scale: Tensor | None,
) -> list[Tensor]:
    """``current - lr * grads``, each task's step shrunk by its ``scale`` (None: every task at full size)."""
    if scale is None and not isinstance(lr, Mapping):
        return torch._foreach_add(current, grads, alpha=-lr)
    sizes = [lr[n] if isinstance(lr, Mapping) else lr for n in names]
    if scale is not None:
        sizes = [_per_task(scale, p) * size for p, size in zip(current, sizes, strict=True)]
    return torch._foreach_sub(current, torch._foreach_mul(grads, sizes))


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
    after_step: Callable[[int, Params], None] | None = None,
) -> tuple[Params, Tensor]:
    """Take ``steps`` gradient steps on each task's ``(x, y)``, never raising a task's support loss.

    ``params`` holds task-batched tensors for ``adapt_names`` and shared ones for the
    rest; ``lr`` is one step size or, for Meta-SGD, a tensor per adapted parameter.
    With ``create_graph`` the result stays differentiable with respect to the
    starting parameters and learning rates (second-order MAML); without it each step
    is cut from the graph (first-order MAML, Reptile, fine-tuning).

    The safeguard: a step after which a task's support loss is higher than before (or
    not finite) is taken back for that task, and that task's step size is halved for
    the steps left. A step size too large for a task's curvature (a steep task, or an
    initialisation that meta-training drove into a sharp region) therefore shrinks
    instead of blowing the loss up step after step; where every step lowers the loss,
    nothing changes. It costs one forward pass more than plain gradient descent (the
    last step's check; the next step's gradient comes from the same forward pass as
    each check) and one boolean read per step (a device sync on a GPU): while no step
    is taken back, the update is the plain fused one. Taken-back steps are selected per
    task with `torch.where`, so the result stays differentiable through the kept steps.

    ``after_step(n, params)``, if given, sees the parameters after each step n = 1..steps
    (a trajectory scored at several step counts in one run).

    Returns the adapted parameters and the mean support loss before each step
    (shape ``[steps]``, detached) for metrics and finiteness checks.
    """
    fast = dict(params)
    if steps == 0:
        return fast, x.new_zeros(0)
    names = [n for n in fast if n in adapt_names]
    losses = task_losses(predict(model, fast, x), y, kind)
    grads = torch.autograd.grad(losses.sum(), [fast[n] for n in names], create_graph=create_graph)
    scale = None  # until a step is taken back, every task steps at full size (the plain, fused update)
    step_losses = []
    for step in range(steps):
        step_losses.append(losses.detach().mean())
        current = [fast[n] for n in names]
        with torch.set_grad_enabled(create_graph):
            candidate = _gradient_step(current, grads, names, lr, scale)
        if not create_graph:
            for tensor in candidate:
                tensor.requires_grad_()
        tried = task_losses(predict(model, {**fast, **dict(zip(names, candidate, strict=True))}, x), y, kind)
        last = step + 1 == steps
        # The gradient where each step lands, for the next step (none is needed after the last).
        tried_grads = [] if last else list(torch.autograd.grad(tried.sum(), candidate, create_graph=create_graph))
        worse = ~(tried.detach() <= losses.detach())  # NaN compares False: a non-finite loss is worse
        if not bool(worse.any()):
            fast.update(zip(names, candidate, strict=True))
            losses, grads = tried, tried_grads
            if after_step is not None:
                after_step(step + 1, fast)
            continue
        kept = [torch.where(_per_task(worse, new), old, new) for old, new in zip(current, candidate, strict=True)]
        fast.update(zip(names, kept, strict=True))
        if not last:
            grads = [torch.where(_per_task(worse, g), old, g) for old, g in zip(grads, tried_grads, strict=True)]
        losses = torch.where(worse, losses, tried)
        halved = torch.where(worse, 0.5, 1.0).to(losses.dtype)
        scale = halved if scale is None else scale * halved
        if after_step is not None:
            after_step(step + 1, fast)
    return fast, torch.stack(step_losses)
