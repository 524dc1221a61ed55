"""Federated trees (``xgb-bagging``, ``xgb-cyclic``) in-process for ``fedmeta benchmark``, as `scaling.PlainLoop`
runs the networks: the same client and server code, without Flower.

Each round the round's training factories (bagging: every one; cyclic: one, in turn by factory key, the
factory `TreeStrategy.sample_train` picks) run the client's own `tree_update` on their rows from the global
ensemble, and the server's own `check_reply` and `append_replies` check their trees and append them in
factory-key order. The last round asks each factory to score the adaptation recipes on K-shot tasks of its
rows, and `best_recipes` keeps one per K, as `server.run` does. A held-out factory then adapts as
`client.rounds.evaluation.evaluate_trees` does: its K's chosen recipe boosted from the ensemble on its K
rows (`fewshot.federated_trees`).

Every factory's update is timed, and one meta-learning round's update (`client.app.local_update`) of the
same factories, so the report can set what a tree round costs a factory beside a network's round.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedmeta.client import LoadedFactory, local_update, node_device
from fedmeta.client.rounds.trees import (
    factory_tree_shape,
    recipe_metrics,
    tree_histograms,
    tree_sketch,
    tree_update,
)
from fedmeta.common import (
    DataSource,
    EvaluationSettings,
    FactoryData,
    RoundSettings,
    TaskBatch,
    standardizes_targets,
)
from fedmeta.common.data.scaling import TargetScaling
from fedmeta.common.meta.factory_choice import Predictor
from fedmeta.common.trees.continuation import best_recipes
from fedmeta.common.trees.ensemble import EMPTY_ENSEMBLE, load_ensemble, margins, num_rounds
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.histograms import LevelSplits
from fedmeta.common.trees.settings import TreeRecipe
from fedmeta.common.trees.split_finding import grow_round, merge_sketches, start_at_mean
from fedmeta.server import ServerSettings, initial_meta_parameters
from fedmeta.server.strategy.fedmeta import weighted_metrics
from fedmeta.server.strategy.trees import HISTOGRAM_ALGORITHM, aggregate_round, cyclic_turn, replies_needed

__all__ = [
    "TreeRun",
    "engine_predictor",
    "ensemble_of",
    "ensemble_tensor",
    "joined_histogram_predictor",
    "meta_round_seconds",
    "recipe_settings",
    "round_factories",
    "run_tree_rounds",
]

ENSEMBLE = "ensemble"  # a tree step's trained parameters: the ensemble's JSON bytes as one uint8 tensor


@dataclass
class TreeRun:
    """A federation's trees after its rounds, the recipe it chose for each K, what the factories sent, how
    long each factory's update took (``update_seconds``: per round, one value per factory that trained) and how
    many replies the server's checks left out (diverging settings grow leaves past the bound)."""

    ensemble: bytes
    recipes: dict[int, TreeRecipe]
    bytes_sent: int
    trees: int
    update_seconds: list[list[float]]
    rejected: int = 0

    def summary(self) -> dict[str, object]:
        """What the results keep: the trees' bytes and count, the recipes, and the mean seconds a factory spends
        on a round's update: a boosting round (``None`` with one round: the last one alone) and the last, which
        also scores the recipes."""
        boosting = [seconds for round_seconds in self.update_seconds[:-1] for seconds in round_seconds]
        return {
            "bytes_sent": self.bytes_sent,
            "trees": self.trees,
            "recipes": {str(k): recipe.name for k, recipe in self.recipes.items()},
            "round_seconds": statistics.fmean(boosting) if boosting else None,
            "recipe_round_seconds": statistics.fmean(self.update_seconds[-1]),
            "rejected": self.rejected,
        }


def round_factories(factories: Sequence[LoadedFactory], server_round: int, *, cyclic: bool) -> list[LoadedFactory]:
    """The factories that boost in ``server_round``, in factory-key order: every one (bagging), or one in turn
    (cyclic), the rule of `TreeStrategy.sample_train` with every training factory sampled."""
    ordered = sorted(factories, key=lambda factory: factory.data.name)
    return [cyclic_turn(ordered, server_round)] if cyclic else ordered


def _timed_update(factory: LoadedFactory, ensemble: bytes,
                  settings: RoundSettings) -> tuple[tuple[bytes, dict[str, float]], float]:
    """The factory's reply (`tree_update`: its new trees and metrics) and the seconds it took."""
    started = time.perf_counter()
    reply = tree_update(factory, ensemble, settings)
    return reply, time.perf_counter() - started


def run_tree_rounds(config: Mapping[str, object], factories: Sequence[LoadedFactory], shots: Sequence[int],
                    advance: Callable[[], None]) -> TreeRun:
    """The run's rounds of its tree algorithm on ``factories`` (the training ones), the last one scoring the
    recipes for ``shots``; ``advance`` is called after each round."""
    settings = ServerSettings.from_run_config(config)
    if settings.round.algorithm == HISTOGRAM_ALGORITHM:
        return _histogram_rounds(settings, factories, shots, advance)
    tree_settings, shape = settings.round.tree_settings(), factory_tree_shape(factories[0])
    cyclic = settings.round.algorithm == "xgb-cyclic"
    ensemble, sent, rejected, seconds = EMPTY_ENSEMBLE, 0, 0, []
    recipes: dict[int, TreeRecipe] = {}
    for server_round in range(1, settings.num_rounds + 1):
        chosen = round_factories(factories, server_round, cyclic=cyclic)
        last = server_round == settings.num_rounds
        round_settings = dataclasses.replace(settings.round, server_round=server_round, tree_factories=len(chosen),
                                             recipe_shots=tuple(shots) if last else ())
        replies, took = zip(*(_timed_update(factory, ensemble, round_settings) for factory in chosen), strict=True)
        named = [(factory.data.name, trees, metrics) for factory, (trees, metrics) in zip(chosen, replies, strict=True)]
        ensemble, merged = aggregate_round(ensemble, named, shape, tree_settings,
                                           max_leaf=settings.sampling.max_delta_norm,
                                           needed=replies_needed(settings.sampling, cyclic=cyclic))
        rejected += int(merged["rejected"])
        if last:
            recipes = best_recipes(merged, shots)
        sent += sum(len(trees) for trees, _ in replies)
        seconds.append(list(took))
        advance()
    return TreeRun(ensemble, recipes, sent, num_rounds(ensemble) * shape.groups, seconds, rejected)


class _HistogramFactories:
    """The training factories answering ``xgb-histogram``'s exchanges in factory-key order, as the server asks
    them, each factory's seconds and the bytes they send counted."""

    def __init__(self, factories: Sequence[LoadedFactory]) -> None:
        self.factories = sorted(factories, key=lambda factory: factory.data.name)
        self.seconds = dict.fromkeys((factory.data.name for factory in self.factories), 0.0)
        self.bytes_sent = 0

    def _timed(self, factory: LoadedFactory, work: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = work()
        self.seconds[factory.data.name] += time.perf_counter() - started
        return result

    def edges(self, bins: int) -> np.ndarray:
        sketches = [self._timed(factory, lambda factory=factory: tree_sketch(factory, bins))
                    for factory in self.factories]
        self.bytes_sent += sum(sketch.nbytes for sketch, _ in sketches)
        return merge_sketches(sketches, bins)

    def histograms(self, ensemble: bytes, edges: np.ndarray, splits: LevelSplits) -> list[tuple[str, list[np.ndarray]]]:
        replies = [(factory.data.name, self._timed(factory, lambda factory=factory: tree_histograms(
            factory, ensemble, edges, splits))) for factory in self.factories]
        self.bytes_sent += sum(array.nbytes for _, arrays in replies for array in arrays)
        return replies

    def recipe_metrics(self, ensemble: bytes, settings: RoundSettings) -> dict[str, float]:
        return weighted_metrics([
            self._timed(factory, lambda factory=factory: recipe_metrics(factory, ensemble, settings))
            for factory in self.factories])

    def round_seconds(self) -> list[float]:
        """Each factory's seconds since the last call."""
        seconds = list(self.seconds.values())
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return seconds


def _histogram_rounds(settings: ServerSettings, factories: Sequence[LoadedFactory], shots: Sequence[int],
                      advance: Callable[[], None]) -> TreeRun:
    """``xgb-histogram``'s rounds as the server runs them: the bins from the factories' sketches and a
    regression's start (`start_at_mean`), then each round ``local-trees`` boosting rounds grown level by level on
    their summed histograms (`grow_round`)."""
    tree_settings, shape = settings.round.tree_settings(), factory_tree_shape(factories[0])
    answering = _HistogramFactories(factories)
    edges = answering.edges(tree_settings.bins)
    ensemble, rejected, seconds = EMPTY_ENSEMBLE, 0, []
    recipes: dict[int, TreeRecipe] = {}
    needed = replies_needed(settings.sampling, cyclic=False)
    for server_round in range(1, settings.num_rounds + 1):
        ensemble, started = start_at_mean(ensemble, edges, shape, tree_settings,
                                          functools.partial(answering.histograms, ensemble, edges), needed=needed)
        rejected += int(started.get("rejected", 0))
        for _ in range(tree_settings.local_trees):
            ensemble, summary = grow_round(ensemble, edges, shape, tree_settings,
                                           functools.partial(answering.histograms, ensemble, edges), needed=needed)
            rejected += int(summary["rejected"])
        if server_round == settings.num_rounds:
            round_settings = dataclasses.replace(settings.round, server_round=server_round, recipe_shots=tuple(shots))
            recipes = best_recipes(answering.recipe_metrics(ensemble, round_settings), shots)
        seconds.append(answering.round_seconds())
        advance()
    return TreeRun(ensemble, recipes, answering.bytes_sent, num_rounds(ensemble) * shape.groups, seconds, rejected)


def joined_histogram_predictor(config: Mapping[str, object], train: Sequence[LoadedFactory]
                               ) -> Callable[[FactoryData, Tensor], Tensor]:
    """`engine_shots.EngineShots`' predictor of a new factory that joins an ``xgb-histogram`` federation with its
    K engines instead of adapting its trees alone: the run's rounds on ``train`` plus those engines as one more
    training factory (their rows stay with it like any factory's), its ensemble predicting ``x [n, ...]``."""

    def predict(engines: FactoryData, x: Tensor) -> Tensor:
        joined = LoadedFactory(engines, "train", train[0].source)
        run = run_tree_rounds(config, [*train, joined], (), lambda: None)
        values = torch.from_numpy(margins(load_ensemble(run.ensemble), window_features(x), factory_tree_shape(joined)))
        # in the factory's units: it boosted on its target standardised with its rows where its source says so
        return TargetScaling.fit(engines.y).invert(values) if standardizes_targets(joined.source) else values

    return predict


def recipe_settings(evaluation: EvaluationSettings, recipes: Mapping[int | str, str]) -> EvaluationSettings:
    """``evaluation`` with the federation's recipe for each K (``{K: name}``), as the server sends it."""
    return dataclasses.replace(evaluation, tree_recipes=tuple(f"{k}={name}" for k, name in recipes.items()))


def ensemble_tensor(ensemble: bytes) -> dict[str, Tensor]:
    """The ensemble as a step's trained parameters (`seed_records`)."""
    return {ENSEMBLE: torch.frombuffer(bytearray(ensemble), dtype=torch.uint8)}


def ensemble_of(params: Mapping[str, Tensor]) -> bytes:
    """The ensemble `ensemble_tensor` holds."""
    return params[ENSEMBLE].numpy().tobytes()


def meta_round_seconds(config: Mapping[str, object], factories: Sequence[LoadedFactory]) -> float:
    """The mean seconds a factory spends on one round's update of the run's meta-learner (`local_update` from
    the seeded first global model, the run's settings), over ``factories``. One update runs untimed first: a
    process's first meta-training step costs tens of times a later one (torch's lazy set-up)."""
    settings = ServerSettings.from_run_config(config).round
    params = initial_meta_parameters(factories[0].source, settings.algorithm, settings.inner_lr, settings.seed)
    device, first_round = node_device({}, config), dataclasses.replace(settings, server_round=1)
    local_update(factories[0], params, first_round, device)
    seconds = []
    for factory in factories:
        started = time.perf_counter()
        local_update(factory, params, first_round, device)
        seconds.append(time.perf_counter() - started)
    return statistics.fmean(seconds)


def engine_predictor(source: DataSource, predictor_at: Callable[[LoadedFactory, int], Predictor]
                     ) -> Callable[[FactoryData, Tensor], Tensor]:
    """`engine_shots.EngineShots`' predictor for trees: ``predictor_at(factory, K)`` for K the target engines'
    window count, fitted on all those windows, predicting ``x [n, ...]``."""

    def predict(engines: FactoryData, x: Tensor) -> Tensor:
        batch = TaskBatch(engines.x[None], engines.y[None], x[None], engines.y.new_zeros(1, len(x)))
        factory = LoadedFactory(engines, "evaluate", source)
        return predictor_at(factory, len(engines.y))(batch)[0]

    return predict
