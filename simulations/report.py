"""The held-out factories' K-shot results of a run, method beside method.

Reads the last evaluation each algorithm's run folder logged. Rows: the meta-learned
model adapted on K samples, FedAvg without and with fine-tuning on the same K samples,
local-only training from scratch on those K samples, a linear model (least squares or
logistic regression) on those K samples, and the model each factory keeps by
cross-validation on its K samples among them (`common.meta.factory_choice`); all measured
in the same run on the same held-out tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedmeta.common import is_tree_algorithm
from fedmeta.server import RunDirectory

__all__ = ["ComparisonRow", "comparison_rows", "final_evaluation"]

_LOSS_KEY = re.compile(r"eval/(local-|linear-|trees-alone-|chosen-)?(loss|accuracy)-k(\d+)")


@dataclass(frozen=True)
class ComparisonRow:
    method: str
    metric: str  # "loss" or "accuracy"
    by_shots: dict[int, float]


def final_evaluation(run_dir: Path) -> dict[str, object]:
    """The last metrics record that holds held-out evaluation results."""
    records = [r for r in RunDirectory(run_dir).read_metrics() if any(k.startswith("eval/") for k in r)]
    if not records:
        raise ValueError(f"{run_dir} has no evaluation results yet")
    return records[-1]


def _rows_of(record: dict[str, object], method: str, prefix: str, with_k0: bool) -> list[ComparisonRow]:
    by_metric: dict[str, dict[int, float]] = {}
    for key, value in record.items():
        match = _LOSS_KEY.fullmatch(key)
        if match is None or (match.group(1) or "") != prefix:
            continue
        shots = int(match.group(3))
        if shots == 0 and not with_k0:
            continue
        by_metric.setdefault(match.group(2), {})[shots] = float(value)
    return [ComparisonRow(method, metric, dict(sorted(v.items()))) for metric, v in sorted(by_metric.items())]


def comparison_rows(run_root: Path, algorithm: str, baselines: tuple[str, ...]) -> list[ComparisonRow]:
    """Rows for the meta-learned ``algorithm``, each baseline, local-only training, the linear model and trees on
    the K rows and the model the factory keeps (among ``algorithm``'s adapted and unadapted model and the linear
    one)."""
    main = final_evaluation(run_root / algorithm)
    kind = "federated trees, boosted on the K rows" if is_tree_algorithm(algorithm) else "meta-learned, adapted"
    rows = _rows_of(main, f"{algorithm} ({kind})", "", with_k0=True)
    for baseline in baselines:
        label = "fedavg + fine-tune" if baseline == "fedavg" else f"{baseline} (adapted)"
        rows += _rows_of(final_evaluation(run_root / baseline), label, "", with_k0=True)
    rows += _rows_of(main, "local only (from scratch)", "local-", with_k0=False)
    linear = "logistic regression" if any(key.startswith("eval/linear-accuracy") for key in main) else "least squares"
    rows += _rows_of(main, f"{linear} on the K rows", "linear-", with_k0=False)
    rows += _rows_of(main, "trees on the K rows alone", "trees-alone-", with_k0=False)
    rows += _rows_of(main, f"chosen at the factory ({algorithm})", "chosen-", with_k0=False)
    return rows
