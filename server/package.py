"""The run's model package (`common.model_package`), written into the run folder after the last round."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from fedmeta.common import DataSource, EvaluationSettings, unpack_meta_parameters
from fedmeta.common.model_package import AdaptationPlan, Manifest, ModelPackage, load_package, save_package
from fedmeta.server.checkpoint import RunDirectory

__all__ = ["PACKAGE_FOLDER", "write_run_package"]

PACKAGE_FOLDER = "model"


def _held_out_metrics(run_dir: RunDirectory, round: int) -> dict[str, float]:
    """The held-out factories' metrics of ``round`` (its ``eval/`` entries), finite values only."""
    for record in reversed(run_dir.read_metrics()):
        if record.get("round") == round:
            values = {key.removeprefix("eval/"): value for key, value in record.items() if key.startswith("eval/")}
            return {key: float(value) for key, value in values.items()
                    if isinstance(value, int | float) and math.isfinite(float(value))}
    return {}


def write_run_package(
    run_dir: RunDirectory,
    params: Mapping[str, Tensor],
    source: DataSource,
    evaluation: EvaluationSettings,
    round: int,
) -> ModelPackage:
    """``<run>/model``: the final global model with the run's adaptation recipe. A run resumed after
    its package was written gets the same package back (it is never rewritten)."""
    path = Path(run_dir.path) / PACKAGE_FOLDER
    if path.exists():
        return load_package(path)
    weights, inner_lrs = unpack_meta_parameters(params)
    manifest = Manifest(
        schema=source.package_schema,
        model=source.model_config,
        adaptation=AdaptationPlan(evaluation.algorithm, evaluation.steps, evaluation.lr, evaluation.recipe),
        scaling_rule=source.scaling_rule,
        run=Path(run_dir.path).name,
        round=round,
        metrics=_held_out_metrics(run_dir, round),
    )
    return save_package(path, weights, inner_lrs, manifest)
