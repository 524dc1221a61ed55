"""Local meta-training: the work a factory client does in one federated round.

`meta_train` runs E local meta-steps from given parameters over meta-batches of
tasks and returns the new parameters (and, for Meta-SGD, the new per-parameter inner
learning rates) with metrics; the federated client sends the difference. Each
algorithm is a small step function over the shared inner loop in
`common.meta.inner_loop`:

- ``maml``: exact second-order MAML, gradients flow through every inner step.
- ``fomaml``: first-order MAML, the query gradient at the adapted parameters.
- ``reptile``: the pseudo-gradient ``theta - mean(adapted)``.
- ``metasgd``: second-order MAML with a learned step size per weight entry.
- ``anil``: second-order MAML whose inner loop adapts only the head.
- ``r2d2``: the head is solved in closed form on each task's support rows (ridge regression; for
  classes onto one-hot targets, with a learned logit scale) on the learned features beside the inputs, and the
  meta-gradient flows through the solve into the body, the feature scale and the ridge penalty
  (`common.meta.closed_form_head`; R2-D2, Bertinetto et al., ICLR 2019). Its model reads the
  inputs in its head (`algorithm_model_config`).
- ``pretrain``: no inner loop; plain training on the tasks' data (the FedAvg
  baseline's local work and the "jointly pre-trained" reference).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fedmeta.common.meta.closed_form_head import solve_learned_head
from fedmeta.common.meta.device import resolve_device
from fedmeta.common.meta.inner_loop import Params, adapt, expand_for_tasks, predict
from fedmeta.common.meta.losses import TASK_KINDS, task_accuracy, task_losses
from fedmeta.common.meta.models import SOLVE_PARAMETERS, ModelConfig
from fedmeta.common.meta.optimizers import GroupedOptimizer
from fedmeta.common.meta.tasks import TaskBatch, TaskSampler
from fedmeta.common.validation import check_choice, check_positive_int

__all__ = [
    "ALGORITHMS",
    "META_OPTIMIZERS",
    "MetaConfig",
    "MetaTrainResult",
    "NonFiniteLossError",
    "adapt_to_support",
    "adapted_names",
    "algorithm_model_config",
    "evaluate_adaptation",
    "init_inner_lrs",
    "meta_step",
    "meta_train",
    "query_metrics",
    "task_scores",
]

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil", "r2d2", "pretrain")
# The optimizer of a factory's own meta-update (`MetaConfig.outer_optimizer`); the server's, which
# applies the averaged deltas, are `fedmeta.server.strategy.outer_optimizer.OUTER_OPTIMIZERS`.
META_OPTIMIZERS = ("adam", "sgd")
# How much faster than the weights a closed-form head's solve parameters step (`_outer_optimizer`).
SOLVE_LR_GAIN = 10.0


class NonFiniteLossError(FloatingPointError):
    """A loss or meta-gradient became NaN or infinite; parameters were not updated."""


@dataclass(frozen=True)
class MetaConfig:
    """Hyper-parameters of local meta-training (validated on construction)."""

    algorithm: str = "maml"
    task_kind: str = "regression"
    inner_steps: int = 5
    inner_lr: float = 0.01
    outer_lr: float = 0.001
    outer_optimizer: str = "adam"
    meta_batch_size: int = 4
    local_steps: int = 1
    # Second-order steps: tasks whose graphs are held at once (0: the whole meta-batch). The meta-gradient is the
    # same; fewer tasks at once bound the memory, at the price of smaller batched kernels.
    tasks_per_pass: int = 0

    def __post_init__(self) -> None:
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        check_choice("task_kind", self.task_kind, TASK_KINDS)
        check_choice("outer_optimizer", self.outer_optimizer, META_OPTIMIZERS)
        for name in ("inner_steps", "meta_batch_size", "local_steps"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.tasks_per_pass, bool) or not isinstance(self.tasks_per_pass, int) or self.tasks_per_pass < 0:
            raise ValueError(f"tasks_per_pass must be a whole number >= 0, got {self.tasks_per_pass!r}")
        for name in ("inner_lr", "outer_lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass
class MetaTrainResult:
    """New parameters after local meta-training, and what it cost and achieved."""

    weights: Params
    inner_lrs: Params
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepLosses:
    """Detached losses of one meta-step, for metrics and the finiteness check."""

    support: Tensor  # mean support loss before each inner step, shape [inner steps]
    query: Tensor  # mean query loss after adaptation, scalar
    query_accuracy: Tensor | None = None


def adapted_names(model: nn.Module, algorithm: str) -> list[str]:
    """Names of the parameters the algorithm's inner loop adapts (ANIL: the head only)."""
    if algorithm == "anil":
        return list(model.head_parameter_names())
    return [name for name, _ in model.named_parameters() if name not in SOLVE_PARAMETERS]  # what forward reads


def algorithm_model_config(config: ModelConfig, algorithm: str, *, head_prior: bool = False) -> ModelConfig:
    """The model an algorithm trains: ``r2d2``'s head reads the inputs beside the learned features (and, with
    ``head_prior``, is solved toward the model's own head)."""
    if algorithm != "r2d2":
        return config
    return dataclasses.replace(config, skip_inputs=True, head_prior=head_prior)


def init_inner_lrs(weights: Mapping[str, Tensor], value: float) -> Params:
    """Meta-SGD's starting step sizes: ``value`` for every weight entry."""
    return {n: torch.full_like(w, value) for n, w in weights.items()}


def _query_metrics(
    model: nn.Module, params: Params, batch: TaskBatch, kind: str
) -> tuple[Tensor, Tensor | None]:
    predictions = predict(model, params, batch.query_x)
    losses = task_losses(predictions, batch.query_y, kind)
    accuracy = (
        task_accuracy(predictions, batch.query_y).mean() if kind == "classification" else None
    )
    return losses, accuracy


def _detached(accuracy: Tensor | None) -> Tensor | None:
    return None if accuracy is None else accuracy.detach()


def _second_order_step(
    model: nn.Module, weights: Params, inner_lrs: Params, batch: TaskBatch, config: MetaConfig
) -> StepLosses:
    names = adapted_names(model, config.algorithm)
    lr = inner_lrs if config.algorithm == "metasgd" else config.inner_lr
    support_means, query_means, accuracies = [], [], []
    for part in batch.parts(config.tasks_per_pass):  # each part's graph is freed by its backward
        adapted, support = adapt(
            model,
            expand_for_tasks(weights, names, part.num_tasks),
            part.support_x,
            part.support_y,
            kind=config.task_kind,
            steps=config.inner_steps,
            lr=lr,
            adapt_names=names,
            create_graph=True,
        )
        query, accuracy = _query_metrics(model, adapted, part, config.task_kind)
        share = part.num_tasks / batch.num_tasks  # the parts' shares of the batch's mean add up to it
        (query.mean() * share).backward()
        support_means.append(support * share)
        query_means.append(query.detach().mean() * share)
        accuracies.append(None if accuracy is None else accuracy.detach() * share)
    kept = [accuracy for accuracy in accuracies if accuracy is not None]
    return StepLosses(sum(support_means), sum(query_means), sum(kept) if kept else None)


def _detached_task_copies(weights: Params, num_tasks: int) -> Params:
    """Per-task views cut from the graph: first-order methods never differentiate the loop."""
    return {n: w.detach().expand(num_tasks, *w.shape).requires_grad_() for n, w in weights.items()}


def _first_order_adapt(
    model: nn.Module, weights: Params, batch: TaskBatch, config: MetaConfig
) -> tuple[Params, Tensor]:
    return adapt(
        model,
        _detached_task_copies(weights, batch.num_tasks),
        batch.support_x,
        batch.support_y,
        kind=config.task_kind,
        steps=config.inner_steps,
        lr=config.inner_lr,
        adapt_names=weights.keys(),
        create_graph=False,
    )


def _fomaml_step(
    model: nn.Module, weights: Params, inner_lrs: Params, batch: TaskBatch, config: MetaConfig
) -> StepLosses:
    adapted, support = _first_order_adapt(model, weights, batch, config)
    query, accuracy = _query_metrics(model, adapted, batch, config.task_kind)
    grads = torch.autograd.grad(query.mean(), [adapted[n] for n in weights])
    for w, g in zip(weights.values(), grads, strict=True):
        w.grad = g.sum(0)
    return StepLosses(support, query.detach().mean(), _detached(accuracy))


def _reptile_step(
    model: nn.Module, weights: Params, inner_lrs: Params, batch: TaskBatch, config: MetaConfig
) -> StepLosses:
    adapted, support = _first_order_adapt(model, weights, batch, config)
    with torch.no_grad():
        query, accuracy = _query_metrics(model, adapted, batch, config.task_kind)
        for name, w in weights.items():
            w.grad = w - adapted[name].mean(0)
    return StepLosses(support, query.mean(), accuracy)


def _pretrain_step(
    model: nn.Module, weights: Params, inner_lrs: Params, batch: TaskBatch, config: MetaConfig
) -> StepLosses:
    x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1).unsqueeze(0)
    y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten().unsqueeze(0)
    loss = task_losses(predict(model, weights, x), y, config.task_kind).mean()
    loss.backward()
    with torch.no_grad():
        query, accuracy = _query_metrics(model, weights, batch, config.task_kind)
    return StepLosses(loss.detach().unsqueeze(0), query.mean(), accuracy)


def _closed_form_step(
    model: nn.Module, weights: Params, inner_lrs: Params, batch: TaskBatch, config: MetaConfig
) -> StepLosses:
    if not bool(torch.isfinite(batch.support_x).all() and torch.isfinite(batch.support_y.double()).all()):
        nothing = torch.full((1,), torch.inf)  # no solve fits a non-finite row: reported as a non-finite support loss
        return StepLosses(nothing, nothing[0] * torch.nan)
    adapted = solve_learned_head(model, weights, batch, config.task_kind)
    query, accuracy = _query_metrics(model, adapted, batch, config.task_kind)
    query.mean().backward()
    with torch.no_grad():
        support = task_losses(predict(model, adapted, batch.support_x), batch.support_y, config.task_kind)
    return StepLosses(support.mean().unsqueeze(0), query.detach().mean(), _detached(accuracy))


StepFn = Callable[[nn.Module, Params, Params, TaskBatch, MetaConfig], StepLosses]

_STEP_FUNCTIONS: dict[str, StepFn] = {
    "maml": _second_order_step,
    "metasgd": _second_order_step,
    "anil": _second_order_step,
    "r2d2": _closed_form_step,
    "fomaml": _fomaml_step,
    "reptile": _reptile_step,
    "pretrain": _pretrain_step,
}


def meta_step(
    model: nn.Module, weights: Params, inner_lrs: Params, batch: TaskBatch, config: MetaConfig
) -> StepLosses:
    """Compute one meta-step's gradient into ``.grad`` of ``weights`` (and ``inner_lrs``).

    ``weights`` and ``inner_lrs`` must be leaf tensors requiring grad; the caller
    applies its outer optimizer. Exposed for benchmarks and gradient checks.
    """
    return _STEP_FUNCTIONS[config.algorithm](model, weights, inner_lrs, batch, config)


def _raise_if_not_finite(losses: StepLosses, trainable: list[Tensor], meta_step_index: int) -> None:
    if not torch.isfinite(losses.support).all():
        inner = int((~torch.isfinite(losses.support)).nonzero()[0]) + 1
        raise NonFiniteLossError(
            f"support loss became non-finite at meta-step {meta_step_index}, inner step {inner}; "
            "parameters were not updated (lower the inner learning rate or check the data)"
        )
    if not torch.isfinite(losses.query):
        raise NonFiniteLossError(
            f"query loss became non-finite at meta-step {meta_step_index}; "
            "parameters were not updated"
        )
    grads = [t.grad for t in trainable if t.grad is not None]
    if not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
        raise NonFiniteLossError(
            f"meta-gradient became non-finite at meta-step {meta_step_index}; "
            "parameters were not updated"
        )


def _outer_optimizer(config: MetaConfig, trainable: Params, others: list[Tensor]) -> GroupedOptimizer:
    """The outer optimizer (`common.meta.optimizers`: torch.optim's updates, without its import of torch._dynamo in
    every process that trains); a closed-form head's solve parameters (`SOLVE_PARAMETERS`: log penalties and logit
    scale, whose useful values span orders of magnitude) step `SOLVE_LR_GAIN` times faster than the weights: at
    the weights' rate a 20-round run moved C-MAPSS's log penalty by 0.67 at most."""
    solve = [trainable[name] for name in SOLVE_PARAMETERS if name in trainable]
    rest = [tensor for name, tensor in trainable.items() if name not in SOLVE_PARAMETERS] + others
    groups = [(rest, config.outer_lr)] + ([(solve, config.outer_lr * SOLVE_LR_GAIN)] if solve else [])
    return GroupedOptimizer(config.outer_optimizer, groups)


def _trainable_copy(tensors: Mapping[str, Tensor], device: torch.device) -> Params:
    return {n: t.detach().to(device, copy=True).requires_grad_() for n, t in tensors.items()}


def meta_train(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    sampler: TaskSampler,
    config: MetaConfig,
    *,
    inner_lrs: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = "auto",
) -> MetaTrainResult:
    """Run ``config.local_steps`` meta-steps starting from ``weights``.

    The inputs are never modified; the result's tensors live where the inputs did.
    Meta-SGD starts from ``inner_lrs`` (or ``config.inner_lr`` everywhere) and
    returns them trained. Raises `NonFiniteLossError` naming the meta-step (and inner
    step) where a loss or the meta-gradient stopped being finite.
    """
    start = time.perf_counter()
    run_device = resolve_device(device)
    home = {n: w.device for n, w in weights.items()}
    trainable = _trainable_copy(weights, run_device)
    lrs: Params = {}
    if config.algorithm == "metasgd":
        lrs = _trainable_copy(
            inner_lrs if inner_lrs is not None else init_inner_lrs(weights, config.inner_lr),
            run_device,
        )
    tensors = [*trainable.values(), *lrs.values()]
    optimizer = _outer_optimizer(config, trainable, list(lrs.values()))
    totals: dict[str, float] = {}
    examples = 0
    for index in range(1, config.local_steps + 1):
        batch = sampler.sample(config.meta_batch_size).to(run_device)
        optimizer.zero_grad()
        losses = meta_step(model, trainable, lrs, batch, config)
        _raise_if_not_finite(losses, tensors, index)
        optimizer.step()
        examples += batch.num_examples
        _accumulate(totals, losses)
    metrics = {name: value / config.local_steps for name, value in totals.items()}
    metrics.update(
        num_examples=float(examples),
        meta_steps=float(config.local_steps),
        seconds=time.perf_counter() - start,
    )
    return MetaTrainResult(
        weights={n: t.detach().to(home[n]) for n, t in trainable.items()},
        inner_lrs={n: t.detach().to(home[n]) for n, t in lrs.items()},
        metrics=metrics,
    )


def _accumulate(totals: dict[str, float], losses: StepLosses) -> None:
    values = {"support_loss": losses.support[0], "query_loss": losses.query}
    if losses.query_accuracy is not None:
        values["query_accuracy"] = losses.query_accuracy
    for name, value in values.items():
        totals[name] = totals.get(name, 0.0) + float(value)


def adapt_to_support(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    kind: str,
    steps: int,
    lr: float | Mapping[str, Tensor],
    adapt_names: Collection[str] | None = None,
    after_step: Callable[[int, Params], None] | None = None,
) -> Params:
    """Each task's parameters after ``steps`` steps on its support set (task-batched).

    Shared by `evaluate_adaptation` and anything that scores adapted models on other rows
    (a benchmark's test split). Arguments as in `evaluate_adaptation`; ``after_step`` as
    in `common.meta.inner_loop.adapt`.
    """
    names = list(weights) if adapt_names is None else list(adapt_names)
    params = _detached_task_copies(dict(weights), batch.num_tasks)
    if steps > 0:
        params, _ = adapt(
            model,
            params,
            batch.support_x,
            batch.support_y,
            kind=kind,
            steps=steps,
            lr=lr,
            adapt_names=names,
            create_graph=False,
            after_step=after_step,
        )
    return params


def evaluate_adaptation(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    kind: str,
    steps: int,
    lr: float | Mapping[str, Tensor],
    adapt_names: Collection[str] | None = None,
) -> dict[str, float]:
    """Adapt to each task's support set, then score its query set.

    This is what a new factory does with K labelled samples. ``lr`` is a step size or
    Meta-SGD's learned rates; ``adapt_names`` defaults to every parameter (ANIL passes
    the head). ``steps = 0`` scores the shared model without adaptation.
    """
    params = adapt_to_support(model, weights, batch, kind=kind, steps=steps, lr=lr, adapt_names=adapt_names)
    return query_metrics(model, params, batch, kind)


def query_metrics(model: nn.Module, params: Mapping[str, Tensor], batch: TaskBatch, kind: str) -> dict[str, float]:
    """Mean query loss (and accuracy) of task-batched ``params`` on each task's query set; where the
    targets are standardised per task (`TaskBatch.standardize_targets`), in the factory's units."""
    with torch.no_grad():
        scores = task_scores(predict(model, dict(params), batch.query_x), batch, kind)
    return {f"query_{name}": float(values.mean()) for name, values in scores.items()}


def task_scores(predictions: Tensor, batch: TaskBatch, kind: str) -> dict[str, Tensor]:
    """Each task's query ``loss`` (and ``accuracy``) ``[T]`` of any model's query predictions ``[T, Q, outputs]``
    (a network's, a closed-form head's, a baseline's), in the factory's units where the batch's targets are
    standardised."""
    loss = task_losses(predictions, batch.query_y, kind).double()
    if batch.target_std is not None:
        loss = loss * batch.target_std.to(loss.device).square()
    scores = {"loss": loss}
    if kind == "classification":
        scores["accuracy"] = task_accuracy(predictions, batch.query_y).double()
    return scores
