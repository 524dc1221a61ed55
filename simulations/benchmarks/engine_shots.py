"""C-MAPSS with K counted in target engines: e.g. FD001 -> FD003 adapted on every window of K engines.

The K-shot table of the benchmark counts windows; a maintenance team counts engines run to
failure. For K = 1, 5, 10 target training engines (nested, the training factories unchanged),
each method adapts once on all of those engines' windows (one task, `eval-steps` full-batch
steps; gradient boosting refits on the pooled source windows plus them) and is scored on the
official target test split in cycles. Each K's held-out engines and test split are normalised
with those engines' own sensor statistics, as in `load_cmapss_transfer`.

Full-data references (`simulations.benchmarks.supervised.train_supervised`, the literature's recipe: a window
at every cycle, Adam with early stopping on 10 whole validation engines): ``oracle`` trains on
the target's other training engines, ``pooled-oracle`` on those plus the source engines; both
need no adaptation and score the same test split.

Every prediction is clipped to [0, 125] cycles, the range of the capped-RUL convention the
test labels use (true RUL capped at 125), for every method alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.client import LoadedFactory, local_only_adaptation, prepare_adaptation
from fedmeta.common import Adaptation, DataSource, EvaluationSettings, FactoryData, TaskBatch, predict
from fedmeta.common.data.datasets import load_cmapss_transfer, rul_scores
from fedmeta.simulations.benchmarks.gradient_boosting import GradientBoostingReference
from fedmeta.simulations.benchmarks.references import ENGINE_SHOTS, cmapss_reference
from fedmeta.simulations.benchmarks.supervised import SupervisedRecipe

__all__ = ["ENGINE_SHOTS", "EngineShots"]

Predictor = Callable[[FactoryData, Tensor], Tensor]
"""A model adapted on one K's target windows, predicting ``[n, 1]`` for test windows ``x``."""


def _one_task(data: FactoryData) -> TaskBatch:
    """All of ``data`` as the support set of one task (the query half is unused), with its engines."""
    x, y = data.x[None], data.y[None]
    return TaskBatch(x, y, x[:, :1], y[:, :1], None if data.groups is None else data.groups[None])


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class _Target:
    engines: FactoryData  # every window of the K target engines
    test: FactoryData


class EngineShots:
    """One seed's source -> target splits (``transfer``, e.g. FD001 -> FD003) for K = 1, 5, 10 target engines."""

    def __init__(
        self, source: DataSource, seed: int, *, transfer: tuple[str, str] = ("FD001", "FD003"), stride: int = 5
    ) -> None:
        """``stride``: cycles between training windows (the benchmark's split uses 5)."""
        self.source = source
        self.seed = seed
        self.transfer = transfer
        splits = {k: load_cmapss_transfer(*transfer, target_engines=k, stride=stride, seed=seed)
                  for k in ENGINE_SHOTS}
        self.targets = {k: _Target(s.held_out[0], s.test[0]) for k, s in splits.items()}
        self.train = splits[ENGINE_SHOTS[0]].train  # the same training factories for every K
        self.scale = splits[ENGINE_SHOTS[0]].target_scale

    def _scores(self, pred: Tensor, test: FactoryData) -> dict[str, float]:
        return rul_scores(pred[:, 0].float() * self.scale, test.y * self.scale, rul_cap=self.scale)

    def score(self, predictor: Predictor) -> dict[int, dict[str, float]]:
        """RMSE and NASA score in cycles on the test split, per K target engines."""
        return {k: self._scores(predictor(t.engines, t.test.x), t.test) for k, t in self.targets.items()}

    # ----------------------------------------------------------------- predictors

    def _adapt(self, adaptation: Adaptation, steps: int, cross_validate: bool = False) -> Predictor:
        def run(engines: FactoryData, x: Tensor) -> Tensor:
            params = adaptation.adapt(_one_task(engines), steps, cross_validate=cross_validate)
            with torch.no_grad():
                return predict(adaptation.model, params, x[None])[0]

        return run

    def adapted(self, params: Mapping[str, Tensor], settings: EvaluationSettings, steps: int) -> Predictor:
        """A global model adapted as `evaluate_factory` adapts it (``steps = 0``: not at all; with the
        cross-validated recipe, folds of whole target engines)."""
        factory = LoadedFactory(self.targets[ENGINE_SHOTS[0]].engines, "evaluate", self.source)
        adaptation = prepare_adaptation(factory, params, settings, device=torch.device("cpu"))
        return self._adapt(adaptation, steps, cross_validate=settings.recipe == "cross-validated")

    def local_only(self, settings: EvaluationSettings) -> Predictor:
        return self._adapt(local_only_adaptation(self.source, settings), settings.local_only_steps)

    def gradient_boosting(
        self, seed: int, name: str = "gradient-boosting", params: Mapping[str, object] | None = None
    ) -> Predictor:
        """A tree reference (`GradientBoostingReference`'s ``name`` and ``params``) refitted per K."""
        reference = GradientBoostingReference(self.train, task_kind="regression", num_classes=None, seed=seed,
                                              name=name, params=params)

        def run(engines: FactoryData, x: Tensor) -> Tensor:
            return reference.predict(reference.fit(_one_task(engines)), x)[0]

        return run

    def full_data(self, recipe: SupervisedRecipe, pooled: Sequence[FactoryData] = ()) -> dict[int, dict[str, float]]:
        """A model trained on the target's training engines (plus ``pooled``), scored on its test split;
        the same value is reported at every K (it needs no target samples)."""
        scores = cmapss_reference(self.transfer[1], self.seed, recipe, pooled)
        return {k: {"rmse": scores["rmse"], "nasa": scores["nasa"]} for k in ENGINE_SHOTS}
