"""The round loop: train, aggregate, log metrics, checkpoint, evaluate; resumable; then the model
package, written into the run folder and delivered to every factory. The run's TensorBoard scalars and
``status.json`` follow it (`server.run_view`).

Flower's `Strategy.start` always begins at round 1, so the loop lives here and calls
the strategy's hooks itself. Each round appends its metrics first and then writes an
atomic checkpoint; on resume, metrics of rounds after the last checkpoint are dropped,
so a resumed run ends exactly where an uninterrupted one does. Messages go through
`server.strategy.fedmeta.exchange`, which looks for replies every 10 ms rather than Flower's 0.1 s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from torch import Tensor

from fedmeta.common import (
    DataSource,
    EvaluationSettings,
    build_model,
    init_inner_lrs,
    is_tree_algorithm,
    local_algorithm,
    model_config_for,
    pack_meta_parameters,
)
from fedmeta.common.federation import protocol
from fedmeta.common.package.model_package import ModelPackage
from fedmeta.common.trees.continuation import best_recipes
from fedmeta.common.trees.ensemble import EMPTY_ENSEMBLE
from fedmeta.common.trees.histograms import LevelSplits
from fedmeta.common.trees.shape import tree_shape
from fedmeta.common.trees.split_finding import grow_round, merge_sketches, start_at_mean
from fedmeta.server.checkpoint import CheckpointError, RunDirectory
from fedmeta.server.package import RUN_ID, deliver_package, write_run_package, write_tree_package
from fedmeta.server.run_view import RunView
from fedmeta.server.secure_round import secure_training_round
from fedmeta.server.settings import ServerSettings
from fedmeta.server.strategy.fedmeta import FactorySeats, FedMetaStrategy, ModelRecords, exchange, model_records
from fedmeta.server.strategy.histogram_trees import HistogramTreeStrategy, histogram_model_records
from fedmeta.server.strategy.outer_optimizer import OuterOptimizer
from fedmeta.server.strategy.trees import HISTOGRAM_ALGORITHM, TreeStrategy, ensemble_records

__all__ = ["NoFactoriesError", "ProgressFn", "initial_meta_parameters", "run_experiment"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[Mapping[str, object]], None]

FACTORY_POLL_S = 1.0  # how often to look for factories while too few are connected
ENSEMBLE_PARAMETER = "ensemble"  # a tree run's checkpoint: the ensemble's JSON bytes as one uint8 tensor
BIN_EDGES_PARAMETER = "bin-edges"  # ... and xgb-histogram's bin edges, once the first round set them
TREE_RECIPES_KEY = "tree-recipes"  # ... and the recipe kept for each K (JSON), once the last round chose them


def initial_meta_parameters(source: DataSource, algorithm: str, inner_lr: float, seed: int) -> dict[str, Tensor]:
    """The first global model, seeded so every run and every method starts alike."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(model_config_for(source, local_algorithm(algorithm)))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return pack_meta_parameters(weights, init_inner_lrs(weights, inner_lr) if algorithm == "metasgd" else {})


def _finite_or_text(metrics: Mapping[str, float]) -> dict[str, object]:
    """JSON lines cannot hold NaN: a diverged metric is kept, spelled as text."""
    return {k: float(v) if math.isfinite(float(v)) else str(float(v)) for k, v in metrics.items()}


def _run_id(run_dir: RunDirectory) -> str:
    """A name unique to this run (its folder's name and start time), kept across resumes: factories
    file the packages they receive under it."""
    if run_dir.config_path.exists():
        recorded = run_dir.read_config().get(RUN_ID)
        if isinstance(recorded, str):
            return recorded
    return f"{run_dir.path.name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


class _NetworkRounds:
    """A network's rounds: the outer optimizer steps with the factories' averaged deltas."""

    def __init__(self, run_dir: RunDirectory, settings: ServerSettings, source: DataSource, algorithm: str,
                 config: Mapping[str, object]) -> None:
        latest = run_dir.latest_round()
        if latest is None:
            params = initial_meta_parameters(source, algorithm, settings.round.inner_lr, settings.round.seed)
            run_dir.write_config(config, overwrite=settings.resume)
            self.optimizer = OuterOptimizer(params, settings.outer)
        else:
            checkpoint = run_dir.load_checkpoint(latest)
            self.optimizer = OuterOptimizer(checkpoint.params, settings.outer)
            self.optimizer.load_state_dict(checkpoint.optimizer_tensors, checkpoint.metadata)
        self.strategy = FedMetaStrategy(self.optimizer, settings.sampling)
        self.recipes: dict[str, str] = {}

    def model(self) -> ModelRecords:
        return model_records(self.optimizer.params)

    def train(self, grid: Grid, server_round: int, config: ConfigRecord, secure_name: str,
              settings: ServerSettings) -> Mapping[str, float]:
        model = self.model()
        if settings.sampling.secure.enabled:
            _, metrics = secure_training_round(grid, self.strategy, server_round, model, config, secure_name,
                                               settings.timeout)
        else:
            replies = exchange(grid, self.strategy.configure_train(server_round, model, config, grid),
                               timeout=settings.timeout)
            _, metrics = self.strategy.aggregate_train(server_round, replies)
        return metrics or {}

    def checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
        return self.optimizer.params, self.optimizer.state_dict(), self.optimizer.metadata()

    def package(self, run_dir: RunDirectory, source: DataSource, evaluation: EvaluationSettings,
                server_round: int) -> ModelPackage:
        return write_run_package(run_dir, self.optimizer.params, source, evaluation, server_round)

    def evaluation(self, evaluation: EvaluationSettings) -> EvaluationSettings:
        return evaluation


class _TreeRounds:
    """Federated trees' rounds (`server.strategy.trees`): the factories' new trees appended to the ensemble;
    in the last round each factory also scores the adaptation recipes, and the best for each K is kept."""

    def __init__(self, run_dir: RunDirectory, settings: ServerSettings, source: DataSource, algorithm: str,
                 config: Mapping[str, object]) -> None:
        ensemble, self.recipes, _ = _tree_start(run_dir, settings, config)
        self.strategy = TreeStrategy(ensemble, settings.sampling, tree_shape(source.model_config, source.task_kind),
                                     settings.round.tree_settings(), cyclic=algorithm == "xgb-cyclic")
        self.shots = settings.evaluation.shots
        self.last_round = settings.num_rounds

    @property
    def ensemble(self) -> bytes:
        return self.strategy.ensemble

    def model(self) -> ModelRecords:
        return ensemble_records(self.ensemble)

    def train(self, grid: Grid, server_round: int, config: ConfigRecord, secure_name: str,
              settings: ServerSettings) -> Mapping[str, float]:
        if server_round == self.last_round:
            config = ConfigRecord({**config, "recipe-shots": list(self.shots)})
        replies = exchange(grid, self.strategy.configure_train(server_round, self.model(), config, grid),
                           timeout=settings.timeout)
        _, metrics = self.strategy.aggregate_train(server_round, replies)
        if server_round == self.last_round:
            self.recipes = {str(k): recipe.name for k, recipe in best_recipes(metrics, self.shots).items()}
        return metrics

    def checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
        ensemble = torch.frombuffer(bytearray(self.ensemble), dtype=torch.uint8) if self.ensemble \
            else torch.zeros(0, dtype=torch.uint8)
        return {ENSEMBLE_PARAMETER: ensemble}, {}, {TREE_RECIPES_KEY: json.dumps(self.recipes)}

    def package(self, run_dir: RunDirectory, source: DataSource, evaluation: EvaluationSettings,
                server_round: int) -> ModelPackage:
        return write_tree_package(run_dir, self.ensemble, source, self.evaluation(evaluation), server_round)

    def evaluation(self, evaluation: EvaluationSettings) -> EvaluationSettings:
        """The evaluation settings with the recipe chosen for each K (none before the last round)."""
        recipes = tuple(f"{k}={recipe}" for k, recipe in self.recipes.items())
        return dataclasses.replace(evaluation, tree_recipes=recipes)


def _tree_start(run_dir: RunDirectory, settings: ServerSettings,
                config: Mapping[str, object]) -> tuple[bytes, dict[str, str], dict[str, Tensor]]:
    """A tree run's ensemble, recipes and checkpointed tensors: empty for a fresh run (its config written), else
    the last checkpoint's."""
    latest = run_dir.latest_round()
    if latest is None:
        run_dir.write_config(config, overwrite=settings.resume)
        return EMPTY_ENSEMBLE, {}, {}
    checkpoint = run_dir.load_checkpoint(latest)
    ensemble = checkpoint.params[ENSEMBLE_PARAMETER].numpy().tobytes()
    return ensemble, json.loads(checkpoint.metadata.get(TREE_RECIPES_KEY, "{}")), checkpoint.params


class _HistogramRounds(_TreeRounds):
    """``xgb-histogram``'s rounds (`server.strategy.histogram_trees`): the bins from the factories' sketches in the
    first round and, for a regression, the mean target to start from (`start_at_mean`), then each round
    ``local-trees`` boosting rounds grown level by level on their summed histograms (`grow_round`, as the
    benchmark grows them); the last round also asks for the recipes' losses."""

    def __init__(self, run_dir: RunDirectory, settings: ServerSettings, source: DataSource, algorithm: str,
                 config: Mapping[str, object]) -> None:
        self._ensemble, self.recipes, params = _tree_start(run_dir, settings, config)
        self.edges = params[BIN_EDGES_PARAMETER].numpy() if BIN_EDGES_PARAMETER in params else None
        self.shape, self.trees = tree_shape(source.model_config, source.task_kind), settings.round.tree_settings()
        self.strategy = HistogramTreeStrategy(settings.sampling, self.shape, self.trees.bins)
        self.shots = settings.evaluation.shots
        self.last_round = settings.num_rounds

    @property
    def ensemble(self) -> bytes:
        return self._ensemble

    def model(self) -> ModelRecords:
        return histogram_model_records(self._ensemble, self.edges)

    def _ask(self, grid: Grid, server_round: int, config: ConfigRecord, timeout: float, exchange_type: str,
             **fields: object) -> list[Message]:
        """One exchange with the round's factories; the round's first opens it (their policies count it)."""
        config = self.strategy.exchange_config(config, exchange_type, opens_round=not self._opened, **fields)
        self._opened = True
        return exchange(grid, self.strategy.configure_train(server_round, self.model(), config, grid), timeout=timeout)

    def train(self, grid: Grid, server_round: int, config: ConfigRecord, secure_name: str,
              settings: ServerSettings) -> Mapping[str, float]:
        self.strategy.start_round(server_round)
        self._opened = False
        if self.edges is None:
            replies = self._ask(grid, server_round, config, settings.timeout, protocol.TREE_SKETCH)
            self.edges = merge_sketches(self.strategy.sketches(replies), self.trees.bins)
        metrics = {"replies": math.inf, "rejected": 0.0, "model-unchanged": 0.0}

        def ask(splits: LevelSplits) -> list[tuple[str, list[np.ndarray]]]:
            replies = self._ask(grid, server_round, config, settings.timeout, protocol.TREE_HISTOGRAMS,
                                **{protocol.LEVEL_SPLITS: json.dumps(splits.to_json())})
            return self.strategy.histograms(replies)

        needed = settings.sampling.min_train_nodes
        self._ensemble, started = start_at_mean(self._ensemble, self.edges, self.shape, self.trees, ask, needed=needed)
        metrics["rejected"] += started.get("rejected", 0.0)
        for _ in range(self.trees.local_trees):
            self._ensemble, summary = grow_round(self._ensemble, self.edges, self.shape, self.trees, ask, needed=needed)
            metrics = {"replies": min(metrics["replies"], summary["replies"]),
                       "rejected": metrics["rejected"] + summary["rejected"],
                       "model-unchanged": max(metrics["model-unchanged"], summary.get("model-unchanged", 0.0))}
        if server_round == self.last_round:
            replies = self._ask(grid, server_round, config, settings.timeout, protocol.TREE_RECIPES,
                                **{"recipe-shots": list(self.shots)})
            _, scored = self.strategy.aggregate_train(server_round, replies)
            metrics.update(scored)
            self.recipes = {str(k): recipe.name for k, recipe in best_recipes(scored, self.shots).items()}
        return metrics

    def checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
        params, state, metadata = super().checkpoint()
        if self.edges is not None:
            params[BIN_EDGES_PARAMETER] = torch.from_numpy(self.edges.copy())
        return params, state, metadata


def _start_rounds(run_dir: RunDirectory, settings: ServerSettings, source: DataSource, algorithm: str):
    """The run's rounds, fresh or from the last checkpoint when resuming; never overwrite a run."""
    config = {RUN_ID: _run_id(run_dir), "algorithm": algorithm,
              **json.loads(json.dumps(dataclasses.asdict(settings), default=list))}
    latest = run_dir.latest_round()
    if latest is not None and not settings.resume:
        raise CheckpointError(run_dir.path, "already holds checkpoints; resume it or choose a new run folder")
    kind = _HistogramRounds if algorithm == HISTOGRAM_ALGORITHM else \
        _TreeRounds if is_tree_algorithm(algorithm) else _NetworkRounds
    rounds = kind(run_dir, settings, source, algorithm, config)
    if latest is None:
        return rounds, 1
    run_dir.truncate_metrics_after(latest)
    log.info("resuming %s from round %d", run_dir.path, latest)
    return rounds, latest + 1


def _last_line(reason: str) -> str:
    """An error reply's last line, unquoted: a simulated factory's carries Ray's whole traceback before it."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return lines[-1].rstrip("'>") if lines else reason


class NoFactoriesError(RuntimeError):
    """Too few of a simulation's factories can take part: their apps failed (their data, say)."""


def _await_factories(grid: Grid, strategy: FactorySeats, settings: ServerSettings, wanted: int) -> None:
    """Discover the connected factories (asking only nodes not met yet: late ones join).

    In a deployment factories connect when they are ready, so wait up to the run's
    ``timeout`` for ``wanted`` training factories. A simulation (Flower's in-memory grid) registers its nodes all
    at once, though possibly just after the ServerApp first looks (Flower starts the ServerApp's thread before it
    registers them): once they are there, where too few said their role and others failed to, waiting cannot
    help, and `NoFactoriesError` names why.
    """
    deadline = time.monotonic() + settings.timeout
    while True:
        failed = strategy.discover_nodes(grid, settings.timeout)
        trained = len(strategy.seats_with_role("train"))
        if failed and isinstance(grid, InMemoryGrid) and trained < wanted:
            node, reason = next(iter(sorted(failed.items())))
            raise NoFactoriesError(f"{len(failed)} of the simulation's {len(strategy.connected or ())} nodes could "
                                   f"not take part, {trained} training factories of the {wanted} needed did; node "
                                   f"{node}: {_last_line(reason)}")
        if trained >= wanted or time.monotonic() >= deadline:
            return
        time.sleep(FACTORY_POLL_S)


def run_experiment(
    grid: Grid,
    settings: ServerSettings,
    source: DataSource,
    algorithm: str,
    run_path: Path,
    progress: ProgressFn | None = None,
) -> None:
    """Federated meta-training of ``algorithm`` for ``settings.num_rounds`` rounds."""
    run_dir = RunDirectory(run_path)
    rounds, first_round = _start_rounds(run_dir, settings, source, algorithm)
    strategy = rounds.strategy
    run_id = str(run_dir.read_config()[RUN_ID])  # secure rounds are named by run and round
    round_config = dataclasses.replace(settings.round, algorithm=algorithm)
    evaluation = dataclasses.replace(settings.evaluation, algorithm=algorithm)
    with RunView(run_dir, algorithm, settings.num_rounds, first_round) as view:
        for server_round in range(first_round, settings.num_rounds + 1):
            wanted = settings.sampling.min_train_nodes
            if server_round == first_round:  # a deployment's factories connect one by one: start with them all
                wanted = max(wanted, settings.wait_for_factories)
            _await_factories(grid, strategy, settings, wanted)
            view.factories((seat.info.factory, role) for role in ("train", "evaluate")
                           for seat in strategy.seats_with_role(role))
            started = time.perf_counter()
            train_config = ConfigRecord(dataclasses.replace(round_config, server_round=server_round).to_config())
            train_metrics = rounds.train(grid, server_round, train_config, f"{run_id}/{server_round}", settings)
            record: dict[str, object] = {"round": server_round, "algorithm": algorithm}
            record.update({f"train/{k}": v for k, v in _finite_or_text(train_metrics).items()})
            record.update({f"train/tree-recipe-k{k}": name for k, name in rounds.recipes.items()} if
                          server_round == settings.num_rounds else {})
            last = server_round == settings.num_rounds
            due = last or (settings.eval_every and server_round % settings.eval_every == 0)
            if due and not strategy.seats_with_role("evaluate"):
                log.warning("round %d is not evaluated: no held-out factory (one whose role is 'evaluate') has "
                            "joined, so the run records no held-out figures", server_round)
            elif due:
                eval_config = ConfigRecord(rounds.evaluation(evaluation).to_config())
                replies = exchange(
                    grid, strategy.configure_evaluate(server_round, rounds.model(), eval_config, grid),
                    timeout=settings.timeout,
                )
                eval_metrics = strategy.aggregate_evaluate(server_round, replies)
                record.update({f"eval/{k}": v for k, v in _finite_or_text(eval_metrics or {}).items()})
            record["seconds"] = time.perf_counter() - started
            run_dir.append_metrics(record)
            params, optimizer_state, metadata = rounds.checkpoint()
            run_dir.save_checkpoint(server_round, params, optimizer_state, {**metadata, "algorithm": algorithm})
            view.round_finished(record)
            if progress is not None:
                progress(record)
        package = rounds.package(run_dir, source, evaluation, settings.num_rounds)
        deliver_package(grid, strategy, package, settings.timeout)
