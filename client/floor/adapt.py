"""`fedmeta adapt`: a model package adapted to a factory's own labelled rows, with an honest report.

The factory's rows are scaled with its own statistics (`common.data.scaling`: every row of its table,
whether or not the rows adapted on are all of them), then adapted with the package's recipe
(`common.package.model_package.AdaptationPlan`): its fixed steps, or, for a cross-validated recipe, the
recipe chosen by cross-validation on those rows (`common.meta.adaptation_recipe`, one-standard-error
rule) among no adaptation, the package's steps and a wider grid than the federation's evaluation
affords (`factory_candidates`: a factory adapts once). The report says what the factory can
expect on rows it has not labelled yet: the error on held-out folds of its rows (up to 5,
stratified by class) of the adapted model, the unadapted package, the same network trained on
those rows alone and, for a regression on table rows, a least-squares line on those rows alone
(a few rows of a nearly linear process are fitted well by one), each fitted on the other folds
only. The adapted package records its lineage: which package, which rows (by hash).

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

from fedmeta.common import (
    Recipe,
    TaskBatch,
    adapt_with_recipes,
    adapted_names,
    build_model,
    expected_f1_threshold,
    local_algorithm,
    prior_shift,
    query_metrics,
    support_folds,
)
from fedmeta.common.data.connector import DataSchema
from fedmeta.common.data.connector.windows import Windows
from fedmeta.common.data.scaling import FeatureScaling
from fedmeta.common.meta.adaptation import Adaptation, initial_weights
from fedmeta.common.meta.adaptation_recipe import MAX_FOLDS, fold_batch
from fedmeta.common.package.model_package import Manifest, ModelPackage, PackageSchema

__all__ = [
    "LOCAL_ONLY_STEPS",
    "AdaptationReport",
    "AdaptedPackage",
    "adapt_package",
    "factory_candidates",
    "failure_probabilities",
    "labelled_examples",
    "package_adaptation",
    "require_factory_scaling",
    "rows_alone_adaptation",
    "rows_as_task",
    "rows_digest",
    "stratified_units",
    "table_schema",
]

LOCAL_ONLY_STEPS = 100  # the rows-alone network: seeded fresh weights, this many steps at the package's step size
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
    """Held-out-fold scores of the adapted model, the unadapted package and the rows-alone network;
    ``rows`` counts the labelled examples, which are ``examples`` ("rows", or "windows")."""

    rows: int
    folds: int
    task: str
    scores: dict[str, dict[str, float]]
    recipe_steps: int
    recipe_lr_scale: float
    examples: str = "rows"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class AdaptedPackage:
    """What `adapt_package` gives: the adapted weights (Meta-SGD rates kept), its manifest and report."""

    weights: dict[str, Tensor]
    inner_lrs: dict[str, Tensor]
    manifest: Manifest
    report: AdaptationReport


def package_adaptation(package: ModelPackage) -> Adaptation:
    """The package's weights, step sizes (Meta-SGD: its learned ones) and adapted parameters."""
    manifest = package.manifest
    model = build_model(manifest.model)
    lr = package.inner_lrs or manifest.adaptation.lr
    names = adapted_names(model, local_algorithm(manifest.adaptation.algorithm))
    return Adaptation(model, manifest.schema.task, package.weights, lr, names)


def rows_alone_adaptation(package: ModelPackage, seed: int) -> Adaptation:
    """What a factory could build from its rows alone: the package's network with seeded fresh weights,
    trained ``LOCAL_ONLY_STEPS`` steps at the package's step size (every parameter)."""
    model = build_model(package.manifest.model)
    weights = initial_weights(model, seed)
    return Adaptation(model, package.manifest.schema.task, weights, package.manifest.adaptation.lr, list(weights))


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


def _cross_validated(package: ModelPackage, batch: TaskBatch, seed: int) -> tuple[int, dict[str, dict[str, float]]]:
    """Each way of getting a model fitted on all folds but one and scored on that one; the number of
    folds and the mean scores."""
    plan, adaptation = package.manifest.adaptation, package_adaptation(package)
    kind = adaptation.kind
    folds = support_folds(batch.support_y, kind, MAX_FOLDS, groups=batch.support_groups)
    if folds is None:
        raise ValueError("adapting needs at least 2 labelled rows, so that one can be held out to report the error")
    folded = fold_batch(batch, folds)
    alone = rows_alone_adaptation(package, seed)
    cross_validate = plan.recipe == "cross-validated"
    fitted = {  # a cross-validated recipe is chosen on each fold's own training part: nested, so the score is honest
        "adapted": adaptation.adapt(folded, plan.steps, cross_validate=cross_validate,
                                    candidates=factory_candidates(plan.steps)),
        "unadapted": adaptation.adapt(folded, 0),
        "rows alone": alone.adapt(folded, LOCAL_ONLY_STEPS),
    }
    models = {"rows alone": alone.model}
    scores = {name: _scores(query_metrics(models.get(name, adaptation.model), params, folded, kind), kind)
              for name, params in fitted.items()}
    if kind == "regression" and folded.support_x.dim() == 3:  # table rows [folds, rows, features], not windows
        scores["rows alone, least squares"] = _scores({"query_loss": _least_squares_loss(folded)}, kind)
    return folded.num_tasks, scores


def _least_squares_loss(folded: TaskBatch) -> float:
    """Mean squared error on each fold of a line (with intercept) fitted by least squares on the fold's
    other rows; minimum-norm where those rows do not determine it."""

    def design(x: Tensor) -> Tensor:
        x = x.double()
        return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)

    fitted = torch.linalg.pinv(design(folded.support_x)) @ folded.support_y.double().unsqueeze(-1)
    predicted = (design(folded.query_x) @ fitted).squeeze(-1)
    return float(((predicted - folded.query_y.double()) ** 2).mean())


def failure_probabilities(logits: Tensor, decision: Mapping[str, Any], classes: Sequence[str]) -> Tensor:
    """``[n]`` probabilities of the failure class at the factory's failure rate: a prior shift
    (`common.package.decision.prior_shift`) from the failure share of the rows the model was adapted on, the
    mix its probabilities are calibrated for."""
    failure = list(classes).index(decision["failure_class"])
    ordered = logits[:, [1 - failure, failure]]
    rate, adapted = float(decision["failure_rate"]), float(decision["adapted_rate"])
    shifted = prior_shift(ordered, torch.tensor([1 - rate, rate]), torch.tensor([1 - adapted, adapted]))
    return shifted[:, 1].exp().float()


def _decision(adaptation: Adaptation, weights: Mapping[str, Tensor], x: Tensor, y_adapted: Tensor,
              classes: Sequence[str], failure_class: str | None, failure_rate: float) -> dict[str, Any]:
    """The failure threshold that maximises the expected F1 on the factory's own rows ``x`` (scaled,
    labels unused) at its failure rate; ``y_adapted`` are the labels the model was adapted on."""
    if adaptation.kind != "classification" or len(classes) != 2:
        raise ValueError("--failure-rate applies to two-class models only")
    failure_class = classes[1] if failure_class is None else failure_class
    if failure_class not in classes:
        raise ValueError(f"--failure-class {failure_class!r} is not one of the model's classes {list(classes)}")
    failures = int((y_adapted == classes.index(failure_class)).sum())
    adapted_rate = (failures + 1) / (len(y_adapted) + 2)  # smoothed: a share of 0 or 1 has no prior shift
    decision: dict[str, Any] = {"failure_class": failure_class, "failure_rate": failure_rate,
                                "adapted_rate": adapted_rate}
    with torch.no_grad():
        logits = torch.func.functional_call(adaptation.model, dict(weights), (x,))
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


def adapt_package(package: ModelPackage, x: Tensor, y: Tensor, *, rows: int | None = None, seed: int = 0,
                  table: str = "", failure_rate: float | None = None, failure_class: str | None = None,
                  windows: Windows | None = None) -> AdaptedPackage:
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
    scaling = FeatureScaling.fit(x)
    scaled = scaling.apply(x)
    adaptation = package_adaptation(package)
    x_rows, y_rows, units = labelled_examples(scaled, y, adaptation.kind, windows, rows)
    batch = rows_as_task(x_rows, y_rows, units)
    folds, scores = _cross_validated(package, batch, seed)
    plan = manifest.adaptation
    if plan.recipe == "cross-validated":
        choice = adaptation.choose(batch, plan.steps, factory_candidates(plan.steps))
        recipe = choice.recipes()[0]
        params = adapt_with_recipes(adaptation.model, adaptation.weights, batch, choice, kind=adaptation.kind,
                                    lr=adaptation.lr, adapt_names=adaptation.names)
    else:
        recipe = Recipe(plan.steps)
        params = adaptation.adapt(batch, plan.steps)
    weights = {name: params[name][0].detach().clone() for name in package.weights}
    report = AdaptationReport(rows, folds, adaptation.kind, scores, recipe.steps, recipe.lr_scale, examples)
    raw_x, raw_y, _ = labelled_examples(x, y, adaptation.kind, windows, rows)
    lineage = {"package_sha256": manifest.weights_sha256, "package_run": manifest.run, "package_round": manifest.round,
               "table": table, "rows": rows, "rows_sha256": rows_digest(raw_x, raw_y), "scaling_rows": len(y)}
    decision = None
    if failure_rate is not None:
        decision = _decision(adaptation, weights, labelled_examples(scaled, y, adaptation.kind, windows)[0], y_rows,
                             list(manifest.schema.classes or ()), failure_class, failure_rate)
    schema = manifest.schema
    if windows is not None:  # how the windows were read: predict and update rebuild them the same way
        schema = dataclasses.replace(schema, group_column=windows.group_column, time_column=windows.time_column)
    adapted = dataclasses.replace(manifest, schema=schema, scaling=scaling, lineage=lineage, weights_sha256="",
                                  versions={}, decision=decision,
                                  metrics={f"{name}/{metric}": value for name, values in scores.items()
                                           for metric, value in values.items()})
    return AdaptedPackage(weights, dict(package.inner_lrs), adapted, report)
