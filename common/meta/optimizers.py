"""SGD, SGD with momentum and Adam, stepped as torch.optim steps them on the CPU, without torch.optim.

torch.optim's first step imports ``torch._dynamo`` (``_use_grad_for_differentiable`` in
``torch/optim/optimizer.py``, torch 2.13): 1.2 s and about 100 MB in every process that trains, which is
each simulation actor and each factory's app process (one a message with ``--isolation subprocess``),
and its walk of ``sys.modules`` imports any lazy module there. The updates here are torch's
single-tensor ones (those it runs on the CPU), operation for operation, with its defaults (no weight
decay, no dampening, Adam's epsilon 1e-8) and its state names and layout (per parameter, by its
position over the groups; Adam's ``step`` a scalar tensor on the CPU), so a checkpoint's optimizer state
reads as before. ``tests/common/meta/test_optimizers.py`` holds each to torch.optim's results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["OPTIMIZER_KINDS", "STATE_KEYS", "GroupedOptimizer"]

OPTIMIZER_KINDS = ("sgd", "momentum", "adam")
# Per-parameter state each kind keeps once the parameter has had a gradient.
STATE_KEYS = {
    "sgd": frozenset(),
    "momentum": frozenset({"momentum_buffer"}),
    "adam": frozenset({"step", "exp_avg", "exp_avg_sq"}),
}


class GroupedOptimizer:
    """One kind of update over groups of parameters, each group at its own rate."""

    def __init__(self, kind: str, groups: Sequence[tuple[Sequence[Tensor], float]], *, momentum: float = 0.9,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in OPTIMIZER_KINDS:
            raise ValueError(f"optimizer kind must be one of {OPTIMIZER_KINDS}, got {kind!r}")
        self.kind, self.momentum, self.betas, self.eps = kind, momentum, betas, eps
        self.groups = [(list(params), float(lr)) for params, lr in groups]
        self.state: dict[int, dict[str, Tensor]] = {}  # by position over all groups, as torch.optim's state_dict

    @property
    def params(self) -> list[Tensor]:
        return [param for params, _ in self.groups for param in params]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the others, and their state, stay as they are)."""
        position = 0
        for params, lr in self.groups:
            for param in params:
                if param.grad is not None:
                    self._update(param, param.grad, position, lr)
                position += 1

    def load_state(self, state: Mapping[int, Mapping[str, Tensor]]) -> None:
        """Per-position state as `state` holds it, moved to its parameter's device and dtype (``step`` stays)."""
        params = self.params
        self.state = {
            position: {key: value if key == "step" else value.to(params[position]) for key, value in entry.items()}
            for position, entry in state.items()
        }

    def _update(self, param: Tensor, grad: Tensor, position: int, lr: float) -> None:
        if self.kind == "sgd":
            param.add_(grad, alpha=-lr)
        elif self.kind == "momentum":
            state = self.state.setdefault(position, {})
            buffer = state.get("momentum_buffer")
            if buffer is None:
                state["momentum_buffer"] = buffer = grad.detach().clone()
            else:
                buffer.mul_(self.momentum).add_(grad)
            param.add_(buffer, alpha=-lr)
        else:
            self._adam(param, grad, self.state.setdefault(position, {}), lr)

    def _adam(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], lr: float) -> None:
        if not state:
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=scalar)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"].item()
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1**step)))
