"""A model's linear head solved in closed form on each task's support rows: how the ``r2d2`` algorithm adapts.

The head reads the model's learned features (times a learned scale) beside the factory-scaled inputs
(`common.meta.models.ModelConfig.skip_inputs`) and is solved exactly on the support rows
(`common.meta.closed_form`). ``r2d2`` (`solve_learned_head`) solves ridge regression, each column at its
learned penalty; for a failure/no-failure decision a few Newton steps of logistic regression; for fault
classes ridge onto one-hot targets with a learned logit scale, as R2-D2 does: one S x S system per task
whatever the classes, where a Newton step of logistic regression over 9 classes of 65 features solves a
594 x 594 one. Where the factories' targets share units (`ModelConfig.head_prior`) it solves toward the
federation's own head: solved from zero, a head fitted to five windows of one engine or five rows of a
rare failure forgets what the federation knew (docs/benchmarks.md). Meta-training
differentiates through the solve into the body, the prior head, the feature scale, the penalties and the
logit scale (R2-D2, Bertinetto et al., ICLR 2019; MetaOptNet, Lee et al., CVPR 2019). A factory's own
closed-form candidates (`solve_head`) solve once, from zero: ridge at the penalty of least leave-one-out
error, or a few Newton steps of L2-penalised logistic regression for classes. On a plant that is linear in
its inputs a zero feature scale leaves least squares on the rows (at a small penalty); the federation
learns how much of its features to add.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.common.meta.closed_form import LinearHead, logistic_fit, logistic_fit_toward, ridge_fit, ridge_fit_loo
from fedmeta.common.meta.models import COLUMN_PENALTY, LOGIT_SCALE, PENALTY
from fedmeta.common.meta.tasks import TaskBatch

__all__ = ["LOGISTIC_PENALTY", "NEWTON_STEPS", "head_features", "solve_head", "solve_learned_head", "solve_linear"]

LOGISTIC_PENALTY = 1.0  # a logistic head's L2 penalty where none is learned: scikit-learn's default (C = 1)
NEWTON_STEPS = 10  # a logistic head's Newton steps from zero: converged on a few rows of a few classes
_FEW_ROWS_PENALTY = 1.0  # ridge on fewer than 3 rows, where leave-one-out has nothing to choose by


def head_features(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """What the head reads, ``[..., N, D]``, with ``params`` in place of the model's own."""
    return functional_call(model, dict(params), (x,), {"head": False})


def solve_linear(z: Tensor, y: Tensor, kind: str, classes: int, penalty: Tensor | None) -> tuple[LinearHead, Tensor]:
    """Each task's linear head on its support features ``z [T, S, D]`` and targets ``y [T, S]``, and the penalty
    it was solved with ``[T]`` (see `solve_head`)."""
    tasks, rows = z.shape[:2]
    if penalty is None and kind == "regression" and rows >= 3:
        return ridge_fit_loo(z, y)
    if penalty is None:
        default = LOGISTIC_PENALTY if kind == "classification" else _FEW_ROWS_PENALTY
        penalty = torch.full((tasks,), default, dtype=torch.float64)
    lam = penalty.reshape(-1).expand(tasks) if penalty.numel() == 1 else penalty
    if kind == "classification":
        return logistic_fit(z, y, classes, lam, steps=NEWTON_STEPS), lam
    return ridge_fit(z, y, lam), lam


def solve_head(model: nn.Module, params: Mapping[str, Tensor], batch: TaskBatch, kind: str,
               penalty: Tensor | None) -> dict[str, Tensor]:
    """``params`` with the head solved on each task's support rows (task-batched ``[T, ...]``) and the log of
    the penalty it was solved with: ``penalty`` (one, or ``[T]``; differentiable) or, where None, ridge at the
    penalty of least leave-one-out error and logistic regression at `LOGISTIC_PENALTY`."""
    z = head_features(model, params, batch.support_x)
    head, lam = solve_linear(z, batch.support_y, kind, model.config.output_dim, penalty)
    tasks = batch.num_tasks
    return {**params, "head.weight": head.coef.mT, "head.bias": head.intercept,
            PENALTY: lam.log().to(z.dtype).view(tasks, 1)}


def solve_learned_head(model: nn.Module, params: Mapping[str, Tensor], batch: TaskBatch,
                       kind: str) -> dict[str, Tensor]:
    """``params`` with the head solved as ``r2d2`` learns it (differentiable in every parameter).

    Each column of ``[features, 1]`` (the intercept's too) at its learned penalty ``exp(PENALTY +
    COLUMN_PENALTY[d])`` (the federation learns which directions a factory's rows may move), toward the
    model's own head where its ``head_prior`` says the factories' targets share units (a task with few or
    noisy rows keeps close to it), else from zero. Regression: ridge. Two classes: `NEWTON_STEPS` Newton steps
    of logistic regression, whose calibrated probabilities a failure decision at the factory's failure rate
    needs. More classes (decided by the largest score): ridge onto one-hot targets, one S x S system
    whatever their number, the logits ``exp(LOGIT_SCALE)`` times the fit.
    """
    z = head_features(model, params, batch.support_x)
    design = torch.cat([z, z.new_ones(*z.shape[:-1], 1)], -1)
    prior = torch.cat([params["head.weight"], params["head.bias"].unsqueeze(-1)], -1).mT  # [..., D+1, C]
    if not model.config.head_prior:
        prior = torch.zeros_like(prior)
    penalties = (params[PENALTY] + params[COLUMN_PENALTY]).exp()
    if kind == "classification" and model.config.output_dim == 2:
        head = logistic_fit_toward(design, batch.support_y, 2, penalties, prior, NEWTON_STEPS)
    else:
        head = _ridge_toward(model, params, design, batch.support_y, kind, penalties, prior)
    return {**params, "head.weight": head[..., :-1, :].mT, "head.bias": head[..., -1, :]}


def _ridge_toward(model: nn.Module, params: Mapping[str, Tensor], design: Tensor, y: Tensor, kind: str,
                  penalties: Tensor, prior: Tensor) -> Tensor:
    """Ridge of ``y`` (classes: one-hot, the logits ``exp(LOGIT_SCALE)`` times the fit) on ``design`` toward
    ``prior``, column d at ``penalties[d]``: ridge at penalty 1 on the columns divided by their penalties' roots."""
    if kind == "classification":
        scale = params[LOGIT_SCALE].exp().reshape(())
        target = torch.nn.functional.one_hot(y, model.config.output_dim).to(design.dtype)
    else:
        scale = design.new_ones(())
        target = y.unsqueeze(-1).to(design.dtype)
    prior = prior / scale
    shrink = penalties.rsqrt()
    step = ridge_fit(design * shrink.unsqueeze(-2), target - design @ prior, 1.0, intercept=False)
    return scale * (prior + shrink.unsqueeze(-1) * step.coef)
