"""K-shot evaluation of a global model on one factory's tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.client.factory import LoadedFactory, sampler_for
from fedmeta.common import (
    NUM_EXAMPLES,
    DataSource,
    EvaluationSettings,
    MetaModel,
    Recipe,
    RecipeChoice,
    TaskBatch,
    adapt_to_support,
    adapt_with_recipes,
    adapted_names,
    build_model,
    choose_recipes,
    evaluate_adaptation,
    local_algorithm,
    query_metrics,
    recipe_candidates,
    unpack_meta_parameters,
)

__all__ = ["Adaptation", "evaluate_factory", "initial_weights", "local_only_adaptation", "prepare_adaptation"]


def initial_weights(model: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    """A freshly initialised model's weights, seeded: the local-only baseline's start."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@dataclass(frozen=True)
class Adaptation:
    """How a factory adapts a global model: which weights, step sizes and parameters."""

    model: MetaModel
    kind: str
    weights: dict[str, Tensor]
    lr: float | dict[str, Tensor]
    names: list[str]

    def adapt(self, batch: TaskBatch, steps: int, *, cross_validate: bool = False,
              candidates: Sequence[Recipe] | None = None) -> dict[str, Tensor]:
        """Each task's parameters after ``steps`` steps on its support set (task-batched); with
        ``cross_validate`` after the recipe each task chooses on its support folds instead
        (``steps`` at the base step size is one candidate, and the fallback where no fold fits)."""
        if not cross_validate or steps == 0:
            return adapt_to_support(self.model, self.weights, batch, kind=self.kind, steps=steps, lr=self.lr,
                                    adapt_names=self.names)
        return adapt_with_recipes(self.model, self.weights, batch, self.choose(batch, steps, candidates),
                                  kind=self.kind, lr=self.lr, adapt_names=self.names)

    def choose(self, batch: TaskBatch, steps: int, candidates: Sequence[Recipe] | None = None) -> RecipeChoice:
        """Each task's recipe, cross-validated on its support rows (`common.adaptation_recipe`), among
        ``candidates`` (default: `recipe_candidates`), ordered from the least adaptation to the most."""
        return choose_recipes(self.model, self.weights, batch, kind=self.kind, lr=self.lr, adapt_names=self.names,
                              candidates=candidates or recipe_candidates(steps), default=Recipe(steps))

    def score(self, batch: TaskBatch, steps: int, *, cross_validate: bool = False) -> dict[str, float]:
        if not cross_validate or steps == 0:
            return evaluate_adaptation(self.model, self.weights, batch, kind=self.kind, steps=steps, lr=self.lr,
                                       adapt_names=self.names)
        choice = self.choose(batch, steps)
        params = adapt_with_recipes(self.model, self.weights, batch, choice, kind=self.kind, lr=self.lr,
                                    adapt_names=self.names)
        metrics = query_metrics(self.model, params, batch, self.kind)
        metrics["recipe-steps"] = float(sum(r.steps for r in choice.recipes()) / batch.num_tasks)
        metrics["recipe-unadapted"] = float(sum(r.steps == 0 for r in choice.recipes()) / batch.num_tasks)
        return metrics


def prepare_adaptation(
    factory: LoadedFactory, params: Mapping[str, Tensor], settings: EvaluationSettings, *, device: torch.device
) -> Adaptation:
    """The adaptation `evaluate_factory` runs: the global weights (Meta-SGD: its learned rates)."""
    source = factory.source
    model = build_model(source.model_config)
    weights, inner_lrs = unpack_meta_parameters(params)
    weights = {n: w.to(device) for n, w in weights.items()}
    lr = {n: t.to(device) for n, t in inner_lrs.items()} if inner_lrs else settings.lr
    names = adapted_names(model, local_algorithm(settings.algorithm))
    return Adaptation(model, source.task_kind, weights, lr, names)


def local_only_adaptation(source: DataSource, settings: EvaluationSettings) -> Adaptation:
    """The local-only baseline: a seeded fresh model trained on the support rows at ``local-only-lr``."""
    model = build_model(source.model_config)
    weights = initial_weights(model, settings.seed)
    return Adaptation(model, source.task_kind, weights, settings.local_only_lr, list(weights))


def evaluate_factory(
    factory: LoadedFactory, params: Mapping[str, Tensor], settings: EvaluationSettings, *, device: torch.device
) -> dict[str, float]:
    """Metrics ``loss-k{K}`` (and ``accuracy-k{K}``, ``local-loss-k{K}``) for each K.

    ``k0`` is the global model without adaptation.
    """
    adaptation = prepare_adaptation(factory, params, settings, device=device)
    local_only = local_only_adaptation(factory.source, settings) if settings.local_only_steps else None
    metrics: dict[str, float] = {NUM_EXAMPLES: 0}
    for k in settings.shots:
        sampler = sampler_for(factory, k, settings.query_size, seed=settings.seed, stream=f"eval-k{k}")
        batch = sampler.sample(settings.tasks).to(device)
        if k == settings.shots[0]:
            _record(metrics, "k0", adaptation.score(batch, steps=0))
        _record(metrics, f"k{k}", adaptation.score(batch, steps=settings.steps,
                                                    cross_validate=settings.recipe == "cross-validated"))
        if local_only is not None:
            _record(metrics, f"k{k}", local_only.score(batch, settings.local_only_steps), prefix="local-")
        metrics[NUM_EXAMPLES] += batch.query_y.numel()
    return metrics


def _record(metrics: dict[str, float], suffix: str, scores: Mapping[str, float], prefix: str = "") -> None:
    for name, value in scores.items():
        metrics[f"{prefix}{name.removeprefix('query_')}-{suffix}"] = value
