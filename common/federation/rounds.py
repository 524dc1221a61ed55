"""What a federated round exchanges, independent of Flower.

The server's global state is one flat dict of tensors, the *meta-parameters*: the model
weights plus, for Meta-SGD, the learned inner learning rates under ``inner_lr/<name>``.
Factories receive it with a round's `RoundSettings`, meta-train locally and reply with
``local - global`` over the same names, so the server validates, averages and applies
deltas without knowing which algorithm produced them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

from torch import Tensor

from fedmeta.common.federation.compression import Compression
from fedmeta.common.meta.algorithms import MetaConfig
from fedmeta.common.run_settings import (
    ADAPTATION_RECIPES,
    FEDERATED_ALGORITHMS,
    TREE_ALGORITHMS,
    is_tree_algorithm,
    parse_shots,
    resolve_run_config,
)
from fedmeta.common.trees.settings import TreePlan, TreeRecipe, TreeSettings
from fedmeta.common.validation import check_choice, check_positive_int

__all__ = [
    "FEDERATED_ALGORITHMS",
    "INNER_LR_PREFIX",
    "TREE_ALGORITHMS",
    "EvaluationSettings",
    "RoundSettings",
    "is_tree_algorithm",
    "local_algorithm",
    "pack_meta_parameters",
    "unpack_meta_parameters",
]

INNER_LR_PREFIX = "inner_lr/"
_Settings = TypeVar("_Settings")
# The run settings' defaults (automatic ones resolved for the default data): the dataclasses
# below take theirs from here, so they cannot drift from the table.
_DEFAULT = resolve_run_config({})


def local_algorithm(algorithm: str) -> str:
    """The `common.meta.algorithms` name a factory runs for a federated algorithm (a tree algorithm: its own)."""
    check_choice("algorithm", algorithm, FEDERATED_ALGORITHMS)
    return "pretrain" if algorithm == "fedavg" else algorithm


def pack_meta_parameters(
    weights: Mapping[str, Tensor], inner_lrs: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Weights and Meta-SGD learning rates as one flat dict of tensors."""
    return {**weights, **{INNER_LR_PREFIX + n: lr for n, lr in inner_lrs.items()}}


def unpack_meta_parameters(
    params: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split the flat dict back into (weights, inner learning rates)."""
    weights = {n: t for n, t in params.items() if not n.startswith(INNER_LR_PREFIX)}
    lrs = {
        n.removeprefix(INNER_LR_PREFIX): t
        for n, t in params.items()
        if n.startswith(INNER_LR_PREFIX)
    }
    return weights, lrs


def _to_wire(settings: object) -> dict[str, object]:
    """Dataclass fields as a config dict; keys use dashes as Flower configs do."""
    values = {f.name.replace("_", "-"): getattr(settings, f.name) for f in fields(settings)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _from_wire(cls: type[_Settings], config: Mapping[str, object]) -> _Settings:
    """Parse a received config; unknown keys are an error, not silently ignored."""
    known = {f.name.replace("_", "-"): f.name for f in fields(cls)}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(known)}")
    return cls(**{known[key]: value for key, value in config.items()})


@dataclass(frozen=True)
class RoundSettings:
    """Hyper-parameters the server sends with every round (a Flower ConfigRecord's keys).

    Keys use dashes on the wire (``inner-steps``) as Flower configs do.
    """

    algorithm: str = _DEFAULT["algorithm"]
    inner_steps: int = _DEFAULT["inner-steps"]
    inner_lr: float = _DEFAULT["inner-lr"]
    local_steps: int = _DEFAULT["local-steps"]
    local_lr: float = _DEFAULT["local-lr"]
    meta_batch_size: int = _DEFAULT["meta-batch-size"]
    tasks_per_pass: int = _DEFAULT["tasks-per-pass"]
    shots: int = _DEFAULT["shots"]
    query_size: int = _DEFAULT["query-size"]
    seed: int = _DEFAULT["seed"]
    compression: str = _DEFAULT["compression"]
    topk_fraction: float = _DEFAULT["topk-fraction"]
    # The round's differential privacy, so that a factory can count its own budget (`client.rounds.policy`).
    dp_noise_multiplier: float = _DEFAULT["dp-noise-multiplier"]
    dp_delta: float = _DEFAULT["dp-delta"]
    secure_aggregation: bool = _DEFAULT["secure-aggregation"]
    server_round: int = 0
    # Tree algorithms only: how each factory boosts (`common.trees.ensemble.TreeSettings`), how many factories
    # boost this round (their rate is divided among them), and the K values whose adaptation recipes each
    # factory scores this round (the last one: `common.trees.continuation`).
    tree_depth: int = _DEFAULT["tree-depth"]
    tree_rate: float = _DEFAULT["tree-rate"]
    tree_subsample: float = _DEFAULT["tree-subsample"]
    local_trees: int = _DEFAULT["local-trees"]
    tree_min_child_weight: float = _DEFAULT["tree-min-child-weight"]
    tree_lambda: float = _DEFAULT["tree-lambda"]
    tree_bins: int = _DEFAULT["tree-bins"]
    tree_factories: int = 1
    recipe_shots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe_shots", tuple(int(k) for k in self.recipe_shots))
        local_algorithm(self.algorithm)
        for name in ("shots", "query_size", "tree_factories"):
            check_positive_int(name, getattr(self, name))
        Compression(self.compression, self.topk_fraction)  # a bad method or share is refused here
        self.tree_settings()  # bad tree settings are refused here

    def tree_settings(self) -> TreeSettings:
        """How a factory boosts its trees (tree algorithms)."""
        return TreeSettings(depth=self.tree_depth, rate=self.tree_rate, subsample=self.tree_subsample,
                            local_trees=self.local_trees, min_child_weight=self.tree_min_child_weight,
                            reg_lambda=self.tree_lambda, bins=self.tree_bins)

    @property
    def codec(self) -> Compression:
        """How factories encode their deltas this round (`common.federation.compression`)."""
        return Compression(self.compression, self.topk_fraction)

    def meta_config(self, task_kind: str) -> MetaConfig:
        """The local meta-training a factory runs this round (validated there)."""
        return MetaConfig(
            algorithm=local_algorithm(self.algorithm),
            task_kind=task_kind,
            inner_steps=self.inner_steps,
            inner_lr=self.inner_lr,
            outer_lr=self.local_lr,
            outer_optimizer="adam",
            meta_batch_size=self.meta_batch_size,
            local_steps=self.local_steps,
            tasks_per_pass=self.tasks_per_pass,
        )

    def to_config(self) -> dict[str, object]:
        return _to_wire(self)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RoundSettings:
        return _from_wire(cls, config)


@dataclass(frozen=True)
class EvaluationSettings:
    """What the server asks an evaluating factory to measure (ConfigRecord keys use dashes).

    ``shots`` lists the K values; each is scored on ``tasks`` tasks of K support and
    ``query_size`` query rows after ``steps`` adaptation steps of size ``lr`` (Meta-SGD
    uses its learned rates, ANIL adapts its head), or, with ``recipe`` "cross-validated",
    after the steps and step size each task chooses on folds of its own support rows. With ``local_only_steps`` > 0 a
    model trained from scratch on the same K rows is scored too (the local-only baseline).
    """

    algorithm: str = _DEFAULT["algorithm"]
    shots: tuple[int, ...] = parse_shots(str(_DEFAULT["eval-shots"]))
    steps: int = _DEFAULT["eval-steps"]
    lr: float = _DEFAULT["eval-lr"]
    recipe: str = _DEFAULT["eval-recipe"]
    tasks: int = _DEFAULT["eval-tasks"]
    query_size: int = _DEFAULT["eval-query-size"]
    seed: int = _DEFAULT["seed"]
    local_only_steps: int = _DEFAULT["local-only-steps"]
    local_only_lr: float = _DEFAULT["local-only-lr"]
    # Tree algorithms: the recipe the federation chose for each K, as ``K=recipe`` (`common.trees.continuation`),
    # and the trees' depth and row share, which adaptation boosts with too.
    tree_recipes: tuple[str, ...] = ()
    tree_depth: int = _DEFAULT["tree-depth"]
    tree_subsample: float = _DEFAULT["tree-subsample"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        object.__setattr__(self, "tree_recipes", tuple(str(r) for r in self.tree_recipes))
        self.recipes()  # a malformed recipe is refused here
        local_algorithm(self.algorithm)
        check_choice("recipe", self.recipe, ADAPTATION_RECIPES)
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots must list positive K values, got {self.shots}")

    def tree_settings(self) -> TreeSettings:
        """How a factory boosts when it adapts the trees (the recipe sets the count and the rate)."""
        return TreeSettings(depth=self.tree_depth, subsample=self.tree_subsample)

    def recipes(self) -> dict[int, TreeRecipe]:
        """The tree recipe for each K the federation chose one for."""
        pairs = [entry.partition("=") for entry in self.tree_recipes]
        if any(not sep or not k.isdigit() for k, sep, _ in pairs):
            raise ValueError(f"tree recipes are K=recipe entries, got {list(self.tree_recipes)}")
        return {int(k): TreeRecipe.parse(recipe) for k, _, recipe in pairs}

    def tree_plan(self) -> TreePlan:
        """How a factory adapts the federation's trees: its boosting settings and the recipe for each K."""
        return TreePlan(self.tree_settings(), self.recipes())

    def to_config(self) -> dict[str, object]:
        return _to_wire(self)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> EvaluationSettings:
        return _from_wire(cls, config)
