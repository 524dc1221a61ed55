"""``fedmeta bench privacy``: what client-level differential privacy costs in held-out quality, at
epsilon of about 1, 4 and 8, beside the same federation without it, and how that cost falls as the
federation grows.

The federation is the data set's benchmark run (`simulations.benchmarks.fewshot.plan_for`, with its
committed tuned hyper-parameters) on the plain loop, whose rounds aggregate with the server's own code
(`FedMetaStrategy.apply_deltas`, i.e. `DifferentialPrivacy.noisy_mean` under DP). With ``factories``
the data set is the synthetic family at each of those numbers of training factories (its held-out
factories stay the same), which is how the cost of DP is followed from 10 to 1,000 factories.

Each round trains a Poisson sample of the training factories: every factory joins independently with
probability ``sampling_rate`` (seeded by the run's seed and the round, so every run of one size trains
the same factories in the same rounds). That is the sampling the accountant counts
(`common.security.privacy.spent_epsilon`: a Poisson-sampled Gaussian mechanism per round, RDP), so the
epsilon in the table is the run's own. A round that samples nobody leaves the model unchanged. For each
target epsilon the noise multiplier is the smallest whose epsilon after the run's rounds, at delta 1e-5
and that sampling rate, stays at the target (solved by bisection); below a rate of 1 the accountant's
amplification by subsampling lowers it. The clipping norm is the median L2 norm of the deltas in the
first round of the run without DP, the usual choice when it is set from a trial federation; a run with
the same clipping and no noise separates what clipping costs from what noise costs.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from fedmeta.common import Report, global_norm, resolve_run_config
from fedmeta.common.security.privacy import spent_epsilon
from fedmeta.simulations.benchmarks.fewshot import plan_for, primary_metric
from fedmeta.simulations.benchmarks.scaling import PlainLoop, Sent, held_out_metrics
from fedmeta.simulations.benchmarks.tuning import load_tuned, tuned_path

__all__ = ["DELTA", "TOLERANCE", "PrivacyResult", "noise_for_epsilon", "poisson_sample", "privacy_sweep",
           "render_privacy", "run_privacy", "smallest_usable"]

DELTA = 1e-5
TOLERANCE = 0.1  # DP is "usable" where it costs at most this share of the held-out metric
NO_DP, CLIPPED = "no DP", "clipped, no noise"


def noise_for_epsilon(epsilon: float, rounds: int, sampling_rate: float = 1.0, delta: float = DELTA) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon after ``rounds`` rounds, each on a Poisson
    sample of the factories at ``sampling_rate``, is at most ``epsilon``."""
    low, high = 1e-3, 1e4
    while high / low > 1.001:
        middle = (low * high) ** 0.5
        if spent_epsilon(rounds, sampling_rate, middle, delta) > epsilon:
            low = middle
        else:
            high = middle
    return high


def poisson_sample(count: int, sampling_rate: float, seed: int, round_: int) -> list[int]:
    """The indices of ``count`` factories that round ``round_`` trains: each independently with probability
    ``sampling_rate``, reproducibly from ``seed``."""
    rng = random.Random(f"{seed}/{round_}")
    return [index for index in range(count) if rng.random() < sampling_rate]


@dataclass
class PrivacyResult:
    dataset: str
    algorithm: str
    rounds: int
    seed: int
    sampling_rate: float
    metric: str
    higher_is_better: bool
    shots: list[int]
    clip_norms: dict[int, float]  # per number of training factories
    # per run: factories, run, target epsilon, noise multiplier, epsilon spent, metric per K
    rows: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def ratios(self, row: dict[str, object]) -> list[float]:
        """``row``'s metric per K over that of the federation of the same size without DP."""
        base = next(r for r in self.rows if r["factories"] == row["factories"] and r["run"] == NO_DP)
        return [float(row[f"k{k}"]) / float(base[f"k{k}"]) for k in self.shots]

    def cost(self, row: dict[str, object]) -> float:
        """How much worse than the same federation without DP ``row`` is, at its worst K: 0.1 is 10%."""
        ratios = self.ratios(row)
        return max(1 - ratio for ratio in ratios) if self.higher_is_better else max(ratio - 1 for ratio in ratios)


def smallest_usable(result: PrivacyResult, epsilon: float, tolerance: float = TOLERANCE) -> int | None:
    """The fewest training factories (of those run) at which the run at ``epsilon`` costs at most
    ``tolerance`` of the metric without DP at every K; None if none did."""
    usable = [int(row["factories"]) for row in result.rows
              if row["target"] == epsilon and result.cost(row) <= tolerance]
    return min(usable, default=None)


def run_privacy(dataset: str, epsilons: Sequence[float], rounds: int, seed: int, algorithm: str, log: Report,
                factories: Sequence[int] | None = None, sampling_rate: float = 1.0) -> PrivacyResult:
    """`privacy_sweep` on the data set's benchmark run of ``algorithm`` (its tuned hyper-parameters)."""
    tuned = tuned_path(dataset) if dataset != "cwru-fe" else tuned_path("cwru")
    plan = plan_for(dataset, quick=False, seeds=1, rounds=rounds, tuned=load_tuned(tuned) if tuned.exists() else None)
    return privacy_sweep(plan.run_config(seed, algorithm), epsilons, log, factories, sampling_rate)


def privacy_sweep(config: Mapping[str, object], epsilons: Sequence[float], log: Report,
                  factories: Sequence[int] | None = None, sampling_rate: float = 1.0) -> PrivacyResult:
    """Train the run ``config`` without DP, with clipping alone and at each target epsilon, per number of
    ``factories`` (synthetic family; None: the run's own factories), on a Poisson sample at ``sampling_rate``."""
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], got {sampling_rate}")
    settings = resolve_run_config(config)
    if factories is not None and settings["dataset"] != "synthetic":
        raise ValueError(f"a number of factories is set for the synthetic family only, not for {settings['dataset']!r}")
    rounds = int(settings["num-server-rounds"])
    result = PrivacyResult(str(settings["dataset"]), str(settings["algorithm"]), rounds, int(settings["seed"]),
                           sampling_rate, "", False, [], {}, [])
    noises = {epsilon: noise_for_epsilon(epsilon, rounds, sampling_rate) for epsilon in epsilons}
    base = {**config, "fraction-train": sampling_rate}
    for size in [{}] if factories is None else [{"num-factories": count} for count in factories]:
        _run_size(result, base | size, noises, log)
    return result


def _run_size(result: PrivacyResult, config: dict[str, object], noises: dict[float, float], log: Report) -> None:
    """Append one federation size's runs (no DP, clipped, each target epsilon) to ``result``."""
    norms: dict[int, list[float]] = {}  # by round

    def observe(index: int, round_: int, delta, metrics) -> Sent:
        norms.setdefault(round_, []).append(global_norm(delta))
        return delta, metrics

    def train(settings: dict[str, object], send=None) -> tuple[PlainLoop, dict[str, float]]:
        loop = PlainLoop(config | settings, send)
        for round_ in range(1, result.rounds + 1):
            loop.run_round(poisson_sample(len(loop.factories), result.sampling_rate, result.seed, round_))
        return loop, held_out_metrics(config | settings, loop.strategy.optimizer.params)

    loop, plain = train({}, observe)
    count = len(loop.factories)
    if not norms:
        raise ValueError(f"no factory was sampled in {result.rounds} rounds of {count} at rate {result.sampling_rate}")
    first = norms[min(norms)]
    clip = result.clip_norms[count] = statistics.median(first)
    if not result.metric:
        result.metric, result.higher_is_better = primary_metric(loop.factories[0].source.task_kind)
        result.shots = sorted(int(key.rsplit("k", 1)[1]) for key in plain if key.startswith(f"{result.metric}-k"))
    runs = [(NO_DP, None, 0.0, plain)]
    log(f"{count} factories, no DP: {_scores(plain, result.metric, result.shots)}; clipping norm for DP "
        f"{clip:.4g} (median first-round delta norm of {len(first)})")
    # An infinite-epsilon run: clipping alone, no noise (the noise multiplier is a hair above 0).
    for label, target, noise in [(CLIPPED, None, 1e-9), *((f"epsilon {e:g}", e, z) for e, z in noises.items())]:
        _, scores = train({"dp-noise-multiplier": noise, "dp-clip-norm": clip, "dp-delta": DELTA})
        runs.append((label, target, noise, scores))
        log(f"{count} factories, {label}: {_scores(scores, result.metric, result.shots)}")
    for label, target, noise, scores in runs:
        spent = spent_epsilon(result.rounds, result.sampling_rate, noise, DELTA) if target is not None else None
        result.rows.append({"factories": count, "run": label, "target": target, "noise_multiplier": noise,
                            "epsilon": spent, **_scores(scores, result.metric, result.shots)})


def _scores(metrics: dict[str, float], metric: str, shots: Sequence[int]) -> dict[str, float]:
    return {f"k{k}": float(metrics[f"{metric}-k{k}"]) for k in shots}


def render_privacy(result: PrivacyResult, console: Console) -> None:
    sizes = ", ".join(f"{count}: {clip:.3g}" for count, clip in result.clip_norms.items())
    table = Table(title=f"{result.dataset}: held-out {result.metric} of {result.algorithm} after {result.rounds} "
                        f"rounds, a Poisson sample of {result.sampling_rate:g} of the training factories a round, "
                        f"client-level DP at delta {DELTA:g} (seed {result.seed}; clipping norm by factories "
                        f"{sizes}); in brackets: times no DP")
    for heading in ("factories", "run", "noise multiplier", "epsilon", *(f"K={k}" for k in result.shots)):
        table.add_column(heading, justify="left" if heading == "run" else "right")
    for row in result.rows:
        epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        ratios = zip(result.shots, result.ratios(row), strict=True)
        cells = [f"{row[f'k{k}']:.4g} ({ratio:.2f}x)" for k, ratio in ratios]
        table.add_row(str(row["factories"]), str(row["run"]), f"{row['noise_multiplier']:.3g}", epsilon, *cells)
    console.print(table)
    targets = [row["target"] for row in result.rows if row["target"] is not None]
    if targets:
        loosest = max(targets)
        usable = smallest_usable(result, loosest)
        sizes_run = ", ".join(str(count) for count in result.clip_norms)
        console.print(f"epsilon {loosest:g} costs at most {TOLERANCE:.0%} of the held-out {result.metric} at every K: "
                      f"{'at none' if usable is None else f'first at {usable}'} of the {sizes_run} training "
                      "factories run")
