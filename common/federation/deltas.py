"""Parameter deltas: what a factory sends instead of its weights, and the server's checks.

A client returns ``local - global``; the server validates every delta against the global
parameters before it can touch the model (a wrong shape, a NaN or an exploding update
from one factory must not poison the federation) and averages the survivors. Meta-SGD's
learned learning rates travel under their own names and are treated like any tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "DeltaRejected",
    "add",
    "global_norm",
    "subtract",
    "validate_delta",
    "weighted_average",
]


class DeltaRejected(ValueError):
    """A client's delta does not fit the global parameters or is unsafe to apply."""


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _structure_problems(
    tensors: Mapping[str, Tensor], reference: Mapping[str, Tensor]
) -> list[str]:
    """Every way ``tensors`` differs from ``reference`` in names, types, shapes and dtypes."""
    problems = []
    missing = [name for name in reference if name not in tensors]
    unexpected = [name for name in tensors if name not in reference]
    if missing:
        problems.append(f"missing names: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected names: {_names(unexpected)}")
    for name, expected in reference.items():
        if name not in tensors:
            continue
        tensor = tensors[name]
        if not isinstance(tensor, Tensor):
            problems.append(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        elif tensor.shape != expected.shape:
            problems.append(
                f"{name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}"
            )
        elif tensor.dtype != expected.dtype:
            problems.append(f"{name!r} has dtype {tensor.dtype}, expected {expected.dtype}")
    return problems


def _check_structure(
    tensors: Mapping[str, Tensor], reference: Mapping[str, Tensor], action: str
) -> None:
    problems = _structure_problems(tensors, reference)
    if problems:
        raise ValueError(f"cannot {action}: {'; '.join(problems)}")


def subtract(local: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``local - reference`` per name: the delta a client sends after local training."""
    _check_structure(local, reference, "subtract")
    return {name: local[name].detach() - reference[name].detach() for name in reference}


def add(params: Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params + delta`` per name: apply a (validated or averaged) delta."""
    _check_structure(delta, params, "add")
    return {name: params[name].detach() + delta[name].detach() for name in params}


def global_norm(tensors: Mapping[str, Tensor]) -> float:
    """L2 norm over all entries of all tensors, in float64 so large models do not overflow."""
    squares = math.fsum(
        torch.linalg.vector_norm(t.detach(), dtype=torch.float64).item() ** 2
        for t in tensors.values()
    )
    return math.sqrt(squares)


def validate_delta(
    delta: Mapping[str, Tensor], reference: Mapping[str, Tensor], *, max_norm: float
) -> None:
    """Reject a delta that does not match ``reference`` or is non-finite or too large.

    ``reference`` (the global parameters) gives the expected names, shapes and dtypes.
    ``max_norm`` bounds the delta's global L2 norm; ``math.inf`` disables the bound.
    """
    if math.isnan(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    problems = _structure_problems(delta, reference)
    if problems:
        raise DeltaRejected(f"delta rejected: {'; '.join(problems)}")
    non_finite = [
        f"{name!r} has {count} non-finite values"
        for name, tensor in delta.items()
        if (count := int((~torch.isfinite(tensor.detach())).sum().item()))
    ]
    if non_finite:
        raise DeltaRejected(f"delta rejected: {'; '.join(non_finite)}")
    norm = global_norm(delta)
    if norm > max_norm:
        raise DeltaRejected(
            f"delta rejected: global norm {norm:.6g} exceeds max_norm {max_norm:.6g}"
        )


def weighted_average(
    deltas: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> dict[str, Tensor]:
    """``sum(w_i * delta_i) / sum(w_i)`` per name, e.g. weighted by examples per client.

    Accumulates in float64 so many small contributions keep their precision; each result
    has its tensor's original dtype.
    """
    if not deltas:
        raise ValueError("cannot average an empty list of deltas")
    if len(deltas) != len(weights):
        raise ValueError(f"got {len(deltas)} deltas but {len(weights)} weights")
    scales = [float(weight) for weight in weights]
    for index, scale in enumerate(scales):
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(
                f"weight {index} must be finite and non-negative, got {weights[index]!r}"
            )
    total = math.fsum(scales)
    if total == 0:
        raise ValueError("all weights are zero; nothing to average")
    reference = deltas[0]
    for index, delta in enumerate(deltas[1:], start=1):
        _check_structure(delta, reference, f"average delta {index} with delta 0")
    average = {}
    for name, tensor in reference.items():
        if not tensor.is_floating_point():
            raise ValueError(f"cannot average {name!r}: dtype {tensor.dtype} is not floating point")
        accumulator = torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
        for delta, scale in zip(deltas, scales, strict=True):
            accumulator.add_(delta[name].detach().to(torch.float64), alpha=scale / total)
        average[name] = accumulator.to(tensor.dtype)
    return average
