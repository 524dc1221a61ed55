"""``fedmeta bench references``: the full-data neural references, trained as the literature trains them.

Before federation or meta-learning can be judged, the model and its training recipe must
reach published figures when trained centrally on a whole data set. For each C-MAPSS
subset and seed: `load_cmapss_central` (10 whole validation engines, a window at every
cycle) and `train_supervised` (Adam, early stopping, best epoch kept), scored on the
official test split with true RUL capped at 125 and predictions clipped to [0, 125].
The few-shot benchmark's C-MAPSS oracles are this same function.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table

from fedmeta.client import initial_weights
from fedmeta.common import FactoryData, SupervisedRecipe, build_model, predict, train_supervised
from fedmeta.common.datasets import SUBSETS, load_cmapss_central, rul_scores

__all__ = ["LITERATURE", "cmapss_reference", "render", "run_reference_benchmark"]

# Published test RMSE of small networks trained on one subset alone (cycles, capped RUL), where the
# project cites a figure (FD001: the few-shot report's reference; FD003: 1-D CNN / one-layer LSTM),
# and the most this project's reference may score (issue 11's aims).
LITERATURE = {"FD001": "12.6-16", "FD003": "12.6-14.2"}
AIMS = {"FD003": 13.5, "FD004": 24.0}


def cmapss_reference(
    subset: str, seed: int, recipe: SupervisedRecipe, pooled: Sequence[FactoryData] = ()
) -> dict[str, float]:
    """Train on ``subset``'s training engines (plus the ``pooled`` factories' windows) and score its test split."""
    split = load_cmapss_central(subset, seed=seed)
    train = split.train
    if pooled:
        train = FactoryData(f"{train.name} + pooled", torch.cat([train.x, *(f.x for f in pooled)]),
                            torch.cat([train.y, *(f.y for f in pooled)]))
    model = build_model(split.model_config)
    started = time.perf_counter()
    result = train_supervised(model, initial_weights(model, seed), train, split.validation, kind="regression",
                              recipe=recipe, seed=seed)
    with torch.no_grad():
        pred = predict(model, result.weights, split.test.x)[:, 0] * split.target_scale
    return {**rul_scores(pred, split.test.y * split.target_scale), "best_epoch": result.best_epoch,
            "epochs": result.epochs, "seconds": time.perf_counter() - started}


def run_reference_benchmark(
    subsets: Sequence[str], seeds: int, recipe: SupervisedRecipe | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Every subset at seeds 0..seeds-1 (default recipe unless given); the runs and their mean RMSE per subset."""
    recipe = recipe or SupervisedRecipe()
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown or not subsets or seeds < 1:
        raise ValueError(f"subsets must be some of {list(SUBSETS)} and seeds >= 1, got {list(subsets)}, {seeds}")
    runs = {}
    for subset in subsets:
        runs[subset] = []
        for seed in range(seeds):
            runs[subset].append({"seed": seed, **cmapss_reference(subset, seed, recipe)})
            if log is not None:
                log(f"{subset} seed {seed}: test RMSE {runs[subset][-1]['rmse']:.2f} cycles")
    return {"recipe": dataclasses.asdict(recipe), "runs": runs,
            "mean_rmse": {s: statistics.fmean(r["rmse"] for r in rs) for s, rs in runs.items()}}


def render(result: dict[str, object], console: Console) -> None:
    table = Table(title="Full-data neural references: official test split, true RUL capped at 125 (cycles)")
    for column in ("subset", "test RMSE, mean (per seed)", "NASA score, mean", "epochs (best)", "literature",
                   "aim"):
        table.add_column(column)
    for subset, runs in result["runs"].items():
        mean = result["mean_rmse"][subset]
        aim = AIMS.get(subset)
        table.add_row(
            subset, f"{mean:.2f} (" + ", ".join(f"{r['rmse']:.2f}" for r in runs) + ")",
            f"{statistics.fmean(r['nasa'] for r in runs):.0f}",
            ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs), LITERATURE.get(subset, "-"),
            "-" if aim is None else f"<= {aim}: {'met' if mean <= aim else 'NOT met'}",
        )
    console.print(table)
