"""The aggregation server's settings, read from a Flower run config.

Keys are those of ``[tool.flwr.app.config]`` in pyproject.toml (dashes), overridable
with ``flwr run . --run-config "key=value"`` or the ``fedmeta simulate`` flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedmeta.common.federation import EvaluationSettings, RoundSettings, local_algorithm
from fedmeta.common.outer_optimizer import OuterOptimizerConfig
from fedmeta.server.strategy import SamplingSettings

__all__ = ["ServerSettings"]


def _shots(value: object) -> tuple[int, ...]:
    """``"1,5,10"`` (Flower run configs hold no lists) or a sequence of ints."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(int(p) for p in parts)
    except (TypeError, ValueError) as error:
        raise ValueError(f"eval-shots must be comma-separated integers, got {value!r}") from error


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
        def get(key: str, default: object) -> object:
            return config.get(key, default)

        algorithm = str(get("algorithm", "maml"))
        seed = int(get("seed", 0))
        compare = tuple(a for a in str(get("compare-with", "")).split(",") if a.strip())
        for name in (algorithm, *compare):
            local_algorithm(name)
        settings = cls(
            num_rounds=int(get("num-server-rounds", 10)),
            run_dir=str(get("run-dir", "runs/latest")),
            resume=bool(get("resume", False)),
            compare_with=tuple(a.strip() for a in compare),
            eval_every=int(get("eval-every", 0)),
            timeout=float(get("timeout", 600.0)),
            wait_for_factories=int(get("wait-for-factories", 0)),
            round=RoundSettings(
                algorithm=algorithm,
                inner_steps=int(get("inner-steps", 5)),
                inner_lr=float(get("inner-lr", 0.05)),
                local_steps=int(get("local-steps", 5)),
                local_lr=float(get("local-lr", 0.001)),
                meta_batch_size=int(get("meta-batch-size", 4)),
                shots=int(get("shots", 5)),
                query_size=int(get("query-size", 15)),
                seed=seed,
            ),
            evaluation=EvaluationSettings(
                algorithm=algorithm,
                shots=_shots(get("eval-shots", "1,5,10,20")),
                steps=int(get("eval-steps", 10)),
                lr=float(get("eval-lr", get("inner-lr", 0.05))),
                tasks=int(get("eval-tasks", 10)),
                query_size=int(get("eval-query-size", 10)),
                seed=seed,
                local_only_steps=int(get("local-only-steps", 0)),
                local_only_lr=float(get("local-only-lr", 0.05)),
            ),
            outer=OuterOptimizerConfig(kind=str(get("outer-optimizer", "sgd")), lr=float(get("outer-lr", 1.0))),
            sampling=SamplingSettings(
                fraction_train=float(get("fraction-train", 1.0)),
                min_train_nodes=int(get("min-train-nodes", 2)),
                max_delta_norm=float(get("max-delta-norm", 100.0)),
                seed=seed,
            ),
        )
        if settings.num_rounds < 1:
            raise ValueError(f"num-server-rounds must be >= 1, got {settings.num_rounds}")
        if settings.wait_for_factories < 0:
            raise ValueError(f"wait-for-factories must be >= 0, got {settings.wait_for_factories}")
        if settings.eval_every < 0:
            raise ValueError(f"eval-every must be >= 0 (0: only after the last round), got {settings.eval_every}")
        return settings
