"""How much to adapt, chosen from a factory's own K rows by cross-validation on its support set.

A fixed recipe (always ``steps`` steps at one step size) can make a model worse: with more
rows, a steep task or a model already close to the factory, the same steps overshoot. Here
each task's recipe is chosen among candidates, "no adaptation" first, by the loss each
candidate reaches on held-out folds of that task's own support rows (the query rows are
never looked at), with the one-standard-error rule: the least adaptation whose mean fold
loss is within one standard error of the best candidate's. With a handful of rows the fold
losses are noisy, and the plain minimum over many candidates would often pick a recipe that
only looked better by chance. The chosen recipe then adapts on all support rows. Folds keep every
class in every training part where the rows allow (stratified by each row's rank within
its class), so a K-shot classification task is cross-validated leave-one-row-per-class-out.
A task with too few rows to hold any out keeps the default recipe.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedmeta.common.meta.algorithms import adapt_to_support
from fedmeta.common.meta.inner_loop import Params, predict
from fedmeta.common.meta.losses import task_losses
from fedmeta.common.meta.tasks import TaskBatch

__all__ = [
    "RECIPE_CANDIDATES",
    "Recipe",
    "RecipeChoice",
    "adapt_with_recipes",
    "choose_recipes",
    "fold_batch",
    "recipe_candidates",
    "support_folds",
]


@dataclass(frozen=True)
class Recipe:
    """``steps`` gradient steps at the base step size times ``lr_scale`` (Meta-SGD: its learned rates)."""

    steps: int
    lr_scale: float = 1.0


def _by_effort(recipes: set[Recipe]) -> tuple[Recipe, ...]:
    """From the least adaptation to the most (steps x step size), "none" first."""
    return tuple(sorted(recipes, key=lambda recipe: (recipe.steps * recipe.lr_scale, recipe.steps)))


# Up to 10 steps (the default evaluation's): each candidate step size costs one adaptation run of
# its longest candidate per fold, so longer candidates would multiply a factory's adaptation time.
RECIPE_CANDIDATES: tuple[Recipe, ...] = _by_effort(
    {Recipe(0), *(Recipe(steps, scale) for scale in (0.3, 1.0) for steps in (1, 3, 10))}
)


def recipe_candidates(default_steps: int) -> tuple[Recipe, ...]:
    """`RECIPE_CANDIDATES` plus the fixed recipe (``default_steps`` at the base step size)."""
    return _by_effort({*RECIPE_CANDIDATES, Recipe(default_steps)})
MAX_FOLDS = 5


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class RecipeChoice:
    """Per task: the index of the chosen candidate, every candidate's mean fold loss ``[T, C]``
    and its standard error."""

    candidates: tuple[Recipe, ...]
    chosen: Tensor
    losses: Tensor
    standard_errors: Tensor

    def recipes(self) -> list[Recipe]:
        return [self.candidates[int(i)] for i in self.chosen]


def _group_folds(groups: Tensor, max_folds: int) -> Tensor | None:
    """Whole units to folds: each task's distinct units in id order, dealt round-robin to as many folds
    as every task has units (at most ``max_folds``); None where a task has a single unit."""
    units = [torch.unique(task, return_inverse=True) for task in groups]
    count = min(min(len(distinct) for distinct, _ in units), max_folds)
    if count < 2:
        return None
    return torch.stack([inverse % count for _, inverse in units])


def support_folds(
    support_y: Tensor, kind: str, max_folds: int = MAX_FOLDS, groups: Tensor | None = None
) -> Tensor | None:
    """Fold of every support row ``[T, S]``, -1 for rows always kept for training; every fold of
    every task holds as many rows (classification: as many of each class). None when no row
    can be held out while the rest keeps a row of every class (regression: 2 rows). With
    ``groups`` (the unit of each row, `TaskBatch.support_groups`) a fold holds whole units
    and folds may differ in size."""
    if groups is not None:
        return _group_folds(groups, max_folds)
    tasks, rows = support_y.shape
    if kind == "classification":
        # A row's rank among its class's rows of the task: fold r holds one row of each class.
        same = support_y[:, :, None] == support_y[:, None, :]
        earlier = torch.ones(rows, rows, dtype=torch.bool, device=support_y.device).tril(-1)
        rank = (same & earlier).sum(-1)
        per_class = int(same.sum(-1).min())
        if per_class < 2 or not bool((same.sum(-1) == per_class).all()):
            return None
        count = min(per_class, max_folds)
        return torch.where(rank < count * (per_class // count), rank % count, -1)
    if rows < 2:
        return None
    count = min(rows, max_folds)
    position = torch.arange(rows, device=support_y.device).expand(tasks, rows)
    return torch.where(position < count * (rows // count), position % count, -1)


def fold_batch(batch: TaskBatch, folds: Tensor) -> TaskBatch:
    """Every fold of every task as one task ``[F * T, ...]`` (fold-major): the rows outside the fold
    as its support set, those in it as its query set. Where folds differ in size (whole units),
    every fold keeps as many rows of each part as the smallest fold and task has, in row order."""

    def rows(t: Tensor, index: Tensor) -> Tensor:
        return torch.gather(t, 1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:]))

    fold_ids = range(int(folds.max()) + 1)
    held = min(int((folds == fold).sum(dim=1).min()) for fold in fold_ids)
    kept = min(int((folds != fold).sum(dim=1).min()) for fold in fold_ids)
    parts = []
    for fold in fold_ids:
        inside = (folds == fold).to(torch.int8)
        index_kept = torch.argsort(inside, dim=1, stable=True)[:, :kept]  # rows outside the fold first
        index_out = torch.argsort(1 - inside, dim=1, stable=True)[:, :held]  # rows inside the fold first
        sx, sy = batch.support_x, batch.support_y
        parts.append((rows(sx, index_kept), rows(sy, index_kept), rows(sx, index_out), rows(sy, index_out)))
    return TaskBatch(*(torch.cat(tensors) for tensors in zip(*parts, strict=True)))


def _scaled(lr: float | Mapping[str, Tensor], scale: float) -> float | dict[str, Tensor]:
    return {n: t * scale for n, t in lr.items()} if isinstance(lr, Mapping) else lr * scale


def _held_out_losses(model: nn.Module, params: Mapping[str, Tensor], batch: TaskBatch, kind: str) -> Tensor:
    with torch.no_grad():
        return task_losses(predict(model, dict(params), batch.query_x), batch.query_y, kind).cpu()


def choose_recipes(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    kind: str,
    lr: float | Mapping[str, Tensor],
    adapt_names: Collection[str] | None = None,
    candidates: Sequence[Recipe] = RECIPE_CANDIDATES,
    default: Recipe | None = None,
) -> RecipeChoice:
    """Each task's recipe by the one-standard-error rule over its support folds; ``candidates`` must
    be ordered from the least adaptation to the most. Tasks whose rows allow no folds get
    ``default`` (the first candidate if None), with NaN losses.

    All folds of all tasks adapt at once (one task each), and one run per step size is scored
    at every candidate step count along its way.
    """
    candidates = tuple(candidates)
    if not candidates:
        raise ValueError("choose_recipes needs at least one candidate recipe")
    fallback = candidates.index(default) if default is not None and default in candidates else 0
    folds = support_folds(batch.support_y, kind, groups=batch.support_groups)
    tasks = batch.num_tasks
    if folds is None:
        nan = torch.full((tasks, len(candidates)), float("nan"))
        return RecipeChoice(candidates, torch.full((tasks,), fallback, dtype=torch.long), nan, nan)
    folded = fold_batch(batch, folds)
    fold_count = folded.num_tasks // tasks
    per_fold = torch.zeros(fold_count * tasks, len(candidates))
    for scale in sorted({recipe.lr_scale for recipe in candidates}):
        wanted = {recipe.steps: index for index, recipe in enumerate(candidates) if recipe.lr_scale == scale}

        def score(steps: int, params: Mapping[str, Tensor], wanted: dict[int, int] = wanted) -> None:
            if steps in wanted:
                per_fold[:, wanted[steps]] = _held_out_losses(model, params, folded, kind)

        start = adapt_to_support(model, weights, folded, kind=kind, steps=0, lr=lr)
        score(0, start)
        adapt_to_support(model, weights, folded, kind=kind, steps=max(wanted), lr=_scaled(lr, scale),
                         adapt_names=adapt_names, after_step=score)
    per_fold = per_fold.view(fold_count, tasks, len(candidates))
    losses = per_fold.mean(dim=0)
    errors = per_fold.std(dim=0) / fold_count**0.5 if fold_count > 1 else torch.zeros_like(losses)
    finite = torch.where(torch.isfinite(losses), losses, torch.inf)  # a diverged candidate is never chosen
    best = finite.argmin(dim=1, keepdim=True)
    bound = finite.gather(1, best) + errors.gather(1, best)
    chosen = (finite <= bound).to(torch.int8).argmax(dim=1)  # the first (least adaptation) within the bound
    return RecipeChoice(candidates, chosen, losses, errors)


def adapt_with_recipes(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    batch: TaskBatch,
    choice: RecipeChoice,
    *,
    kind: str,
    lr: float | Mapping[str, Tensor],
    adapt_names: Collection[str] | None = None,
) -> Params:
    """Every task adapted on all its support rows with its chosen recipe (task-batched parameters)."""
    out: Params = {}
    for index in torch.unique(choice.chosen).tolist():
        tasks = torch.nonzero(choice.chosen == index).flatten()
        recipe = choice.candidates[index]
        part = TaskBatch(batch.support_x[tasks], batch.support_y[tasks], batch.query_x[tasks], batch.query_y[tasks])
        params = adapt_to_support(model, weights, part, kind=kind, steps=recipe.steps,
                                  lr=_scaled(lr, recipe.lr_scale), adapt_names=adapt_names)
        for name, value in params.items():
            if name not in out:
                out[name] = value.detach().new_empty(batch.num_tasks, *value.shape[1:])
            out[name][tasks.to(value.device)] = value.detach()
    return out
