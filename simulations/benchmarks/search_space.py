"""Hyper-parameter ranges ``fedmeta tune`` searches, declared beside the methods that take them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Range", "SearchSpace", "suggest"]


@dataclass(frozen=True)
class Range:
    """One hyper-parameter's range: a float (or ``integer``) in ``[low, high]``, searched on a log scale by default."""

    low: float
    high: float
    log: bool = True
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"a range needs low < high (and low > 0 on a log scale), got [{self.low}, {self.high}]")


SearchSpace = Mapping[str, Range]


def suggest(trial: Any, space: SearchSpace) -> dict[str, int | float]:
    """One optuna trial's values for every range of ``space``."""
    values: dict[str, int | float] = {}
    for name, r in space.items():
        if r.integer:
            values[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
        else:
            values[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return values
