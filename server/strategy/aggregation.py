"""How the server combines a round's accepted deltas: the weighted mean, or a rule that one misbehaving
factory cannot steer.

Every delta that reaches a rule has passed `common.federation.deltas.validate_delta` (shape, finite, norm bound),
but a delta inside the bound can still be flipped, scaled up to the bound or pure noise, and the weight
is the number of examples the factory itself claims. The rules, each the math of Flower's strategy of
the same name (tests compare them on the same inputs):

* ``mean``: ``sum w_i delta_i / sum w_i`` with the claimed examples as weights (FedAvg);
* ``median``: the coordinate-wise median, unweighted (FedMedian);
* ``trimmed-mean``: per coordinate, the mean after dropping the ``floor(trim_fraction * n)`` largest
  and smallest values, unweighted (FedTrimmedAvg);
* ``krum`` / ``multi-krum``: each delta scores the sum of its squared distances to its ``n - f - 2``
  nearest others (``f``: the factories assumed malicious); the lowest score (krum) or the ``select``
  lowest (multi-krum, default ``n - f``) are averaged by their claimed weights (Krum, MultiKrum);
* ``capped-mean``: the weighted mean with each claim capped at ``weight_cap`` (0: the round's median
  claim), so a factory cannot buy influence by claiming more rows than the others.

All arithmetic is float64; each result has its tensor's dtype.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.common.federation.deltas import weighted_average
from fedmeta.common.run_settings import AGGREGATIONS
from fedmeta.common.validation import check_choice

__all__ = ["AGGREGATIONS", "AggregationRule", "krum_selection"]


Delta = Mapping[str, Tensor]


def _stacked(deltas: Sequence[Delta], name: str) -> Tensor:
    """The ``name`` tensors of every delta, ``[n, *shape]`` in float64."""
    return torch.stack([delta[name].detach().to(torch.float64) for delta in deltas])


def _per_coordinate(deltas: Sequence[Delta], reduce) -> dict[str, Tensor]:
    return {name: reduce(_stacked(deltas, name)).to(tensor.dtype) for name, tensor in deltas[0].items()}


def _median(values: Tensor) -> Tensor:
    """numpy's median (the mean of the two middle values for an even count), not torch's lower median."""
    return torch.quantile(values.flatten(1), 0.5, dim=0).reshape(values.shape[1:])


def _trimmed(values: Tensor, fraction: float) -> Tensor:
    cut = int(fraction * values.shape[0])
    return values.sort(dim=0).values[cut:values.shape[0] - cut].mean(dim=0)


def krum_selection(deltas: Sequence[Delta], malicious: int, select: int) -> list[int]:
    """Indices of the ``select`` deltas with the lowest Krum scores, best first (Flower's `select_multikrum`)."""
    flat = torch.stack([torch.cat([t.detach().to(torch.float64).flatten() for t in delta.values()])
                        for delta in deltas])
    distances = torch.cdist(flat, flat).square()
    nearest = max(1, len(deltas) - malicious - 2)
    scores = distances.sort(dim=1).values[:, 1:nearest + 1].sum(dim=1)  # column 0: the delta itself
    return torch.argsort(scores, stable=True)[:select].tolist()


@dataclass(frozen=True)
class AggregationRule:
    """One of `AGGREGATIONS` with its parameters (see the module docstring)."""

    name: str = "mean"
    trim_fraction: float = 0.2
    malicious: int = 0
    select: int = 0
    weight_cap: float = 0.0

    def __post_init__(self) -> None:
        check_choice("aggregation", self.name, AGGREGATIONS)
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        for key, value in (("krum-malicious", self.malicious), ("krum-select", self.select)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a whole number >= 0, got {value!r}")
        if not (math.isfinite(self.weight_cap) and self.weight_cap >= 0):
            raise ValueError(f"weight-cap must be finite and >= 0, got {self.weight_cap}")

    @property
    def selects(self) -> bool:
        """Whether the rule keeps some deltas whole and leaves the others out (krum, multi-krum)."""
        return self.name in ("krum", "multi-krum")

    def kept(self, deltas: Sequence[Delta]) -> list[int]:
        """Indices of the deltas the update is made of: a selecting rule's choice (best first), otherwise all."""
        if not self.selects:
            return list(range(len(deltas)))
        count = 1 if self.name == "krum" else (self.select or max(1, len(deltas) - self.malicious))
        return krum_selection(deltas, self.malicious, count)

    def combine(self, deltas: Sequence[Delta], weights: Sequence[float], kept: Sequence[int] | None = None
                ) -> dict[str, Tensor]:
        """The round's update from the accepted ``deltas`` and their claimed ``weights``; ``kept``: a selecting
        rule's choice (`kept`) when the caller has made it already (it is not made twice)."""
        if not deltas:
            raise ValueError("cannot aggregate an empty list of deltas")
        if self.name == "median":
            return _per_coordinate(deltas, _median)
        if self.name == "trimmed-mean":
            return _per_coordinate(deltas, lambda values: _trimmed(values, self.trim_fraction))
        if self.selects:
            kept = self.kept(deltas) if kept is None else kept
            return weighted_average([deltas[i] for i in kept], [weights[i] for i in kept])
        if self.name == "capped-mean":
            cap = self.weight_cap or statistics.median(float(w) for w in weights)
            return weighted_average(deltas, [min(float(w), cap) for w in weights])
        return weighted_average(deltas, weights)
