"""K-shot evaluation of a global model on one factory's tasks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmeta.client.rounds.factory import LoadedFactory, sampler_for
from fedmeta.common import (
    NUM_EXAMPLES,
    DataSource,
    EvaluationSettings,
    adapted_names,
    build_model,
    local_algorithm,
    unpack_meta_parameters,
)
from fedmeta.common.meta.adaptation import Adaptation, initial_weights

__all__ = ["evaluate_factory", "local_only_adaptation", "prepare_adaptation"]


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
