"""Which factories a node serves, and what model fits their data, from a run's settings.

The server needs the model architecture (to create the first global parameters) but
never the data; a client needs its own factory's rows. Both resolve the same run
settings here, so they always agree on the model.

By default a node is one factory: ``partition-id`` N is factory N. With
``factories-per-node`` F > 1 (for simulating thousands of factories on a few cores)
node N serves the contiguous block of factories ``N*F .. N*F+F-1``; each factory still
trains on its own rows and sends its own delta, under the record keys
`fedmeta.common.federation.protocol.factory_key` gives, so the server validates and averages every factory separately.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import torch

from fedmeta.common.data.connector import DataSchema, load_factory_table
from fedmeta.common.data.connector.windows import read_window_table
from fedmeta.common.data.datasets import TRANSFERS as CMAPSS_TRANSFERS
from fedmeta.common.data.datasets import FactorySplit, load_ai4i, load_cmapss_transfer, load_cwru
from fedmeta.common.data.scaling import FeatureScaling
from fedmeta.common.data.synthetic import FactoryFamily, FamilyConfig, make_family
from fedmeta.common.federation.protocol import ROLES
from fedmeta.common.meta.algorithms import algorithm_model_config
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.meta.tasks import FactoryData
from fedmeta.common.package.model_package import PackageSchema
from fedmeta.common.run_settings import DATASETS, resolve_run_config
from fedmeta.common.validation import check_choice

__all__ = [
    "DataSource",
    "FactoryAssignment",
    "SplitSource",
    "SyntheticSource",
    "TableSource",
    "TablesSource",
    "model_config_for",
    "source_from_config",
    "standardizes_targets",
]

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


class DataSource(Protocol):
    """Where a run's factories come from: enough for the server to build the model,
    and for a node to load the factories it serves."""

    @property
    def model_config(self) -> ModelConfig: ...

    @property
    def task_kind(self) -> str: ...

    @property
    def factories_per_node(self) -> int: ...

    @property
    def package_schema(self) -> PackageSchema:
        """The input columns, target and classes the run's model package names."""
        ...

    @property
    def scaling_rule(self) -> str:
        """How inputs are scaled before the model sees them (`common.package.model_package.SCALING_RULES`)."""
        ...

    def node_factories(self, node_config: Mapping[str, object]) -> list[FactoryAssignment]: ...


def standardizes_targets(source: DataSource) -> bool:
    """Whether a factory standardises its regression target with its own labelled rows: wherever it scales
    its inputs from its own rows. A plant regresses grams, bar or cycles in its own units; the network
    regresses them standardised and the adapted package maps its predictions back
    (`common.data.scaling.TargetScaling`). The shared data sets' targets come as their loaders give them."""
    return source.task_kind == "regression" and source.scaling_rule == "factory-rows"


def model_config_for(source: DataSource, algorithm: str) -> ModelConfig:
    """The model ``algorithm`` trains on the source's factories (`algorithm_model_config`). ``r2d2``'s head is
    solved toward the federation's own where the factories' targets share units (classes, or a target no
    factory standardises): what a head learned across factories knows then carries over. A target each
    factory standardises with its own rows shares no level: there the head is solved from zero (synthetic
    quality plants: docs/benchmarks.md)."""
    return algorithm_model_config(source.model_config, algorithm, head_prior=not standardizes_targets(source))


def _generic_schema(model_config: ModelConfig, task_kind: str) -> PackageSchema:
    """Named inputs for a source without column names: x0, x1, ... (tables) or channel0, ... (windows)."""
    prefix = "x" if model_config.name == "mlp" else "channel"
    classes = tuple(map(str, range(model_config.output_dim))) if task_kind == "classification" else None
    return PackageSchema(tuple(f"{prefix}{i}" for i in range(model_config.input_shape[0])), "y", task_kind, classes)


@cache
def _family(config: FamilyConfig) -> FactoryFamily:
    """Generated once per process: every simulated node of a worker shares it."""
    return make_family(config)


@dataclass(frozen=True)
class SyntheticSource:
    """A synthetic factory family: partitions 0..N-1 train, the next ones are held out.

    ``factories_per_node`` is how many consecutive factories one node serves. With
    ``validation`` only the training factories exist and the last of them is held out.
    """

    family: FamilyConfig
    factories_per_node: int = 1
    validation: bool = False

    def __post_init__(self) -> None:
        value = self.factories_per_node
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"factories-per-node must be a positive integer, got {value!r}")

    @property
    def model_config(self) -> ModelConfig:
        return _family(self.family).model_config

    @property
    def task_kind(self) -> str:
        return _family(self.family).task_kind

    @property
    def package_schema(self) -> PackageSchema:
        return _generic_schema(self.model_config, self.task_kind)

    @property
    def scaling_rule(self) -> str:
        """A quality factory standardises its own parameters (as `common.data.scaling` does); fault
        signals come centred per window from the generator."""
        return "factory-rows" if self.family.kind == "quality" else "source"

    @property
    def num_partitions(self) -> int:
        """Factories, training and held out."""
        if self.validation:
            return self.family.num_factories
        return self.family.num_factories + self.family.num_held_out

    @property
    def num_nodes(self) -> int:
        """Nodes needed to serve every factory, ``factories_per_node`` each (the last maybe fewer)."""
        return math.ceil(self.num_partitions / self.factories_per_node)

    def node_partitions(self, node: int) -> range:
        """The factories (partition ids) that node ``node`` (its ``partition-id``) serves."""
        if not 0 <= node < self.num_nodes:
            raise ValueError(
                f"partition-id {node} is out of range: {self.num_partitions} factories, "
                f"{self.factories_per_node} per node, need {self.num_nodes} nodes"
            )
        first = node * self.factories_per_node
        return range(first, min(first + self.factories_per_node, self.num_partitions))

    def node_factories(self, node_config: Mapping[str, object]) -> list[FactoryAssignment]:
        """The factories the node with this ``partition-id`` serves."""
        if "partition-id" not in node_config:
            raise ValueError("node_config has no 'partition-id': start the node with --node-config 'partition-id=N'")
        return [self.factory(p) for p in self.node_partitions(int(node_config["partition-id"]))]

    def factory(self, partition_id: int) -> FactoryAssignment:
        family = _family(self.family)
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"partition-id {partition_id} is out of range: this family has "
                f"{len(family.train)} training and {len(family.held_out)} held-out factories"
            )
        if self.validation:
            if len(family.train) < 2:
                raise ValueError("a validation split needs at least 2 synthetic training factories")
            return FactoryAssignment(family.train[partition_id],
                                     "evaluate" if partition_id == len(family.train) - 1 else "train")
        if partition_id < len(family.train):
            return FactoryAssignment(family.train[partition_id], "train")
        return FactoryAssignment(family.held_out[partition_id - len(family.train)], "evaluate")


@dataclass(frozen=True)
class TableSource:
    """Each factory's own table, read through `common.data.connector` (deployment and real data).

    The schema names the columns and, for classification, the class order every factory
    must map labels to; a schema with a ``window`` makes the model a TCN over windows of that many
    rows of one unit (`common.data.connector.windows`). The server reads it from the run config (to build the model); a
    factory reads its own copy when its node config names one (``schema``), so no file
    has to exist at a path chosen by the server. Each node names its private file with
    ``node_config`` ``data-path`` and its ``role`` (``train``, default, or ``evaluate``).
    The file paths never leave the node.
    """

    schema: DataSchema
    factories_per_node: int = 1

    def __post_init__(self) -> None:
        if self.schema.task == "classification" and not self.schema.classes:
            raise ValueError(
                "a federated classification schema must list 'classes', so that every factory "
                "numbers its labels the same way"
            )

    @property
    def task_kind(self) -> str:
        return self.schema.task

    @property
    def model_config(self) -> ModelConfig:
        outputs = 1 if self.schema.task == "regression" else len(self.schema.classes or ())
        channels = len(self.schema.features)
        if self.schema.window is None:
            return ModelConfig("mlp", (channels,), outputs)
        # C-MAPSS' TCN (`common.data.datasets.cmapss`): 4 blocks of kernel 5 see 61 rows, more than most windows.
        return ModelConfig("tcn", (channels, self.schema.window), outputs, hidden=32, depth=4, kernel_size=5)

    @property
    def package_schema(self) -> PackageSchema:
        schema = self.schema
        return PackageSchema(schema.features, schema.target, schema.task, schema.classes,
                             group_column=schema.group_column if schema.window else None,
                             time_column=schema.time_column if schema.window else None)

    @property
    def scaling_rule(self) -> str:
        return "factory-rows"

    def node_factories(self, node_config: Mapping[str, object]) -> list[FactoryAssignment]:
        if "data-path" not in node_config:
            raise ValueError("node_config has no 'data-path': start the node with --node-config 'data-path=FILE'")
        role = str(node_config.get("role", "train"))
        check_choice("role", role, ROLES)
        path = Path(str(node_config["data-path"]))
        name = str(node_config.get("factory", path.stem))
        return [FactoryAssignment(_own_rows_scaled(path, self.schema, name), role)]


def _own_rows_scaled(path: Path, schema: DataSchema, name: str | None = None) -> FactoryData:
    """A factory table read in float64 and standardised with its own rows' statistics (`common.data.scaling`)
    before the cast to float32: near 1e6, float32 cannot tell readings 0.06 apart. With the schema's
    ``window``, the examples are the windows of the scaled rows, each labelled with its last row's target
    and grouped by its unit (cross-validation holds out whole units: neighbouring windows share rows)."""
    if schema.window is None:
        data = load_factory_table(path, schema, name=name, dtype=torch.float64)
        return dataclasses.replace(data, x=FeatureScaling.fit(data.x).apply(data.x))
    table = read_window_table(path, schema, schema.window)
    windows = table.windows
    return FactoryData(name or path.stem, windows.gather(FeatureScaling.fit(table.x).apply(table.x)),
                       windows.targets(table.y), groups=torch.from_numpy(windows.groups.astype("int64")))


@dataclass(frozen=True)
class TablesSource(TableSource):
    """Factory tables on one machine, one factory per file, for the simulation engine: partitions
    0..N-1 are the training tables, then the held-out ones (each in file-name order); a factory is
    named by its file's stem."""

    tables: tuple[Path, ...] = ()
    held_out: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        stems = [path.stem for path in self.tables]
        if len(self.tables) < 2:
            raise ValueError(f"simulating tables needs at least 2 table files, found {len(self.tables)}")
        repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
        if repeated:
            raise ValueError(f"tables {repeated} share a name: each factory is named by its file's stem")
        unknown = [name for name in self.held_out if name not in stems]
        if unknown:
            raise ValueError(f"held-out tables {unknown} are not among the tables {sorted(stems)}")
        if not self.held_out or len(self.held_out) == len(stems):
            raise ValueError("name at least one held-out table and keep at least one to train")
        train = sorted((p for p in self.tables if p.stem not in self.held_out), key=lambda p: p.stem)
        held = sorted((p for p in self.tables if p.stem in self.held_out), key=lambda p: p.stem)
        object.__setattr__(self, "tables", (*train, *held))

    @property
    def num_nodes(self) -> int:
        return len(self.tables)

    def node_factories(self, node_config: Mapping[str, object]) -> list[FactoryAssignment]:
        if "partition-id" not in node_config:
            raise ValueError("node_config has no 'partition-id': start the node with --node-config 'partition-id=N'")
        partition = int(node_config["partition-id"])
        if not 0 <= partition < self.num_nodes:
            raise ValueError(f"partition-id {partition} is out of range: {self.num_nodes} tables")
        path = self.tables[partition]
        role = "evaluate" if path.stem in self.held_out else "train"
        return [FactoryAssignment(_own_rows_scaled(path, self.schema), role)]

    def check_tables(self) -> None:
        """Read every table as its node will: a table the connector refuses raises here, naming it."""
        for partition in range(self.num_nodes):
            self.node_factories({"partition-id": partition})


def _load_split(dataset: str, seed: int) -> FactorySplit:
    """The shared real data sets, split into factories with each loader's defaults."""
    if dataset == "ai4i":
        return load_ai4i()
    if dataset in CMAPSS_TRANSFERS:
        source, target = CMAPSS_TRANSFERS[dataset]
        return load_cmapss_transfer(source, target, seed=seed)
    # "cwru-fe": the held-out load is also read from the other sensor (drive end -> fan end).
    return load_cwru(seed=seed, held_out_sensor="FE" if dataset == "cwru-fe" else None)


@cache
def _split(dataset: str, seed: int, validation: bool) -> FactorySplit:
    """Loaded once per process: every simulated node of a worker shares it."""
    split = _load_split(dataset, seed)
    return split.validation() if validation else split


@dataclass(frozen=True)
class SplitSource:
    """A shared real data set (`common.data.datasets`): its training factories are partitions
    0..N-1, its held-out factories the next ones (one factory per node)."""

    dataset: str
    seed: int = 0
    factories_per_node: int = 1
    validation: bool = False  # `FactorySplit.validation`: the training side only

    @property
    def split(self) -> FactorySplit:
        return _split(self.dataset, self.seed, self.validation)

    @property
    def model_config(self) -> ModelConfig:
        return self.split.model_config

    @property
    def task_kind(self) -> str:
        return self.split.task_kind

    @property
    def package_schema(self) -> PackageSchema:
        return _generic_schema(self.model_config, self.task_kind)

    @property
    def scaling_rule(self) -> str:
        return "source"

    @property
    def num_nodes(self) -> int:
        return len(self.split.train) + len(self.split.held_out)

    def node_factories(self, node_config: Mapping[str, object]) -> list[FactoryAssignment]:
        if "partition-id" not in node_config:
            raise ValueError("node_config has no 'partition-id': start the node with --node-config 'partition-id=N'")
        partition, split = int(node_config["partition-id"]), self.split
        if not 0 <= partition < self.num_nodes:
            raise ValueError(f"partition-id {partition} is out of range: {self.dataset} has {self.num_nodes} factories")
        if partition < len(split.train):
            return [FactoryAssignment(split.train[partition], "train")]
        return [FactoryAssignment(split.held_out[partition - len(split.train)], "evaluate")]


def source_from_config(
    run_config: Mapping[str, object], node_config: Mapping[str, object] | None = None
) -> SyntheticSource | TableSource | TablesSource | SplitSource:
    """Build the data source a run's config describes: every table a ``tables`` glob finds (with
    the ``schema``, in simulation), a factory's own table when the config (or the node's own)
    names a ``schema`` file, a shared real data set when ``dataset`` names one, else a synthetic
    family (keys as in `_FAMILY_KEYS`, plus ``factories-per-node``)."""
    settings = resolve_run_config(run_config)
    schema = (node_config or {}).get("schema") or settings["schema"]
    if settings["tables"]:
        if not settings["schema"]:
            raise ValueError("simulating tables needs the federation's schema (run setting 'schema')")
        pattern = Path(str(settings["tables"]))
        tables = tuple(sorted(pattern.parent.glob(pattern.name)))
        held_out = tuple(name.strip() for name in str(settings["held-out-tables"]).split(",") if name.strip())
        return TablesSource(DataSchema.from_json(Path(str(settings["schema"]))), tables=tables, held_out=held_out)
    if schema:
        return TableSource(DataSchema.from_json(Path(str(schema))))
    dataset = str(settings["dataset"])
    check_choice("dataset", dataset, DATASETS)
    validation = bool(settings["validation-split"])
    if dataset != "synthetic":
        return SplitSource(dataset, int(settings["seed"]), validation=validation)
    family = FamilyConfig(**{field_name: settings[key] for key, field_name in _FAMILY_KEYS.items()})
    return SyntheticSource(family, int(settings["factories-per-node"]), validation=validation)
