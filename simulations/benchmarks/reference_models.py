"""Full-data reference models of the benchmark: trained from scratch on all rows they may see."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.common import (
    ClassificationTaskSampler,
    DataSource,
    FactoryData,
    MetaConfig,
    MetaModel,
    RegressionTaskSampler,
    TaskSampler,
    build_model,
    meta_train,
)
from fedmeta.server import initial_meta_parameters

__all__ = ["TrainedModel", "train_from_scratch"]


@dataclass(frozen=True)
class TrainedModel:
    model: MetaModel
    weights: dict[str, Tensor]


def _sampler(data: FactoryData, source: DataSource, seed: int) -> TaskSampler:
    """Batches of up to 32 rows (regression) or up to 16 rows per class (classification, class-balanced)."""
    if source.task_kind == "regression":
        shots = max(1, min(16, data.num_samples // 2))
        return RegressionTaskSampler([data], shots, max(1, min(16, data.num_samples - shots)), seed=seed)
    ways = source.model_config.output_dim
    rarest = int(torch.bincount(data.y, minlength=ways).min())
    if rarest < 2:
        raise ValueError(f"{data.name!r}: a class has fewer than 2 rows; a reference model cannot be trained")
    shots = max(1, min(8, rarest - 1))
    return ClassificationTaskSampler([data], ways, shots, max(1, min(8, rarest - shots)), seed=seed,
                                     shuffle_labels=False)


def train_from_scratch(source: DataSource, data: FactoryData, *, steps: int, seed: int) -> TrainedModel:
    """``steps`` Adam steps (lr 1e-3) from the seeded initialisation, each on the pooled rows of 4 sampled tasks."""
    config = MetaConfig(algorithm="pretrain", task_kind=source.task_kind, outer_lr=1e-3, local_steps=steps,
                        meta_batch_size=4)
    params = initial_meta_parameters(source, "maml", 0.05, seed)
    model = build_model(source.model_config)
    return TrainedModel(model, meta_train(model, params, _sampler(data, source, seed), config, device="cpu").weights)
