"""Which factory a node is, and what model fits its data, from a run's settings.

The server needs the model architecture (to create the first global parameters) but
never the data; a client needs its own factory's rows. Both resolve the same run
settings here, so they always agree on the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache

from common.models import ModelConfig
from common.synthetic import FactoryFamily, FamilyConfig, make_family
from common.tasks import FactoryData

__all__ = ["FactoryAssignment", "SyntheticSource", "source_from_config"]

ROLES = ("train", "evaluate")

# Run-config key (dashes, as in Flower configs) -> FamilyConfig field.
_FAMILY_KEYS = {
    "family": "kind",
    "num-factories": "num_factories",
    "num-held-out": "num_held_out",
    "min-samples": "min_samples",
    "max-samples": "max_samples",
    "family-seed": "seed",
}


@dataclass(frozen=True)
class FactoryAssignment:
    """One node's factory: its rows and whether it trains or only evaluates."""

    data: FactoryData
    role: str


@cache
def _family(config: FamilyConfig) -> FactoryFamily:
    """Generated once per process: every simulated node of a worker shares it."""
    return make_family(config)


@dataclass(frozen=True)
class SyntheticSource:
    """A synthetic factory family: partitions 0..N-1 train, the next ones are held out."""

    family: FamilyConfig

    @property
    def model_config(self) -> ModelConfig:
        return _family(self.family).model_config

    @property
    def task_kind(self) -> str:
        return _family(self.family).task_kind

    @property
    def num_partitions(self) -> int:
        return self.family.num_factories + self.family.num_held_out

    def factory(self, partition_id: int) -> FactoryAssignment:
        family = _family(self.family)
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"partition-id {partition_id} is out of range: this family has "
                f"{len(family.train)} training and {len(family.held_out)} held-out factories"
            )
        if partition_id < len(family.train):
            return FactoryAssignment(family.train[partition_id], "train")
        return FactoryAssignment(family.held_out[partition_id - len(family.train)], "evaluate")


def source_from_config(run_config: Mapping[str, object]) -> SyntheticSource:
    """Build the data source a run's config describes (keys as in `_FAMILY_KEYS`)."""
    defaults = {f.name: f.default for f in fields(FamilyConfig) if f.name != "kind"}
    values = {"kind": "quality", **defaults}
    for key, field_name in _FAMILY_KEYS.items():
        if key in run_config:
            values[field_name] = run_config[key]
    return SyntheticSource(FamilyConfig(**values))
