"""The non-neural references of ``fedmeta benchmark``: gradient boosting on table or window features.

Two libraries, as practitioners use them: scikit-learn's HistGradientBoosting
(``gradient-boosting``) and LightGBM (``lightgbm``). Each takes its hyper-parameters from the
tuned configuration (`TREE_SEARCH_SPACES` is what ``fedmeta tune`` searches), else the
defaults in `TREE_DEFAULTS`.

Per evaluation task a model is trained on the training factories' pooled rows plus that task's K
support rows (what a central team could do if the factories shared their data), then scored
on the task's query rows, exactly the rows the neural methods are scored on.

Features: a table row is used as it is; a window ``[channels, length]`` (sensor sequence or
vibration segment) becomes ten classic statistics per channel (`common.trees.features.window_features`), the
hand-made features gradient boosting is usually given in RUL and bearing-fault work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightgbm
import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from torch import Tensor

from fedmeta.common import NUM_EXAMPLES, FactoryData, TaskBatch
from fedmeta.common.trees.features import window_features
from fedmeta.simulations.benchmarks.search_space import Range, SearchSpace

__all__ = [
    "TREE_DEFAULTS",
    "TREE_REFERENCES",
    "TREE_SEARCH_SPACES",
    "GradientBoostingReference",
]

TREE_REFERENCES = ("gradient-boosting", "lightgbm")
# Without a tuned configuration: 200 trees, each library's other defaults (no early stopping, so the
# fit is deterministic given the seed and needs no validation split).
TREE_DEFAULTS: dict[str, dict[str, object]] = {
    "gradient-boosting": {"max_iter": 200},
    "lightgbm": {"n_estimators": 200},
}
# What ``fedmeta tune`` searches per library (the same number of trials as every other method).
TREE_SEARCH_SPACES: dict[str, SearchSpace] = {
    "gradient-boosting": {
        "learning_rate": Range(0.01, 0.3),
        "max_iter": Range(50, 500, integer=True),
        "max_leaf_nodes": Range(4, 64, integer=True),
        "min_samples_leaf": Range(2, 100, integer=True),
        "l2_regularization": Range(1e-3, 10.0),
    },
    "lightgbm": {
        "learning_rate": Range(0.01, 0.3),
        "n_estimators": Range(50, 500, integer=True),
        "num_leaves": Range(4, 64, integer=True),
        "min_child_samples": Range(2, 100, integer=True),
        "reg_lambda": Range(1e-3, 10.0),
        "colsample_bytree": Range(0.3, 1.0, log=False),
    },
}
_EPS = 1e-8  # the probability floor of the log-probabilities


def _sklearn(task_kind: str, seed: int, params: Mapping[str, Any]) -> Any:
    if task_kind == "classification":
        # The K-shot query sets are class-balanced, so the classes are weighted to match.
        return HistGradientBoostingClassifier(early_stopping=False, class_weight="balanced", random_state=seed,
                                              **params)
    return HistGradientBoostingRegressor(early_stopping=False, random_state=seed, **params)


def _lightgbm(task_kind: str, seed: int, params: Mapping[str, Any]) -> Any:
    # One thread: the same trees on any machine, and no fight with torch for the cores.
    common = {"random_state": seed, "n_jobs": 1, "verbosity": -1, "deterministic": True, "force_row_wise": True}
    if task_kind == "classification":
        return lightgbm.LGBMClassifier(class_weight="balanced", **common, **params)
    return lightgbm.LGBMRegressor(**common, **params)


_LIBRARIES: dict[str, Callable[[str, int, Mapping[str, Any]], Any]] = {
    "gradient-boosting": _sklearn,
    "lightgbm": _lightgbm,
}


class GradientBoostingReference:
    """One model per evaluation task, fitted on the pooled training rows plus the task's support rows;
    ``name`` picks the library (`TREE_REFERENCES`), ``params`` its hyper-parameters (default `TREE_DEFAULTS`)."""

    def __init__(
        self,
        train: Sequence[FactoryData],
        *,
        task_kind: str,
        num_classes: int | None,
        seed: int,
        name: str = "gradient-boosting",
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if name not in _LIBRARIES:
            raise ValueError(f"unknown tree reference {name!r}; choose one of {', '.join(TREE_REFERENCES)}")
        self.pooled_x = window_features(torch.cat([f.x for f in train]))
        self.pooled_y = torch.cat([f.y for f in train]).numpy()
        self.task_kind, self.num_classes, self.seed = task_kind, num_classes, seed
        self.name, self.params = name, dict(TREE_DEFAULTS[name] if params is None else params)

    def _model(self) -> Any:
        return _LIBRARIES[self.name](self.task_kind, self.seed, self.params)

    def fit(self, batch: TaskBatch) -> list[Any]:
        batch = batch.in_factory_units()  # the trees fit the pooled rows' own values
        return [
            self._model().fit(
                np.concatenate([self.pooled_x, window_features(batch.support_x[t])]),
                np.concatenate([self.pooled_y, batch.support_y[t].numpy()]),
            )
            for t in range(batch.num_tasks)
        ]

    def fit_pooled(self) -> Any:
        """One model on the pooled training rows alone: what the trees know before any target row."""
        return self._model().fit(self.pooled_x, self.pooled_y)

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
        y = batch.in_factory_units().query_y
        scores: dict[str, float] = {NUM_EXAMPLES: y.numel()}
        if self.task_kind == "regression":
            scores["loss"] = float(((out[..., 0] - y) ** 2).mean())
        else:
            scores["loss"] = float(-out.gather(-1, y[..., None]).mean())
            scores["accuracy"] = float((out.argmax(dim=-1) == y).double().mean())
        return scores
