"""How a model adapts to a factory's few rows: its weights, step sizes and adapted parameters, scored
with or without a recipe cross-validated on the support rows. The federation's evaluation rounds and
the factory floor's `fedmeta adapt` share it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.common.meta.adaptation_recipe import (
    Recipe,
    RecipeChoice,
    adapt_with_recipes,
    choose_recipes,
    recipe_candidates,
)
from fedmeta.common.meta.algorithms import adapt_to_support, evaluate_adaptation, query_metrics
from fedmeta.common.meta.closed_form_head import solve_learned_head
from fedmeta.common.meta.models import MetaModel
from fedmeta.common.meta.tasks import TaskBatch

__all__ = ["Adaptation", "initial_weights"]


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
    closed_form: bool = False  # ``r2d2``: the head is solved on the support rows (with its learned penalty)

    def adapt(self, batch: TaskBatch, steps: int, *, cross_validate: bool = False,
              candidates: Sequence[Recipe] | None = None) -> dict[str, Tensor]:
        """Each task's parameters after ``steps`` steps on its support set (task-batched); with
        ``cross_validate`` after the recipe each task chooses on its support folds instead
        (``steps`` at the base step size is one candidate, and the fallback where no fold fits).
        A closed-form head is solved on the support rows instead (any ``steps`` but 0: none)."""
        if self.closed_form and steps > 0:
            with torch.no_grad():
                return solve_learned_head(self.model, self.weights, batch, self.kind)
        if not cross_validate or steps == 0:
            return adapt_to_support(self.model, self.weights, batch, kind=self.kind, steps=steps, lr=self.lr,
                                    adapt_names=self.names)
        return self.adapt_choosing(batch, steps, candidates)[0]

    def adapt_choosing(self, batch: TaskBatch, steps: int,
                       candidates: Sequence[Recipe] | None = None) -> tuple[dict[str, Tensor], RecipeChoice]:
        """Each task's parameters after the recipe it chooses on its support folds (`choose`), and the choice."""
        choice = self.choose(batch, steps, candidates)
        params = adapt_with_recipes(self.model, self.weights, batch, choice, kind=self.kind, lr=self.lr,
                                    adapt_names=self.names)
        return params, choice

    def choose(self, batch: TaskBatch, steps: int, candidates: Sequence[Recipe] | None = None) -> RecipeChoice:
        """Each task's recipe, cross-validated on its support rows (`common.meta.adaptation_recipe`), among
        ``candidates`` (default: `recipe_candidates`), ordered from the least adaptation to the most."""
        return choose_recipes(self.model, self.weights, batch, kind=self.kind, lr=self.lr, adapt_names=self.names,
                              candidates=candidates or recipe_candidates(steps), default=Recipe(steps))

    def score(self, batch: TaskBatch, steps: int, *, cross_validate: bool = False) -> dict[str, float]:
        if self.closed_form:
            return query_metrics(self.model, self.adapt(batch, steps), batch, self.kind)
        if not cross_validate or steps == 0:
            return evaluate_adaptation(self.model, self.weights, batch, kind=self.kind, steps=steps, lr=self.lr,
                                       adapt_names=self.names)
        params, choice = self.adapt_choosing(batch, steps)
        metrics = query_metrics(self.model, params, batch, self.kind)
        metrics["recipe-steps"] = float(sum(r.steps for r in choice.recipes()) / batch.num_tasks)
        metrics["recipe-unadapted"] = float(sum(r.steps == 0 for r in choice.recipes()) / batch.num_tasks)
        return metrics
