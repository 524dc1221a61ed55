"""`fedmeta adapt`: a model package adapted to a factory's own labelled rows, with an honest report.

The factory's inputs are scaled with its own statistics (`common.data.scaling`: every row of its table,
whether or not the rows adapted on are all of them) and a regression target with the rows adapted on
(`TargetScaling`; a constant target is refused). Then every model the factory could use
(`client.floor.candidates`: the package adapted with its recipe, the package unadapted, a closed-form head
on its features, least squares or logistic regression on the rows, the same network trained on the rows
alone) is fitted on all folds of those rows but one and scored on that one (up to 5 folds, stratified by
class; each fold's target scale from its own training rows). The package written is the best by that
score, fitted on all the rows, unless ``keep`` names another: a factory is never handed a model its own
report shows worse without asking for it. The report and the manifest name the choice and every
candidate's score. The adapted recipe is the package's fixed steps or, for a cross-validated recipe, the
one chosen on those rows (`common.meta.adaptation_recipe`, one-standard-error rule) among no adaptation,
the package's steps and a wider grid than the federation's evaluation affords (`factory_candidates`: a
factory adapts once). The adapted package records its lineage: which package, which rows (by hash).

A window model learns from windows instead of rows (`windows`): the window ending at each row
that has a full window in its group, labelled with that row's target; the scaling still comes
from every row of the table, per channel. ``--rows N`` takes the N windows that ended first (by
the time of their last row, ties in file order). Neighbouring windows of one unit share rows, so
cross-validation holds out whole groups when there are two or more (where they differ in size,
every fold is cut to the smallest, `common.meta.adaptation_recipe.fold_batch`), and stretches of
consecutive windows when there is one. The adapted package records the group and time columns it
read the table by, so that predict and update rebuild the same windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedmeta.client.floor.candidates import REPORTED, FittedTrees, candidate_names, fit_candidate
from fedmeta.common import Recipe, TaskBatch, expected_f1_threshold, prior_shift, support_folds
from fedmeta.common.data.connector import DataSchema
from fedmeta.common.data.connector.windows import Windows
from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.meta.adaptation_recipe import MAX_FOLDS, fold_batch
from fedmeta.common.package.model_package import BOOSTED, CLOSED_FORM, Manifest, ModelPackage, PackageSchema

__all__ = [
    "AdaptationReport",
    "AdaptedPackage",
    "adapt_package",
    "factory_candidates",
    "failure_probabilities",
    "labelled_examples",
    "require_factory_scaling",
    "rows_as_task",
    "rows_digest",
    "stratified_units",
    "table_schema",
]

# A factory adapts once, not once per evaluation task, so it can afford a wider search than the
# federation's evaluation (`RECIPE_CANDIDATES`): up to as many steps as the rows-alone network gets.
FACTORY_STEPS, FACTORY_SCALES = (1, 3, 10, 30, 100), (0.3, 1.0, 3.0)


def factory_candidates(default_steps: int) -> tuple[Recipe, ...]:
    """No adaptation, the package's recipe, and every step count of `FACTORY_STEPS` at every step-size
    scale of `FACTORY_SCALES`, from the least adaptation to the most."""
    recipes = {Recipe(0), Recipe(default_steps), *(Recipe(s, c) for s in FACTORY_STEPS for c in FACTORY_SCALES)}
    return tuple(sorted(recipes, key=lambda recipe: (recipe.steps * recipe.lr_scale, recipe.steps)))


def table_schema(manifest: Manifest, schema: DataSchema | None = None) -> DataSchema:
    """How to read a factory's table for ``manifest``'s model: its columns, its classes. A factory's
    own schema may say how its file is written (delimiter, decimal mark, ID, group and time columns)
    but must name the package's features, in order, its target and its task (``ValueError``
    otherwise); the group and time columns it leaves out are the package's. A window model needs
    both (``ValueError`` naming what is missing)."""
    wanted = manifest.schema
    if schema is None:
        schema = DataSchema(wanted.features, wanted.target, wanted.task, group_column=wanted.group_column,
                            time_column=wanted.time_column, classes=wanted.classes)
    reading = _checked_schema(wanted, schema)
    length = manifest.window_length
    unnamed = [key for key in ("group_column", "time_column") if getattr(reading, key) is None]
    if length is not None and unnamed:
        raise ValueError(f"the model reads windows of {length} consecutive rows of one unit, so its table needs a "
                         f"group column (each row's unit or machine) and a time column; name {' and '.join(unnamed)} "
                         "in --schema (the package names none)")
    return reading


def _checked_schema(wanted: PackageSchema, schema: DataSchema) -> DataSchema:
    """``schema`` with the package's classes and, where it names none, the package's group and time columns."""
    problems = []
    if schema.features != wanted.features:
        missing = [f for f in wanted.features if f not in schema.features]
        extra = [f for f in schema.features if f not in wanted.features]
        detail = f"missing {missing}, not in the package {extra}" if missing or extra else "in another order"
        problems.append(f"the schema's features differ from the package's {list(wanted.features)}: {detail}")
    if schema.target != wanted.target:
        problems.append(f"the schema's target is {schema.target!r}, the package's {wanted.target!r}")
    if schema.task != wanted.task:
        problems.append(f"the schema's task is {schema.task!r}, the package's {wanted.task!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return dataclasses.replace(schema, classes=wanted.classes, group_column=schema.group_column or wanted.group_column,
                               time_column=schema.time_column or wanted.time_column)


@dataclass(frozen=True)
class AdaptationReport:
    """Held-out-fold scores of every candidate (`client.floor.candidates`), the one ``best`` by them and the
    one ``chosen`` (the best, unless ``--keep`` named another); ``rows`` counts the labelled examples, which
    are ``examples`` ("rows", or "windows"); the recipe is the chosen model's (no adaptation for a model
    fitted otherwise)."""

    rows: int
    folds: int
    task: str
    scores: dict[str, dict[str, float]]
    recipe_steps: int
    recipe_lr_scale: float
    examples: str
    chosen: str
    best: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class AdaptedPackage:
    """What `adapt_package` gives: the adapted weights (Meta-SGD rates kept) or trees, its manifest and report."""

    weights: dict[str, Tensor]
    inner_lrs: dict[str, Tensor]
    manifest: Manifest
    report: AdaptationReport
    ensemble: bytes = b""

    def package(self) -> ModelPackage:
        return ModelPackage(self.weights, self.inner_lrs, self.manifest, ensemble=self.ensemble)


def stratified_units(y: Tensor, kind: str) -> Tensor:
    """A unit id per row such that dealing units to folds in id order stratifies by class (regression:
    row order)."""
    if kind != "classification":
        return torch.arange(len(y))
    order = torch.argsort(y, stable=True)
    units = torch.empty_like(order)
    units[order] = torch.arange(len(y))
    return units


def labelled_examples(x: Tensor, y: Tensor, kind: str, windows: Windows | None = None,
                      count: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``count`` (default: all) labelled examples of a factory's rows ``x [n, features]`` (raw or
    scaled) and ``y [n]``, with the unit cross-validation holds out whole: each row (stratified, see
    `stratified_units`), or, for a window model, each of ``windows`` with its last row's target."""
    if windows is None:
        x, y = x[:count], y[:count]
        return x, y, stratified_units(y, kind)
    return windows.gather(x, count), windows.targets(y, count), windows.units(count)


def rows_as_task(x: Tensor, y: Tensor, units: Tensor) -> TaskBatch:
    """All rows as one task's support set (its query set is unused: one row keeps shapes valid)."""
    return TaskBatch(x[None], y[None], x[None, :1], y[None, :1], support_groups=units[None])


def _scores(metrics: dict[str, float], kind: str) -> dict[str, float]:
    if kind == "classification":
        return {"cross-entropy": metrics["query_loss"], "accuracy": metrics["query_accuracy"]}
    return {"mse": metrics["query_loss"], "rmse": math.sqrt(metrics["query_loss"])}


def _cross_validated(package: ModelPackage, batch: TaskBatch, seed: int,
                     names: tuple[str, ...]) -> tuple[int, dict[str, dict[str, float]]]:
    """Each candidate (`client.floor.candidates`) fitted on all folds but one and scored on that one; the number
    of folds and the mean scores, in the factory's units."""
    kind = package.manifest.schema.task
    folds = support_folds(batch.support_y, kind, MAX_FOLDS, groups=batch.support_groups)
    if folds is None:
        raise ValueError("adapting needs at least 2 labelled rows, so that one can be held out to report the error")
    folded = fold_batch(batch, folds)
    if package.manifest.standardized_target:  # each fold's target scale from its own training rows, as at a factory
        folded = folded.standardize_targets()
    recipes = factory_candidates(package.manifest.adaptation.steps)
    scores = {name: _scores(fit_candidate(name, package, folded, seed, recipes).scores(folded, kind), kind)
              for name in names}
    return folded.num_tasks, scores


def _best(scores: dict[str, dict[str, float]], kind: str) -> str:
    """The candidate of least held-out error (ties: the first listed), of those a factory keeps unasked."""
    metric = "cross-entropy" if kind == "classification" else "mse"
    return min((name for name in scores if name not in REPORTED), key=lambda name: scores[name][metric])


def failure_probabilities(logits: Tensor, decision: Mapping[str, Any], classes: Sequence[str]) -> Tensor:
    """``[n]`` probabilities of the failure class at the factory's failure rate: a prior shift
    (`common.package.decision.prior_shift`) from the failure share of the rows the model was adapted on, the
    mix its probabilities are calibrated for."""
    failure = list(classes).index(decision["failure_class"])
    ordered = logits[:, [1 - failure, failure]]
    rate, adapted = float(decision["failure_rate"]), float(decision["adapted_rate"])
    shifted = prior_shift(ordered, torch.tensor([1 - rate, rate]), torch.tensor([1 - adapted, adapted]))
    return shifted[:, 1].exp().float()


def _decision(model: torch.nn.Module, weights: Mapping[str, Tensor], x: Tensor, y_adapted: Tensor,
              classes: Sequence[str], failure_class: str | None, failure_rate: float) -> dict[str, Any]:
    """The failure threshold that maximises the expected F1 on the factory's own rows ``x`` (scaled,
    labels unused) at its failure rate; ``y_adapted`` are the labels the model was adapted on."""
    if len(classes) != 2:
        raise ValueError("--failure-rate applies to two-class models only")
    failure_class = classes[1] if failure_class is None else failure_class
    if failure_class not in classes:
        raise ValueError(f"--failure-class {failure_class!r} is not one of the model's classes {list(classes)}")
    failures = int((y_adapted == classes.index(failure_class)).sum())
    adapted_rate = (failures + 1) / (len(y_adapted) + 2)  # smoothed: a share of 0 or 1 has no prior shift
    decision: dict[str, Any] = {"failure_class": failure_class, "failure_rate": failure_rate,
                                "adapted_rate": adapted_rate}
    with torch.no_grad():
        logits = torch.func.functional_call(model, dict(weights), (x,))
    decision["threshold"] = expected_f1_threshold(failure_probabilities(logits, decision, classes).numpy())
    return decision


def rows_digest(x: Tensor, y: Tensor) -> str:
    """Which rows an adapted package was fitted on, without keeping them."""
    sha = hashlib.sha256()
    for tensor in (x, y):
        sha.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return sha.hexdigest()


def require_factory_scaling(manifest: Manifest) -> None:
    """A ``ValueError`` unless ``manifest``'s inputs are scaled from a factory's own rows: a package scaled by
    its data source (a shared data set's loader, a synthetic generator: C-MAPSS per operating condition,
    the synthetic fault family per window) cannot be fed a factory's table."""
    if manifest.scaling_rule != "factory-rows":
        raise ValueError("this package's inputs were scaled by the data set it was trained on, not from a "
                         "factory's own rows, so it cannot be adapted to a table")


def _target_scaling(manifest: Manifest, y: Tensor, examples: str) -> TargetScaling | None:
    """The target statistics of the labelled ``y`` where the package standardises its target; a constant
    target is a ``ValueError`` (nothing to adapt to, and no spread to scale by)."""
    if not manifest.standardized_target:
        return None
    if bool((y == y[0]).all()):
        raise ValueError(f"the target {manifest.schema.target!r} is {float(y[0]):g} in every one of the {len(y)} "
                         f"labelled {examples} adapted on: there is no variation to adapt to")
    return TargetScaling.fit(y)


def adapt_package(package: ModelPackage, x: Tensor, y: Tensor, *, rows: int | None = None, seed: int = 0,
                  table: str = "", failure_rate: float | None = None, failure_class: str | None = None,
                  windows: Windows | None = None, keep: str | None = None) -> AdaptedPackage:
    """Adapt ``package`` to the first ``rows`` (default: all) labelled examples of a factory's rows
    ``x [n, features]`` (raw, as in its table) with labels ``y [n]``: the rows themselves or, for a
    window model, its ``windows`` (`common.data.connector.windows.read_window_table`). The input scaling comes from
    all ``n`` rows. With ``failure_rate`` (two classes) the package also gets the failure threshold
    for that rate, set on all the examples (`common.package.decision`)."""
    manifest = package.manifest
    require_factory_scaling(manifest)
    if (windows is None) != (manifest.window_length is None):
        raise ValueError("a window model adapts on the windows of a table, a row model on its rows")
    total = len(y) if windows is None else len(windows)
    examples = "rows" if windows is None else "windows"
    rows = total if rows is None else rows
    if not 2 <= rows <= total:
        raise ValueError(f"--rows must be between 2 and the table's {total} labelled {examples}, got {rows}")
    kind = manifest.schema.task
    names = candidate_names(kind, trees=manifest.trees is not None)
    if keep is not None and keep not in names:
        raise ValueError(f"--keep must name one of the candidates {list(names)}, got {keep!r}")
    scaling = FeatureScaling.fit(x)
    scaled = scaling.apply(x)
    x_rows, y_rows, units = labelled_examples(scaled, y, kind, windows, rows)
    target = _target_scaling(manifest, y_rows, examples)
    folds, scores = _cross_validated(package, rows_as_task(x_rows, y_rows, units), seed, names)
    best = _best(scores, kind)
    chosen = best if keep is None else keep
    batch = rows_as_task(x_rows, y_rows if target is None else target.apply(y_rows), units)
    fitted = fit_candidate(chosen, package, batch, seed, factory_candidates(manifest.adaptation.steps))
    weights = fitted.task_weights(0)
    recipe = fitted.recipe or Recipe(0)
    report = AdaptationReport(rows, folds, kind, scores, recipe.steps, recipe.lr_scale, examples, chosen, best)
    raw_x, raw_y, _ = labelled_examples(x, y, kind, windows, rows)
    lineage = {"package_sha256": manifest.weights_sha256, "package_run": manifest.run, "package_round": manifest.round,
               "table": table, "rows": rows, "rows_sha256": rows_digest(raw_x, raw_y), "scaling_rows": len(y)}
    decision = None
    if failure_rate is not None:
        decision = _decision(fitted.model, weights, labelled_examples(scaled, y, kind, windows)[0], y_rows,
                             list(manifest.schema.classes or ()), failure_class, failure_rate)
    schema = manifest.schema
    if windows is not None:  # how the windows were read: predict and update rebuild them the same way
        schema = dataclasses.replace(schema, group_column=windows.group_column, time_column=windows.time_column)
    trees = fitted if isinstance(fitted, FittedTrees) else None
    # the package's own network (adapted, or from scratch) keeps its recipe; a solved head or trees theirs
    network = trees is None and manifest.trees is None and fitted.model.config == manifest.model
    algorithm = manifest.adaptation.algorithm if network else BOOSTED if trees else CLOSED_FORM
    adapted = dataclasses.replace(manifest, schema=schema, model=fitted.model.config, scaling=scaling,
                                  adaptation=dataclasses.replace(manifest.adaptation, algorithm=algorithm),
                                  trees=None if trees is None else trees.plan, target_scaling=target,
                                  lineage=lineage, weights_sha256="", versions={}, decision=decision, chosen=chosen,
                                  metrics={f"{name}/{metric}": value for name, values in scores.items()
                                           for metric, value in values.items()})
    return AdaptedPackage(weights, dict(package.inner_lrs) if network else {}, adapted, report,
                          b"" if trees is None else trees.ensembles[0])
