"""The models a factory could use, each fitted on its own labelled rows: what `fedmeta adapt` chooses among.

A factory judges a federation by one thing: is the model it gets better than what it could build itself?
So `fedmeta adapt` fits every way of getting a model on folds of the factory's rows, scores each on the
fold it did not see, and keeps the best (`client.floor.adapt`). The candidates:

- ``adapted``: the package adapted with its recipe (`common.meta.adaptation`).
- ``unadapted``: the package as the federation delivered it, its predictions put on the rows' target scale.
- ``rows alone``: the package's network from seeded fresh weights, trained on the rows alone.
- ``least squares`` (regression) or ``logistic regression`` (classification): a linear model of the
  factory-scaled inputs (a window model: its last step's channels) fitted on the rows; the ridge penalty
  chosen by leave-one-out, the logistic one fixed (`common.meta.closed_form_head.LOGISTIC_PENALTY`).
- ``closed-form head``: the package's learned features beside those inputs with a linear head solved on the
  rows (`common.meta.closed_form_head`), as R2-D2 adapts (Bertinetto et al., ICLR 2019), at feature
  scale 1 and the same penalty rule.
- ``trees alone``: gradient-boosted trees on the rows alone (`common.trees.settings.ROWS_ALONE_TREES`: 20 trees
  of depth 3 at rate 0.3, XGBoost), the other model a factory would build itself. It is scored and reported
  but kept only when asked (`REPORTED`): with few rows it barely splits, and its near-even class probabilities
  won the held-out-fold cross-entropy against sharper networks while ranking failures poorly (AI4I, K = 5,
  seed 0: kept where it won, the factory's F1 fell from 0.326 to 0.272 and its AUROC from 0.881 to 0.783).

A tree package (the federation's gradient-boosted trees) is ``adapted`` by boosting more trees on the rows,
as many and at the rate the federation chose for that many rows (`common.trees.continuation`), and
``unadapted`` as it is; it has no learned features for a closed-form head, and its ``rows alone`` model is
``trees alone``.

The linear candidates are packages of the same architecture with the head reading the inputs too
(`common.meta.models.ModelConfig.skip_inputs`): least squares is the closed-form head at feature scale 0.
So every candidate is a model and its parameters, scored one way and written one way, and `predict`,
`update`, `export` and `optimize` work whichever is chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from fedmeta.common import (
    Recipe,
    TaskBatch,
    adapted_names,
    build_model,
    local_algorithm,
    query_metrics,
)
from fedmeta.common.meta.adaptation import Adaptation, initial_weights
from fedmeta.common.meta.algorithms import task_scores
from fedmeta.common.meta.closed_form_head import solve_head
from fedmeta.common.meta.models import PENALTY, MetaModel, ModelConfig
from fedmeta.common.package.model_package import ModelPackage
from fedmeta.common.package.tree_model import TreeModel
from fedmeta.common.trees.continuation import continue_boosting
from fedmeta.common.trees.settings import ROWS_ALONE_TREES, TreePlan, TreeRecipe
from fedmeta.common.trees.shape import tree_shape

__all__ = [
    "CANDIDATES",
    "LOCAL_ONLY_STEPS",
    "REPORTED",
    "Fitted",
    "FittedTrees",
    "boosted_trees",
    "candidate_names",
    "fit_candidate",
    "linear_name",
    "package_adaptation",
    "rows_alone_adaptation",
]

LOCAL_ONLY_STEPS = 100  # the rows-alone network: seeded fresh weights, this many steps at the package's step size


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class Fitted:
    """A candidate's model and its parameters for each of ``T`` tasks (task-batched, or shared where no
    task changed them); ``recipe`` is the adaptation recipe of task 0 where the candidate has one."""

    model: MetaModel
    params: dict[str, Tensor]
    recipe: Recipe | None = None

    def task_weights(self, task: int) -> dict[str, Tensor]:
        """Task ``task``'s weights, shaped as the model's own parameters."""
        shapes = {name: p.shape for name, p in self.model.named_parameters()}
        return {name: (value[task] if value.dim() > len(shapes[name]) else value).detach().clone()
                for name, value in self.params.items()}

    def scores(self, batch: TaskBatch, kind: str) -> dict[str, float]:
        return query_metrics(self.model, self.params, batch, kind)


@dataclass(frozen=True)
class FittedTrees:
    """A tree candidate: its ensemble (XGBoost JSON) for each of ``T`` tasks, reading what a network of
    ``config`` reads, and the plan an update continues it by."""

    ensembles: tuple[bytes, ...]
    config: ModelConfig
    kind: str
    plan: TreePlan
    recipe: Recipe | None = None  # no gradient steps

    @cached_property
    def model(self) -> TreeModel:
        """Task 0's trees as a model (read once: adapting asks for its config and its decision threshold)."""
        return TreeModel(self.ensembles[0], self.config, self.kind)

    def task_weights(self, task: int) -> dict[str, Tensor]:
        return {}  # trees have no weights: their model is the ensemble

    def scores(self, batch: TaskBatch, kind: str) -> dict[str, float]:
        predictions = torch.stack([TreeModel(ensemble, self.config, kind)(batch.query_x[task])
                                   for task, ensemble in enumerate(self.ensembles)])
        return {f"query_{name}": float(values.mean()) for name, values in task_scores(predictions, batch, kind).items()}


def boosted_trees(start: bytes, plan: TreePlan, recipe: TreeRecipe, config: ModelConfig, kind: str,
                  batch: TaskBatch, seed: int) -> FittedTrees:
    """``start`` (empty: no trees) continued on each task's support rows by ``recipe``, boosting as ``plan`` says
    (which an update then follows)."""
    shape = tree_shape(config, kind)
    ensembles = tuple(continue_boosting(start, batch.support_x[task], batch.support_y[task], shape, plan.settings,
                                        recipe, seed=seed + task) for task in range(batch.num_tasks))
    return FittedTrees(ensembles, config, kind, plan)


def package_adaptation(package: ModelPackage) -> Adaptation:
    """The package's weights, step sizes (Meta-SGD: its learned ones) and adapted parameters."""
    manifest = package.manifest
    model = build_model(manifest.model)
    lr = package.inner_lrs or manifest.adaptation.lr
    algorithm = local_algorithm(manifest.adaptation.algorithm)
    return Adaptation(model, manifest.schema.task, package.weights, lr, adapted_names(model, algorithm),
                      closed_form=algorithm == "r2d2")


def rows_alone_adaptation(package: ModelPackage, seed: int) -> Adaptation:
    """What a factory could build from its rows alone: the package's network with seeded fresh weights,
    trained ``LOCAL_ONLY_STEPS`` steps at the package's step size (every parameter)."""
    model = build_model(package.manifest.model)
    weights = initial_weights(model, seed)
    return Adaptation(model, package.manifest.schema.task, weights, package.manifest.adaptation.lr,
                      model.forward_parameter_names())


Fit = Callable[[ModelPackage, TaskBatch, int, tuple[Recipe, ...]], Fitted | FittedTrees]


def linear_name(kind: str) -> str:
    return "least squares" if kind == "regression" else "logistic regression"


REPORTED = ("trees alone",)  # scored and reported beside the choice; kept only with --keep (module docstring)


def candidate_names(kind: str, trees: bool = False) -> tuple[str, ...]:
    """Every candidate for a task ``kind`` (of a tree package: ``trees``), in the order ties are broken in (the
    federation's first)."""
    if trees:
        return ("adapted", "unadapted", linear_name(kind), "trees alone")
    return ("adapted", "unadapted", "closed-form head", linear_name(kind), "rows alone", "trees alone")


def _support_rows(batch: TaskBatch) -> int:
    return batch.support_y.shape[1]


def _tree_package(package: ModelPackage, batch: TaskBatch, seed: int, boost: bool) -> FittedTrees:
    """The package's trees continued by the federation's recipe for the rows' count (``boost``), or as they are."""
    manifest, plan = package.manifest, package.manifest.trees
    recipe = plan.recipe_for(_support_rows(batch)) if boost else TreeRecipe(0, 0.0)
    return boosted_trees(package.ensemble, plan, recipe, manifest.model, manifest.schema.task, batch, seed)


def _adapted(package: ModelPackage, batch: TaskBatch, seed: int, candidates: tuple[Recipe, ...]) -> Fitted:
    if package.manifest.trees is not None:
        return _tree_package(package, batch, seed, boost=True)
    adaptation, plan = package_adaptation(package), package.manifest.adaptation
    if plan.recipe != "cross-validated" or plan.steps == 0:
        return Fitted(adaptation.model, adaptation.adapt(batch, plan.steps), Recipe(plan.steps))
    params, choice = adaptation.adapt_choosing(batch, plan.steps, candidates)  # on each task's own rows: nested
    return Fitted(adaptation.model, params, choice.recipes()[0])


def _unadapted(package: ModelPackage, batch: TaskBatch, seed: int, candidates: tuple[Recipe, ...]) -> Fitted:
    if package.manifest.trees is not None:
        return _tree_package(package, batch, seed, boost=False)
    adaptation = package_adaptation(package)
    return Fitted(adaptation.model, adaptation.adapt(batch, 0), Recipe(0))


def _rows_alone(package: ModelPackage, batch: TaskBatch, seed: int, candidates: tuple[Recipe, ...]) -> Fitted:
    alone = rows_alone_adaptation(package, seed)
    return Fitted(alone.model, alone.adapt(batch, LOCAL_ONLY_STEPS))


def _head_model(package: ModelPackage, feature_scale: float) -> tuple[MetaModel, dict[str, Tensor]]:
    """The package's architecture with a head that reads the inputs too, and its weights: the package's body,
    the learned features at ``feature_scale`` beside the inputs (head and penalty still to solve)."""
    config = dataclasses.replace(package.manifest.model, skip_inputs=True, head_prior=False)  # solved from zero
    model = build_model(config)
    weights = {name: value.detach() for name, value in model.named_parameters()}
    weights.update({name: value for name, value in package.weights.items() if name.startswith("body.")})
    return model, {**weights, "feature_scale": torch.full((1,), feature_scale), PENALTY: torch.zeros(1)}


def _solved_head(feature_scale: float) -> Fit:
    """The head solved on the rows over the package's features at ``feature_scale`` beside its inputs (0: the
    inputs alone, a linear model)."""

    def fit(package: ModelPackage, batch: TaskBatch, seed: int, candidates: tuple[Recipe, ...]) -> Fitted:
        model, weights = _head_model(package, feature_scale)
        with torch.no_grad():
            return Fitted(model, solve_head(model, weights, batch, package.manifest.schema.task, None))

    return fit


def _trees_alone(package: ModelPackage, batch: TaskBatch, seed: int, candidates: tuple[Recipe, ...]) -> FittedTrees:
    manifest = package.manifest
    recipe = ROWS_ALONE_TREES.recipe_for(_support_rows(batch))
    return boosted_trees(b"", ROWS_ALONE_TREES, recipe, manifest.model, manifest.schema.task, batch, seed)


CANDIDATES: dict[str, Fit] = {
    "adapted": _adapted,
    "unadapted": _unadapted,
    "closed-form head": _solved_head(1.0),
    "least squares": _solved_head(0.0),
    "logistic regression": _solved_head(0.0),
    "rows alone": _rows_alone,
    "trees alone": _trees_alone,
}


def fit_candidate(name: str, package: ModelPackage, batch: TaskBatch, seed: int,
                  recipes: tuple[Recipe, ...]) -> Fitted | FittedTrees:
    """Candidate ``name`` fitted on each task's support rows of ``batch`` (targets as the package
    predicts them: standardised where it standardises them); ``recipes`` are the adapted candidate's
    choices where its recipe is cross-validated."""
    return CANDIDATES[name](package, batch, seed, recipes)
