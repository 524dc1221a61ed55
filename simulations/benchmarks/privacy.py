"""``fedmeta bench privacy``: what client-level differential privacy costs in held-out quality, at
epsilon of about 1, 4 and 8, beside the same federation without it, in one run.

The federation is the data set's benchmark run (`simulations.benchmarks.fewshot.plan_for`, with its
committed tuned hyper-parameters) on the plain loop: every training factory in every round, so each
round is a Gaussian mechanism on all of them (sampling rate 1). For each target epsilon the noise
multiplier is the smallest whose epsilon after the run's rounds, at delta 1e-5, stays at the target
(`common.security.privacy.spent_epsilon`, solved by bisection). The clipping norm is the median L2 norm of the
factories' deltas in the first round of the run without DP, the usual choice when it is set from a
trial federation; the non-private run is scored with the same clipping, so the table separates what
clipping costs from what noise costs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from fedmeta.common import Report, global_norm
from fedmeta.common.security.privacy import spent_epsilon
from fedmeta.simulations.benchmarks.fewshot import plan_for, primary_metric
from fedmeta.simulations.benchmarks.scaling import PlainLoop, Sent, held_out_metrics
from fedmeta.simulations.benchmarks.tuning import load_tuned, tuned_path

__all__ = ["DELTA", "PrivacyResult", "noise_for_epsilon", "render_privacy", "run_privacy"]

DELTA = 1e-5


def noise_for_epsilon(epsilon: float, rounds: int, delta: float = DELTA) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon after ``rounds`` full-participation rounds is
    at most ``epsilon``."""
    low, high = 1e-3, 1e4
    while high / low > 1.001:
        middle = (low * high) ** 0.5
        if spent_epsilon(rounds, 1.0, middle, delta) > epsilon:
            low = middle
        else:
            high = middle
    return high


@dataclass
class PrivacyResult:
    dataset: str
    algorithm: str
    rounds: int
    seed: int
    factories: int
    clip_norm: float
    metric: str
    shots: list[int]
    rows: list[dict[str, object]]  # per run: label, noise multiplier, epsilon spent, metric per K

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_privacy(dataset: str, epsilons: Sequence[float], rounds: int, seed: int, algorithm: str,
                log: Report) -> PrivacyResult:
    tuned = tuned_path(dataset) if dataset != "cwru-fe" else tuned_path("cwru")
    plan = plan_for(dataset, quick=False, seeds=1, rounds=rounds, tuned=load_tuned(tuned) if tuned.exists() else None)
    config = plan.run_config(seed, algorithm)
    norms: list[float] = []

    def observe(index: int, round_: int, delta, metrics) -> Sent:
        if round_ == 1:
            norms.append(global_norm(delta))
        return delta, metrics

    def train(settings: dict[str, object], send=None) -> dict[str, float]:
        loop = PlainLoop(config | settings, send)
        for _ in range(rounds):
            loop.run_round()
        return held_out_metrics(config | settings, loop.strategy.optimizer.params)

    metric, _ = primary_metric(PlainLoop(config).factories[0].source.task_kind)
    plain = train({}, observe)
    clip = statistics.median(norms)
    factories = len(norms)
    shots = sorted(int(key.rsplit("k", 1)[1]) for key in plain if key.startswith(f"{metric}-k"))
    rows = [{"run": "no DP", "noise_multiplier": 0.0, "epsilon": None, **_scores(plain, metric, shots)}]
    log(f"no DP: {rows[-1]}; clipping norm for DP {clip:.4g} (median first-round delta norm of {factories})")
    # An infinite-epsilon row: clipping alone, no noise (the noise multiplier is a hair above 0).
    runs = [("clipped, no noise", 1e-9), *((f"epsilon {e:g}", noise_for_epsilon(e, rounds)) for e in epsilons)]
    for label, noise in runs:
        scores = train({"dp-noise-multiplier": noise, "dp-clip-norm": clip, "dp-delta": DELTA})
        spent = spent_epsilon(rounds, 1.0, noise, DELTA) if noise > 1e-6 else None
        rows.append({"run": label, "noise_multiplier": noise, "epsilon": spent, **_scores(scores, metric, shots)})
        log(f"{label}: {rows[-1]}")
    return PrivacyResult(dataset, algorithm, rounds, seed, factories, clip, metric, shots, rows)


def _scores(metrics: dict[str, float], metric: str, shots: Sequence[int]) -> dict[str, float]:
    return {f"k{k}": float(metrics[f"{metric}-k{k}"]) for k in shots}


def render_privacy(result: PrivacyResult, console: Console) -> None:
    table = Table(title=f"{result.dataset}: held-out {result.metric} of {result.algorithm} after {result.rounds} "
                        f"rounds, {result.factories} factories, client-level DP at delta {DELTA:g} (seed "
                        f"{result.seed}; clipping norm {result.clip_norm:.3g})")
    for heading in ("run", "noise multiplier", "epsilon", *(f"K={k}" for k in result.shots)):
        table.add_column(heading, justify="left" if heading == "run" else "right")
    base = result.rows[0]
    for row in result.rows:
        epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        cells = [f"{row[f'k{k}']:.4f} ({row[f'k{k}'] / base[f'k{k}']:.2f}x)" for k in result.shots]
        table.add_row(str(row["run"]), f"{row['noise_multiplier']:.3g}", epsilon, *cells)
    console.print(table)
