"""The run's model package (`common.package.model_package`): written into the run folder after the last round,
then delivered to every connected factory, training or evaluate-only (`fedmeta.client.rounds.package`). A tree
run's package holds its ensemble and the recipe the federation chose for each K."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from flwr.serverapp import Grid
from torch import Tensor

from fedmeta.common import (
    DataSource,
    EvaluationSettings,
    local_algorithm,
    model_config_for,
    pack_meta_parameters,
    unpack_meta_parameters,
)
from fedmeta.common.federation import protocol
from fedmeta.common.package.model_package import (
    AdaptationPlan,
    Manifest,
    ModelPackage,
    PackageError,
    load_package,
    save_package,
    save_tree_package,
)
from fedmeta.server.checkpoint import RunDirectory
from fedmeta.server.strategy.fedmeta import FactorySeats, exchange, model_records
from fedmeta.server.strategy.trees import ensemble_records

__all__ = ["PACKAGE_FOLDER", "RUN_ID", "deliver_package", "write_run_package", "write_tree_package"]

log = logging.getLogger(__name__)

PACKAGE_FOLDER = "model"
RUN_ID = "run-id"  # config.json's entry naming the run in its packages (the folder's name where absent)


def _held_out_metrics(run_dir: RunDirectory, round: int) -> dict[str, float]:
    """The held-out factories' metrics of ``round`` (its ``eval/`` entries), finite values only."""
    for record in reversed(run_dir.read_metrics()):
        if record.get("round") == round:
            values = {key.removeprefix("eval/"): value for key, value in record.items() if key.startswith("eval/")}
            return {key: float(value) for key, value in values.items()
                    if isinstance(value, int | float) and math.isfinite(float(value))}
    return {}


def _run_name(run_dir: RunDirectory) -> str:
    recorded = run_dir.read_config().get(RUN_ID) if run_dir.config_path.exists() else None
    return recorded if isinstance(recorded, str) else Path(run_dir.path).name


def _kept_package(path: Path, round: int) -> ModelPackage | None:
    """The package already at ``path`` if it is of ``round`` (a resumed run that had finished gets it back). One of
    an earlier round (a finished run resumed for more rounds) is moved aside to ``model-round-NNNNNN``, never
    overwritten: the new package takes its place."""
    if not path.exists():
        return None
    existing = load_package(path)
    if existing.manifest.round == round:
        return existing
    aside = path.with_name(f"{path.name}-round-{existing.manifest.round:06d}")
    if aside.exists():
        raise PackageError(aside, "already exists; the earlier package cannot be moved aside")
    path.rename(aside)
    log.info("the package of round %d moved to %s", existing.manifest.round, aside)
    return None


def _manifest(run_dir: RunDirectory, source: DataSource, evaluation: EvaluationSettings, round: int,
              **fields: object) -> Manifest:
    """The run package's manifest: the source's schema and scaling, the run and its held-out metrics."""
    return Manifest(schema=source.package_schema, scaling_rule=source.scaling_rule, run=_run_name(run_dir),
                    round=round, metrics=_held_out_metrics(run_dir, round), **fields)


def write_run_package(
    run_dir: RunDirectory,
    params: Mapping[str, Tensor],
    source: DataSource,
    evaluation: EvaluationSettings,
    round: int,
) -> ModelPackage:
    """``<run>/model``: the final global model with the run's adaptation recipe. A run resumed after
    its package was written gets the same package back (it is never rewritten, `_kept_package`)."""
    path = Path(run_dir.path) / PACKAGE_FOLDER
    if (kept := _kept_package(path, round)) is not None:
        return kept
    weights, inner_lrs = unpack_meta_parameters(params)
    manifest = _manifest(
        run_dir, source, evaluation, round,
        model=model_config_for(source, local_algorithm(evaluation.algorithm)),
        adaptation=AdaptationPlan(evaluation.algorithm, evaluation.steps, evaluation.lr, evaluation.recipe),
    )
    return save_package(path, weights, inner_lrs, manifest)


def write_tree_package(run_dir: RunDirectory, ensemble: bytes, source: DataSource, evaluation: EvaluationSettings,
                       round: int) -> ModelPackage:
    """``<run>/model`` of a tree run: the ensemble and how a factory continues it (``evaluation.tree_plan()``:
    the recipe chosen for each K). Its adaptation names the tree algorithm; the network config it records says
    what the trees read (a table's columns or windows) and is what a factory's rows-alone network is built as."""
    path = Path(run_dir.path) / PACKAGE_FOLDER
    if (kept := _kept_package(path, round)) is not None:
        return kept
    manifest = _manifest(run_dir, source, evaluation, round, model=source.model_config,
                         adaptation=AdaptationPlan(evaluation.algorithm, 0, evaluation.lr),
                         trees=evaluation.tree_plan())
    return save_tree_package(path, ensemble, manifest)


def deliver_package(grid: Grid, strategy: FactorySeats, package: ModelPackage, timeout: float | None) -> int:
    """Send the package to every connected factory node; how many stored it. A node that fails or
    names no model folder is logged: the run's own copy in ``<run>/model`` is already safe."""
    model = ensemble_records(package.ensemble) if package.manifest.trees is not None else \
        model_records(pack_meta_parameters(package.weights, package.inner_lrs))
    messages = strategy.configure_delivery(model, json.dumps(package.manifest.to_json()))
    stored = 0
    for reply in exchange(grid, messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d did not store the model package: %s", node, reply.error.reason)
        elif reply.content[protocol.METRICS][protocol.STORED]:
            stored += 1
        else:
            log.info("node %d names no model folder; it did not store the model package", node)
    log.info("model package delivered: %d of %d factory nodes stored it", stored, len(messages))
    return stored
