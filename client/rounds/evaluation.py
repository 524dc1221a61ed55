"""K-shot evaluation of a global model on one factory's tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from fedmeta.client.rounds.factory import LoadedFactory, sampler_for
from fedmeta.client.rounds.trees import chosen_recipe, rows_alone_trees, tree_predictor
from fedmeta.common import (
    NUM_EXAMPLES,
    DataSource,
    EvaluationSettings,
    adapted_names,
    build_model,
    local_algorithm,
    model_config_for,
    unpack_meta_parameters,
)
from fedmeta.common.meta.adaptation import Adaptation, initial_weights
from fedmeta.common.meta.algorithms import task_scores
from fedmeta.common.meta.factory_choice import Predictor, chosen_losses, linear_predictor
from fedmeta.common.meta.inner_loop import predict
from fedmeta.common.meta.tasks import TaskBatch
from fedmeta.common.trees.settings import TreeRecipe

__all__ = [
    "evaluate_factory", "evaluate_trees", "factory_predictors", "local_only_adaptation", "prepare_adaptation",
    "score_shots",
]


def prepare_adaptation(
    factory: LoadedFactory, params: Mapping[str, Tensor], settings: EvaluationSettings, *, device: torch.device
) -> Adaptation:
    """The adaptation `evaluate_factory` runs: the global weights (Meta-SGD: its learned rates)."""
    source, algorithm = factory.source, local_algorithm(settings.algorithm)
    model = build_model(model_config_for(source, algorithm))
    weights, inner_lrs = unpack_meta_parameters(params)
    weights = {n: w.to(device) for n, w in weights.items()}
    lr = {n: t.to(device) for n, t in inner_lrs.items()} if inner_lrs else settings.lr
    names = adapted_names(model, algorithm)
    return Adaptation(model, source.task_kind, weights, lr, names, closed_form=algorithm == "r2d2")


def local_only_adaptation(source: DataSource, settings: EvaluationSettings) -> Adaptation:
    """The local-only baseline: a seeded fresh model trained on the support rows at ``local-only-lr``."""
    model = build_model(source.model_config)
    weights = initial_weights(model, settings.seed)
    return Adaptation(model, source.task_kind, weights, settings.local_only_lr, list(weights))


def _predictor(adaptation: Adaptation, steps: int, cross_validate: bool = False) -> Predictor:
    """Each task's query predictions after ``adaptation`` on its support rows."""

    def predictions(batch: TaskBatch) -> Tensor:
        params = adaptation.adapt(batch, steps, cross_validate=cross_validate)
        with torch.no_grad():
            return predict(adaptation.model, params, batch.query_x)

    return predictions


def factory_predictors(factory: LoadedFactory, adaptation: Adaptation,
                       settings: EvaluationSettings) -> dict[str, Predictor]:
    """What a factory can do with its K rows, each fitted on a task's support rows: the federation's model
    adapted (``adaptation``, as evaluated) and unadapted, and the linear model on the rows; the candidates
    `common.meta.factory_choice` chooses among, as `fedmeta adapt` does. The local-only network is left out of
    the choice: trained again on every fold of every task, it would multiply the evaluation's cost several times
    over. Trees on the rows alone are scored beside the choice, not in it (`client.floor.candidates.REPORTED`)."""
    return {
        "adapted": _predictor(adaptation, settings.steps, settings.recipe == "cross-validated"),
        "unadapted": _predictor(adaptation, 0),
        "linear": _linear(factory),
    }


def _linear(factory: LoadedFactory) -> Predictor:
    return linear_predictor(factory.source.task_kind, factory.source.model_config.output_dim)


def evaluate_factory(
    factory: LoadedFactory, params: Mapping[str, Tensor], settings: EvaluationSettings, *, device: torch.device
) -> dict[str, float]:
    """Metrics ``loss-k{K}`` (and ``accuracy-k{K}``) for each K, with the same tasks' ``local-`` (the
    local-only network, where on), ``linear-`` (least squares or logistic regression on the K rows) and
    ``chosen-`` ones (the model each task keeps by cross-validation on its K rows among `factory_predictors`,
    `common.meta.factory_choice`).

    ``k0`` is the global model without adaptation (a standardised target put on the support rows' scale).
    """
    adaptation = prepare_adaptation(factory, params, settings, device=device)
    choices = factory_predictors(factory, adaptation, settings)
    others = {"trees-alone": rows_alone_trees(factory, settings.seed)}
    if settings.local_only_steps:
        others["local"] = _predictor(local_only_adaptation(factory.source, settings), settings.local_only_steps)
    adapted = None
    if settings.recipe == "cross-validated":  # also reports what the tasks chose (adapting them once more)
        def adapted(batch: TaskBatch) -> Mapping[str, float | Tensor]:
            return adaptation.score(batch, steps=settings.steps, cross_validate=True)
    return score_shots(factory, settings, lambda k: choices, others, device=device, adapted=adapted)


def evaluate_trees(factory: LoadedFactory, ensemble: bytes, settings: EvaluationSettings) -> dict[str, float]:
    """`evaluate_factory`'s metrics for federated trees: ``adapted`` is the ensemble after each K's recipe
    (`client.rounds.trees.chosen_recipe`), ``unadapted`` the ensemble as it is."""
    linear = _linear(factory)

    def choices(k: int) -> dict[str, Predictor]:
        return {"adapted": tree_predictor(factory, ensemble, chosen_recipe(settings, k), settings),
                "unadapted": tree_predictor(factory, ensemble, TreeRecipe(0, 0.0), settings), "linear": linear}

    return score_shots(factory, settings, choices, {"trees-alone": rows_alone_trees(factory, settings.seed)},
                       device=torch.device("cpu"))


def score_shots(
    factory: LoadedFactory, settings: EvaluationSettings, choices: Callable[[int], Mapping[str, Predictor]],
    others: Mapping[str, Predictor], *, device: torch.device,
    adapted: Callable[[TaskBatch], Mapping[str, float | Tensor]] | None = None,
) -> dict[str, float]:
    """For each K, the same tasks scored by each of ``choices(K)`` (``adapted``, ``unadapted``, ``linear``: what a
    factory can do with its K rows), by ``others`` (``local``, ``trees-alone``) and by the choice each task makes
    among ``choices(K)`` (``chosen-``); ``adapted`` replaces the adapted model's scores where given."""
    kind = factory.source.task_kind
    metrics: dict[str, float] = {NUM_EXAMPLES: 0}
    for k in settings.shots:
        sampler = sampler_for(factory, k, settings.query_size, seed=settings.seed, stream=f"eval-k{k}")
        batch = sampler.sample(settings.tasks).to(device)
        options = choices(k)
        scores = {name: task_scores(predictor(batch), batch, kind) for name, predictor in {**options, **others}.items()}
        if k == settings.shots[0]:
            _record(metrics, "k0", scores["unadapted"])
        _record(metrics, f"k{k}", adapted(batch) if adapted is not None else scores["adapted"])
        for name in ("local", "linear", "trees-alone"):
            if name in scores:
                _record(metrics, f"k{k}", scores[name], prefix=f"{name}-")
        _record(metrics, f"k{k}", chosen_losses(options, batch, kind, scores)[0], prefix="chosen-")
        metrics[NUM_EXAMPLES] += batch.query_y.numel()
    return metrics


def _record(metrics: dict[str, float], suffix: str, scores: Mapping[str, float | Tensor], prefix: str = "") -> None:
    """``scores`` (means, or per-task values averaged here) as ``{prefix}{name}-{suffix}``."""
    for name, value in scores.items():
        mean = float(value.mean()) if isinstance(value, Tensor) else value
        metrics[f"{prefix}{name.removeprefix('query_')}-{suffix}"] = mean
