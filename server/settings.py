"""The aggregation server's settings, read from a Flower run config.

Keys and defaults are those of `fedmeta.common.run_settings` (``[tool.flwr.app.config]`` in
pyproject.toml lists the same), overridable with ``flwr run . --run-config "key=value"``,
``fedmeta server --run-config`` or the ``fedmeta simulate`` flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedmeta.common import (
    EvaluationSettings,
    RoundSettings,
    is_tree_algorithm,
    local_algorithm,
    parse_shots,
    resolve_run_config,
)
from fedmeta.common.security.privacy import DifferentialPrivacy
from fedmeta.common.security.secure_aggregation import SecureAggregation
from fedmeta.server.strategy.aggregation import AggregationRule
from fedmeta.server.strategy.fedmeta import SamplingSettings
from fedmeta.server.strategy.outer_optimizer import OuterOptimizerConfig

__all__ = ["ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    num_rounds: int
    run_dir: str
    resume: bool
    compare_with: tuple[str, ...]
    eval_every: int
    timeout: float
    wait_for_factories: int
    round: RoundSettings
    evaluation: EvaluationSettings
    outer: OuterOptimizerConfig
    sampling: SamplingSettings

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> ServerSettings:
        """Settings from a run config: unknown keys and wrong types are errors, defaults from the table."""
        get = resolve_run_config(config)
        algorithm, seed = str(get["algorithm"]), int(get["seed"])
        compare = tuple(a.strip() for a in str(get["compare-with"]).split(",") if a.strip())
        for name in (algorithm, *compare):
            local_algorithm(name)
        settings = cls(
            num_rounds=int(get["num-server-rounds"]),
            run_dir=str(get["run-dir"]),
            resume=bool(get["resume"]),
            compare_with=compare,
            eval_every=int(get["eval-every"]),
            timeout=float(get["timeout"]),
            wait_for_factories=int(get["wait-for-factories"]),
            round=RoundSettings(
                algorithm=algorithm,
                inner_steps=int(get["inner-steps"]),
                inner_lr=float(get["inner-lr"]),
                local_steps=int(get["local-steps"]),
                local_lr=float(get["local-lr"]),
                meta_batch_size=int(get["meta-batch-size"]),
                tasks_per_pass=int(get["tasks-per-pass"]),
                shots=int(get["shots"]),
                query_size=int(get["query-size"]),
                seed=seed,
                compression=str(get["compression"]),
                topk_fraction=float(get["topk-fraction"]),
                dp_noise_multiplier=float(get["dp-noise-multiplier"]),
                dp_delta=float(get["dp-delta"]),
                secure_aggregation=bool(get["secure-aggregation"]),
                tree_depth=int(get["tree-depth"]),
                tree_rate=float(get["tree-rate"]),
                tree_subsample=float(get["tree-subsample"]),
                local_trees=int(get["local-trees"]),
                tree_min_child_weight=float(get["tree-min-child-weight"]),
                tree_lambda=float(get["tree-lambda"]),
                tree_bins=int(get["tree-bins"]),
            ),
            evaluation=EvaluationSettings(
                algorithm=algorithm,
                shots=parse_shots(str(get["eval-shots"])),
                steps=int(get["eval-steps"]),
                lr=float(get["eval-lr"]),
                recipe=str(get["eval-recipe"]),
                tasks=int(get["eval-tasks"]),
                query_size=int(get["eval-query-size"]),
                seed=seed,
                local_only_steps=int(get["local-only-steps"]),
                local_only_lr=float(get["local-only-lr"]),
                tree_depth=int(get["tree-depth"]),
                tree_subsample=float(get["tree-subsample"]),
            ),
            outer=OuterOptimizerConfig(kind=str(get["outer-optimizer"]), lr=float(get["outer-lr"])),
            sampling=SamplingSettings(
                fraction_train=float(get["fraction-train"]),
                min_train_nodes=int(get["min-train-nodes"]),
                max_delta_norm=float(get["max-delta-norm"]),
                seed=seed,
                aggregation=AggregationRule(str(get["aggregation"]), float(get["trim-fraction"]),
                                            int(get["krum-malicious"]), int(get["krum-select"]),
                                            float(get["weight-cap"])),
                privacy=DifferentialPrivacy(float(get["dp-noise-multiplier"]), float(get["dp-clip-norm"]),
                                            float(get["dp-delta"])),
                secure=SecureAggregation(bool(get["secure-aggregation"]), float(get["secagg-threshold"]),
                                         float(get["secagg-max-weight"]), bool(get["secagg-plus"]),
                                         float(get["secagg-dropout"]), float(get["secagg-corruption"])),
            ),
        )
        if settings.num_rounds < 1:
            raise ValueError(f"num-server-rounds must be >= 1, got {settings.num_rounds}")
        if settings.wait_for_factories < 0:
            raise ValueError(f"wait-for-factories must be >= 0, got {settings.wait_for_factories}")
        if settings.eval_every < 0:
            raise ValueError(f"eval-every must be >= 0 (0: only after the last round), got {settings.eval_every}")
        if settings.sampling.secure.enabled and settings.round.compression != "none":
            raise ValueError("secure aggregation masks the whole delta in fixed point: it needs compression 'none'")
        for name in (algorithm, *compare):
            if is_tree_algorithm(name):
                _check_tree_run(name, settings)
        return settings


def _check_tree_run(algorithm: str, settings: ServerSettings) -> None:
    """Refuse what the tree family cannot honour: a factory's trees are appended as they are, so no sum of
    masked deltas hides them, no clipping and noise bound what they say, and there is no delta to compress."""
    if settings.sampling.secure.enabled:
        raise ValueError(f"{algorithm}: secure aggregation sums deltas, and trees are appended, not summed: "
                         "run the tree family without secure-aggregation")
    if settings.sampling.privacy.enabled:
        raise ValueError(f"{algorithm}: client-level differential privacy clips and noises deltas; trees carry "
                         "split thresholds and leaf values it does not bound: run the tree family without "
                         "dp-noise-multiplier")
    if settings.round.compression != "none":
        raise ValueError(f"{algorithm}: compression encodes deltas; trees travel as XGBoost's JSON: use "
                         "compression 'none'")
    if settings.sampling.aggregation.name != "mean":
        raise ValueError(f"{algorithm}: trees are appended; a robust rule ({settings.sampling.aggregation.name}) "
                         "combines deltas: use aggregation 'mean'")
