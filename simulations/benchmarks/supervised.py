"""Plain supervised training with early stopping: the full-data reference recipe.

A model trained centrally on all of a data set's rows is the yardstick a few-shot method
is measured against, so it must be trained the way the literature trains it: minibatch
Adam for as many epochs as the validation loss keeps improving, the step size halved on
a plateau, the best epoch's weights kept. The validation rows are the caller's to choose
(whole engines or factories, never neighbouring windows of the training rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedmeta.common.meta.inner_loop import Params, predict
from fedmeta.common.meta.losses import task_losses
from fedmeta.common.meta.tasks import FactoryData
from fedmeta.common.validation import check_positive_int

__all__ = ["SupervisedRecipe", "SupervisedResult", "train_supervised"]


@dataclass(frozen=True)
class SupervisedRecipe:
    """Adam with ``lr`` on minibatches; at most ``max_epochs``; stop after ``patience`` epochs
    without a better validation loss; halve the step after ``plateau_patience`` such epochs."""

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 10
    plateau_patience: int = 4

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("batch_size", "max_epochs", "patience", "plateau_patience"):
            check_positive_int(name, getattr(self, name))


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class SupervisedResult:
    weights: Params
    best_epoch: int
    epochs: int
    validation_losses: tuple[float, ...]


def _loss(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, kind: str) -> Tensor:
    return task_losses(predict(model, params, x)[None], y[None], kind)[0]


@torch.no_grad()
def _validation_loss(model: nn.Module, params: Mapping[str, Tensor], data: FactoryData, kind: str,
                     batch_size: int) -> float:
    total = 0.0
    for start in range(0, data.num_samples, batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        total += float(_loss(model, params, x, y, kind)) * len(y)
    return total / data.num_samples


def train_supervised(
    model: nn.Module,
    initial: Mapping[str, Tensor],
    train: FactoryData,
    validation: FactoryData,
    *,
    kind: str,
    recipe: SupervisedRecipe = SupervisedRecipe(),
    seed: int = 0,
) -> SupervisedResult:
    """Train a copy of ``initial`` on ``train``; returns the weights of the best validation epoch.

    For regression the output bias starts at the mean training target: from zero, a
    network spends many epochs only moving its bias to the targets' level.
    """
    params = {name: value.detach().clone().requires_grad_() for name, value in initial.items()}
    if kind == "regression" and "head.bias" in params:
        with torch.no_grad():
            params["head.bias"].fill_(float(train.y.float().mean()))
    optimizer = torch.optim.Adam(params.values(), lr=recipe.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=recipe.plateau_patience)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_epoch, best = float("inf"), 0, {n: p.detach().clone() for n, p in params.items()}
    losses: list[float] = []
    for epoch in range(1, recipe.max_epochs + 1):
        order = torch.randperm(train.num_samples, generator=generator)
        for start in range(0, train.num_samples, recipe.batch_size):
            rows = order[start : start + recipe.batch_size]
            optimizer.zero_grad(set_to_none=True)
            _loss(model, params, train.x[rows], train.y[rows], kind).backward()
            optimizer.step()
        losses.append(_validation_loss(model, params, validation, kind, recipe.batch_size))
        plateau.step(losses[-1])
        if losses[-1] < best_loss:
            best_loss, best_epoch = losses[-1], epoch
            best = {n: p.detach().clone() for n, p in params.items()}
        elif epoch - best_epoch >= recipe.patience:
            break
    return SupervisedResult(best, best_epoch, len(losses), tuple(losses))
