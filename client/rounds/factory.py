"""This node's factories: their private rows and roles, the node's device, task samplers."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedmeta.common import (
    ClassificationTaskSampler,
    DataSource,
    FactoryData,
    RegressionTaskSampler,
    TaskSampler,
    resolve_device,
    resolve_run_config,
    source_from_config,
    standardizes_targets,
)

__all__ = ["LoadedFactory", "load_factories", "load_factory", "node_device", "sampler_for", "task_sampler"]


@dataclass(frozen=True)
class LoadedFactory:
    data: FactoryData
    role: str
    source: DataSource


def load_factories(node_config: Mapping[str, object], run_config: Mapping[str, object]) -> list[LoadedFactory]:
    """The factories this node serves (see `common.data_sources`): a synthetic family's
    ``partition-id`` block, or the node's own table named by ``data-path`` (read with the
    node's own ``schema`` when it names one)."""
    source = source_from_config(run_config, node_config)
    return [LoadedFactory(a.data, a.role, source) for a in source.node_factories(node_config)]


def load_factory(node_config: Mapping[str, object], run_config: Mapping[str, object]) -> LoadedFactory:
    """The one factory node ``partition-id`` serves (the default, one factory per node)."""
    factories = load_factories(node_config, run_config)
    if len(factories) != 1:
        raise ValueError(f"this node serves {len(factories)} factories, not one (factories-per-node > 1)")
    return factories[0]


def node_device(node_config: Mapping[str, object], run_config: Mapping[str, object]) -> torch.device:
    """The node's own ``device`` setting wins over the run's; default: its best accelerator."""
    return resolve_device(str(node_config.get("device", resolve_run_config(run_config)["device"])))


def _seed(*parts: object) -> int:
    """A stable seed per (run seed, round, factory, purpose): no two draws coincide."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def task_sampler(
    factories: Sequence[LoadedFactory], shots: int, query_size: int, *, seed: int
) -> TaskSampler:
    """K-shot tasks drawn from ``factories``; for classification K shots per class, fixed labels.

    Labels keep their meaning (``shuffle_labels=False``) because fault classes are the
    same in every factory; ``query_size`` is split evenly over the classes. Regression targets
    come standardised per task where the source says a factory standardises them
    (`common.data_sources.standardizes_targets`).
    """
    source = factories[0].source
    data = [factory.data for factory in factories]
    if source.task_kind == "regression":
        return RegressionTaskSampler(data, shots, query_size, seed=seed,
                                     standardize_targets=standardizes_targets(source))
    ways = source.model_config.output_dim
    return ClassificationTaskSampler(data, ways, shots, max(1, query_size // ways), seed=seed, shuffle_labels=False)


def sampler_for(factory: LoadedFactory, shots: int, query_size: int, *, seed: int, stream: object) -> TaskSampler:
    """This factory's tasks, seeded per (run seed, ``stream``, factory) so no two draws coincide."""
    return task_sampler([factory], shots, query_size, seed=_seed(seed, stream, factory.data.name))
