"""K-shot evaluation of a global model on one factory's tasks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from client.factory import LoadedFactory, sampler_for
from common.algorithms import adapted_names, evaluate_adaptation
from common.federation import EvaluationSettings, local_algorithm, unpack_meta_parameters
from common.models import build_model

__all__ = ["evaluate_factory"]


def _initial_weights(model: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def evaluate_factory(
    factory: LoadedFactory, params: Mapping[str, Tensor], settings: EvaluationSettings, *, device: torch.device
) -> dict[str, float]:
    """Metrics ``loss-k{K}`` (and ``accuracy-k{K}``, ``local-loss-k{K}``) for each K.

    ``k0`` is the global model without adaptation.
    """
    source = factory.source
    model = build_model(source.model_config)
    weights, inner_lrs = unpack_meta_parameters(params)
    weights = {n: w.to(device) for n, w in weights.items()}
    lr = {n: t.to(device) for n, t in inner_lrs.items()} if inner_lrs else settings.lr
    names = adapted_names(model, local_algorithm(settings.algorithm))
    scratch = _initial_weights(model, settings.seed) if settings.local_only_steps else None
    metrics: dict[str, float] = {"num-examples": 0}
    for k in settings.shots:
        sampler = sampler_for(factory, k, settings.query_size, seed=settings.seed, stream=f"eval-k{k}")
        batch = sampler.sample(settings.tasks).to(device)
        if k == settings.shots[0]:
            _record(metrics, "k0", evaluate_adaptation(model, weights, batch, kind=source.task_kind, steps=0, lr=lr))
        scores = evaluate_adaptation(
            model, weights, batch, kind=source.task_kind, steps=settings.steps, lr=lr, adapt_names=names
        )
        _record(metrics, f"k{k}", scores)
        if scratch is not None:
            local = evaluate_adaptation(
                model, scratch, batch, kind=source.task_kind, steps=settings.local_only_steps, lr=settings.local_only_lr
            )
            _record(metrics, f"k{k}", local, prefix="local-")
        metrics["num-examples"] += batch.query_y.numel()
    return metrics


def _record(metrics: dict[str, float], suffix: str, scores: Mapping[str, float], prefix: str = "") -> None:
    for name, value in scores.items():
        metrics[f"{prefix}{name.removeprefix('query_')}-{suffix}"] = value
