"""Layers that run a whole meta-batch of tasks in one call.

Meta-learning adapts one copy of the parameters per task. Looping over tasks (or
`torch.func.vmap`) pays PyTorch's per-operator overhead once per task; these layers
instead accept *task-batched* parameters, a leading task dimension ``T`` on every
weight, and compute all tasks with one batched kernel (``baddbmm`` or a grouped
convolution). With ordinary 2-D/3-D weights they behave exactly like their
``torch.nn`` parents, so the same module serves plain training, evaluation and
`torch.func.functional_call` with stacked per-task parameters.

Convention: when a layer's weight carries a task dimension, its input carries the
same leading dimension: ``[T, N, features]`` for linear layers and
``[T, N, channels, length]`` for convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TaskConv1d", "TaskLinear"]


class TaskLinear(nn.Linear):
    """`nn.Linear` that also takes weights of shape ``[T, out, in]``."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if weight.dim() == 2:
            return F.linear(x, weight, bias)
        tasks, out_features, in_features = weight.shape
        leading = x.shape[1:-1]
        flat = x.reshape(tasks, -1, in_features)
        if bias is None:
            y = torch.bmm(flat, weight.transpose(1, 2))
        else:
            y = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
        return y.reshape(tasks, *leading, out_features)


class TaskConv1d(nn.Conv1d):
    """`nn.Conv1d` that also takes weights of shape ``[T, out, in, kernel]``.

    The task dimension is folded into the channel dimension and computed as one
    grouped convolution with ``groups = T * self.groups``.
    """

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if weight.dim() == 3:
            # Shared weights on task-batched input (ANIL's body): fold tasks into the batch.
            y = self._conv_forward(x.flatten(0, -3), weight, bias)
            return y.unflatten(0, x.shape[:-2])
        if self.padding_mode != "zeros":
            raise ValueError(
                "TaskConv1d supports task-batched weights only with padding_mode='zeros'"
            )
        if x.dim() != 4:
            raise ValueError(
                f"task-batched conv weights need input [T, N, C, L], got shape {tuple(x.shape)}"
            )
        tasks, out_channels = weight.shape[:2]
        _, n, channels, length = x.shape
        folded = x.permute(1, 0, 2, 3).reshape(n, tasks * channels, length)
        y = F.conv1d(
            folded,
            weight.reshape(tasks * out_channels, *weight.shape[2:]),
            None if bias is None else bias.reshape(tasks * out_channels),
            self.stride,
            self.padding,
            self.dilation,
            tasks * self.groups,
        )
        return y.reshape(n, tasks, out_channels, -1).permute(1, 0, 2, 3)
