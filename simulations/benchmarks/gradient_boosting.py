"""The non-neural reference of ``fedmeta benchmark``: gradient boosting on table or window features.

Per evaluation task it is trained on the training factories' pooled rows plus that task's K
support rows (what a central team could do if the factories shared their data), then scored
on the task's query rows, exactly the rows the neural methods are scored on.

Features: a table row is used as it is; a window ``[channels, length]`` (sensor sequence or
vibration segment) becomes ten classic statistics per channel (`window_features`), the
hand-made features gradient boosting is usually given in RUL and bearing-fault work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from torch import Tensor

from fedmeta.common import NUM_EXAMPLES, FactoryData, TaskBatch

__all__ = ["WINDOW_STATISTICS", "GradientBoostingReference", "window_features"]

WINDOW_STATISTICS = (
    "mean", "std", "min", "max", "last", "slope", "skewness", "kurtosis", "crest factor", "mean |x|"
)
_EPS = 1e-8


def window_features(x: Tensor) -> np.ndarray:
    """``[n, features]`` rows as they are; ``[n, channels, length]`` windows -> `WINDOW_STATISTICS` per channel."""
    values = x.detach().cpu().double().numpy()
    if values.ndim == 2:
        return values
    if values.ndim != 3:
        raise ValueError(f"expected [n, features] or [n, channels, length] inputs, got shape {tuple(values.shape)}")
    mean = values.mean(axis=-1)
    centred = values - mean[..., None]
    std = values.std(axis=-1)
    time = np.arange(values.shape[-1]) - (values.shape[-1] - 1) / 2
    slope = (centred * time).sum(axis=-1) / (time**2).sum()
    scale = std + _EPS
    skewness = (centred**3).mean(axis=-1) / scale**3
    kurtosis = (centred**4).mean(axis=-1) / scale**4
    rms = np.sqrt((values**2).mean(axis=-1))
    crest = np.abs(values).max(axis=-1) / (rms + _EPS)
    stats = [mean, std, values.min(axis=-1), values.max(axis=-1), values[..., -1], slope, skewness, kurtosis, crest,
             np.abs(values).mean(axis=-1)]
    return np.concatenate(stats, axis=-1)


def _model(task_kind: str, seed: int) -> HistGradientBoostingClassifier | HistGradientBoostingRegressor:
    # Fixed iterations and no early stopping: deterministic given the seed, no validation split.
    if task_kind == "classification":
        # The K-shot query sets are class-balanced, so the classes are weighted to match.
        return HistGradientBoostingClassifier(max_iter=200, early_stopping=False, class_weight="balanced",
                                              random_state=seed)
    return HistGradientBoostingRegressor(max_iter=200, early_stopping=False, random_state=seed)


class GradientBoostingReference:
    """One model per evaluation task, fitted on the pooled training rows plus the task's support rows."""

    def __init__(self, train: Sequence[FactoryData], *, task_kind: str, num_classes: int | None, seed: int) -> None:
        self.pooled_x = window_features(torch.cat([f.x for f in train]))
        self.pooled_y = torch.cat([f.y for f in train]).numpy()
        self.task_kind, self.num_classes, self.seed = task_kind, num_classes, seed

    def fit(self, batch: TaskBatch) -> list[HistGradientBoostingClassifier | HistGradientBoostingRegressor]:
        return [
            _model(self.task_kind, self.seed).fit(
                np.concatenate([self.pooled_x, window_features(batch.support_x[t])]),
                np.concatenate([self.pooled_y, batch.support_y[t].numpy()]),
            )
            for t in range(batch.num_tasks)
        ]

    def predict(self, models: Sequence[object], x: Tensor | Sequence[Tensor]) -> Tensor:
        """``[T, n, outputs]``: log-probabilities of every class (classification) or values (regression);
        ``x`` is one set of rows for every task or one per task."""
        outputs = []
        for t, model in enumerate(models):
            features = window_features(x[t] if isinstance(x, Sequence) else x)
            if self.task_kind == "regression":
                outputs.append(model.predict(features)[:, None])
                continue
            probabilities = np.zeros((len(features), self.num_classes))
            probabilities[:, model.classes_] = model.predict_proba(features)
            outputs.append(np.log(np.clip(probabilities, _EPS, 1.0)))
        return torch.from_numpy(np.stack(outputs)).float()

    def query_scores(self, models: Sequence[object], batch: TaskBatch) -> dict[str, float]:
        """Mean query ``loss`` (MSE, or cross-entropy) and ``accuracy`` over the tasks, plus ``num-examples``."""
        out = self.predict(models, list(batch.query_x)).double()
        y = batch.query_y
        scores: dict[str, float] = {NUM_EXAMPLES: y.numel()}
        if self.task_kind == "regression":
            scores["loss"] = float(((out[..., 0] - y) ** 2).mean())
        else:
            scores["loss"] = float(-out.gather(-1, y[..., None]).mean())
            scores["accuracy"] = float((out.argmax(dim=-1) == y).double().mean())
        return scores
