"""What an attacking factory sends in place of its honest delta: the math of the harness's attacks
(`simulations.faults`), free of Flower so that the benchmarks' plain loop runs the same attacks.

Every attack stays inside the server's checks (finite, the right shapes, within ``max-delta-norm``):
robust aggregation (`server.strategy.aggregation`) is the defence.

- ``sign-flip``: the honest delta reversed;
- ``scaled``: the honest delta stretched to just inside the norm bound;
- ``noise``: Gaussian noise just inside the norm bound;
- ``claim``: the honest delta with `CLAIM_FACTOR` times the examples the factory has.

One attack poisons the data instead, so it runs in the benchmarks' plain loop only (a client mod cannot
change what a factory trains on): ``label-flip``, the factory's targets negated (regression) or its class
ids reversed (classification), trained on honestly.
"""

from __future__ import annotations

import dataclasses

import torch

from fedmeta.common import FactoryData, global_norm

__all__ = ["ATTACKS", "CLAIM_FACTOR", "DATA_ATTACKS", "INSIDE_BOUND", "attacked_delta", "flipped_labels"]

ATTACKS = ("sign-flip", "scaled", "noise", "claim")
DATA_ATTACKS = ("label-flip",)
INSIDE_BOUND = 0.99  # an attacker's delta norm, as a share of the server's bound
CLAIM_FACTOR = 1e6


def attacked_delta(delta: dict[str, torch.Tensor], attack: str, max_norm: float,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """What an attacker sends in place of its honest ``delta`` (``claim`` changes the weight, not the delta)."""
    if attack == "sign-flip":
        return {name: -tensor for name, tensor in delta.items()}
    if attack == "scaled":
        scale = INSIDE_BOUND * max_norm / max(global_norm(delta), 1e-12)
        return {name: tensor * scale for name, tensor in delta.items()}
    if attack == "noise":
        noise = {name: torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                 for name, tensor in delta.items()}
        scale = INSIDE_BOUND * max_norm / global_norm(noise)
        return {name: tensor * scale for name, tensor in noise.items()}
    return delta


def flipped_labels(data: FactoryData, task_kind: str, classes: int) -> FactoryData:
    """``data`` with its targets negated (regression) or its class ids reversed (classification)."""
    y = -data.y if task_kind == "regression" else (classes - 1) - data.y
    return dataclasses.replace(data, y=y)
