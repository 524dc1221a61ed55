"""Input scaling from a factory's own rows, labelled or not.

Factories hold plenty of unlabelled process data and few labels, and each runs its process
at its own operating point. So every factory standardises each feature with the mean and
standard deviation of its own rows (a constant feature is only centred). Nothing about one
factory's inputs is needed by another, and a model package carries no factory's
statistics: a factory computes its own when it adapts, and the adapted package keeps them
so that its predictions see inputs scaled exactly as its adaptation did. A model that reads windows
of sensor signals is scaled the same way, per channel: a channel is a feature column of the
factory's long-format table, standardised row by row before the windows are cut from it.

A regression target is standardised too, with the factory's own labelled rows (`TargetScaling`): a
plant's part weight in grams, a pressure in bar or a life in cycles sits far from the unit scale a
network's weights are meant for. The adapted package keeps the statistics and maps its predictions
back to the factory's units; none of them leaves the factory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.common.meta.tasks import target_spread

__all__ = ["FeatureScaling", "TargetScaling"]

_MIN_STD = 1e-6  # below this a feature counts as constant: centred, never divided


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class FeatureScaling:
    """Per-feature mean and standard deviation ``[features]``; ``rows`` is how many rows they came from."""

    mean: Tensor
    std: Tensor
    rows: int

    def __post_init__(self) -> None:
        # float64: a sensor reading near 1e6 varies below float32's resolution there (0.06).
        object.__setattr__(self, "mean", torch.as_tensor(self.mean, dtype=torch.float64))
        object.__setattr__(self, "std", torch.as_tensor(self.std, dtype=torch.float64))
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"mean and std must be 1-D of one length, got {tuple(self.mean.shape)} "
                             f"and {tuple(self.std.shape)}")
        if not bool(torch.isfinite(self.mean).all() and torch.isfinite(self.std).all()) or bool((self.std <= 0).any()):
            raise ValueError("scaling statistics must be finite with positive standard deviations")

    @classmethod
    def fit(cls, x: Tensor) -> FeatureScaling:
        """Statistics of the rows ``x [rows, features]``; needs one row (a single row is only centred)."""
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"need rows [rows, features] with at least one row, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the rows to scale by hold NaN or infinite values")
        x = x.double()
        # The sample standard deviation (n - 1), as a plant's own pipeline (and `common.data.synthetic`) computes it.
        std = x.std(dim=0) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=x.dtype)
        return cls(x.mean(dim=0), torch.where(std > _MIN_STD, std, 1.0), int(x.shape[0]))

    def apply(self, x: Tensor) -> Tensor:
        """``x [rows, features]`` standardised (in float64), as float32 for the model."""
        if x.ndim != 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"expected rows of {self.mean.numel()} features, got shape {tuple(x.shape)}")
        return ((x.double() - self.mean) / self.std).float()

    def to_json(self) -> dict[str, object]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "rows": self.rows}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FeatureScaling:
        mean, std = data.get("mean"), data.get("std")
        if not isinstance(mean, Sequence) or not isinstance(std, Sequence) or not isinstance(data.get("rows"), int):
            raise ValueError("scaling needs lists 'mean' and 'std' and an integer 'rows'")
        try:
            mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        except (TypeError, ValueError, OverflowError):  # text, null, ragged lists, integers past float64
            raise ValueError(f"scaling's 'mean' and 'std' must be lists of numbers, got {mean!r:.100} and "
                             f"{std!r:.100}") from None
        return cls(mean, std, int(data["rows"]))


@dataclass(frozen=True)
class TargetScaling:
    """A regression target's mean and spread over the ``rows`` labelled rows a factory adapted on (the
    spread as `common.meta.tasks.target_spread` takes it, as the federation's tasks were standardised):
    the model predicts ``(y - mean) / std``."""

    mean: float
    std: float
    rows: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"a target scaling needs a finite mean and a positive finite std, got {self.mean}, "
                             f"{self.std}")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise ValueError(f"a target scaling comes from one labelled row or more, got rows={self.rows!r}")

    @classmethod
    def fit(cls, y: Tensor) -> TargetScaling:
        """The statistics of the labelled targets ``y [rows]`` (finite, one or more)."""
        if y.ndim != 1 or len(y) < 1 or not bool(torch.isfinite(y).all()):
            raise ValueError(f"need one or more finite targets [rows], got shape {tuple(y.shape)}")
        y = y.double()
        return cls(float(y.mean()), float(target_spread(y[None])[0]), len(y))

    def apply(self, y: Tensor) -> Tensor:
        """Targets in the factory's units, standardised (float32, computed in float64)."""
        return ((y.double() - self.mean) / self.std).float()

    def invert(self, predictions: Tensor) -> Tensor:
        """Standardised predictions in the factory's units (float64)."""
        return predictions.double() * self.std + self.mean

    def to_json(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "rows": self.rows}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TargetScaling:
        values = {key: data.get(key) for key in ("mean", "std", "rows")}
        if set(data) != set(values) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                               for v in values.values()):
            raise ValueError("a target scaling holds numbers 'mean', 'std' and an integer 'rows'")
        try:
            mean, std = float(values["mean"]), float(values["std"])
        except OverflowError:  # an integer past float64
            raise ValueError(f"a target scaling's mean and std must be numbers float64 can hold, got "
                             f"{values['mean']!r:.30} and {values['std']!r:.30}") from None
        return cls(mean, std, values["rows"])
