"""`fedmeta bench predict`: `fedmeta predict` on a large table beside the floor, reading it with pandas alone.

A factory scores its production tables with the package; the floor is what reading the same
file costs with pandas and nothing else. Each measurement runs in a fresh process (peak memory
is per process; see `memory`), alternating predict and floor, and the ratio of the medians is
printed with the peak resident memory of the predict process (imports included). Aims: at most
1.5x the floor, under 1 GB. Beside them, the package's forward pass alone on the same number of
rows already in memory, in the same chunks and threads as predict: the part of predict that no
reading or writing can remove.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import torch
from rich.console import Console
from rich.table import Table

from fedmeta.client.floor.adapt import table_schema
from fedmeta.client.floor.predict import forward_passes, forward_threads, predict_table
from fedmeta.common import Report, build_model
from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.package.model_package import (
    AdaptationPlan,
    Manifest,
    ModelPackage,
    PackageSchema,
    load_package,
    save_package,
)
from fedmeta.simulations.benchmarks.aims import verdict
from fedmeta.simulations.benchmarks.memory import current_rss_bytes, peak_rss_bytes, run_in_fresh_processes

__all__ = ["FEATURES", "PredictBenchmark", "render", "run_predict_benchmark"]

FEATURES = tuple(f"x{i}" for i in range(6))
TIME_AIM, MEMORY_AIM_BYTES = 1.5, 1 << 30


@dataclass(frozen=True)
class PredictBenchmark:
    rows: int
    repeats: int
    table_mb: float
    floor_seconds: list[float]
    predict_seconds: list[float]
    forward_seconds: list[float]
    predict_peak_bytes: int
    floor_peak_bytes: int
    predict_work_bytes: int  # the peak above the process's memory just before the work (imports, package)
    floor_work_bytes: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.predict_seconds) / statistics.median(self.floor_seconds)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio, "time_aim": TIME_AIM, "memory_aim_bytes": MEMORY_AIM_BYTES}


def _write_table(path: Path, rows: int) -> None:
    """A production table: an ID column, a timestamp and six process features."""
    generator = np.random.default_rng(0)
    columns = {"id": pa.array(np.char.add("row-", np.arange(rows).astype(str))),
               "timestamp": pa.array(np.datetime64("2026-01-01T00:00:00") + np.arange(rows).astype("timedelta64[s]"))}
    columns.update({name: pa.array(generator.normal(10.0, 3.0, rows)) for name in FEATURES})
    pa_csv.write_csv(pa.table(columns), path)


def _write_package(path: Path) -> None:
    """A regression MLP with a factory's input and target scaling, as `fedmeta adapt` leaves it."""
    torch.manual_seed(0)
    config = ModelConfig("mlp", (len(FEATURES),), 1)
    weights = {n: p.detach().clone() for n, p in build_model(config).named_parameters()}
    scaling = FeatureScaling(torch.full((len(FEATURES),), 10.0), torch.full((len(FEATURES),), 3.0), 1000)
    manifest = Manifest(PackageSchema(FEATURES, "quality", "regression"), config, AdaptationPlan("fomaml", 10, 0.01),
                        "factory-rows", "bench", 1, scaling=scaling, target_scaling=TargetScaling(54.0, 1.5, 20))
    save_package(path, weights, {}, manifest)


def _forward_alone(package: ModelPackage, rows: int) -> float:
    """Seconds of the package's forward passes on ``rows`` random scaled rows already in memory."""
    model = build_model(package.manifest.model)
    model.load_state_dict(package.weights)
    model.eval()
    x = np.random.default_rng(0).normal(size=(rows, len(FEATURES))).astype(np.float32)
    with forward_threads():
        started = time.perf_counter()
        forward_passes(model, x)
        return time.perf_counter() - started


def _measure(kind: str, table: str, package: str, out: str) -> tuple[float, int, int]:
    """Seconds, peak resident bytes and that peak above the memory just before the work, of one run in
    this fresh process (predict uses every core, as `fedmeta predict` does; pandas' CSV reader uses one)."""
    loaded = load_package(package) if kind != "floor" else None
    if kind == "forward":
        return _forward_alone(loaded, int(out)), 0, 0
    rss = current_rss_bytes()
    started = time.perf_counter()
    if loaded is None:
        pd.read_csv(table)
    else:
        predict_table(loaded, Path(table), Path(out), table_schema(loaded.manifest))
    seconds = time.perf_counter() - started
    peak = max(peak_rss_bytes(), rss)
    return seconds, peak, peak - rss


def run_predict_benchmark(rows: int, repeats: int, log: Report) -> PredictBenchmark:
    """Time predict and the pandas floor ``repeats`` times each, alternating, on a ``rows``-row table."""
    with tempfile.TemporaryDirectory(prefix="fedmeta-bench-predict-") as folder:
        root = Path(folder)
        table, package = root / "production.csv", root / "package"
        _write_table(table, rows)
        _write_package(package)
        size = table.stat().st_size / 1e6
        log(f"table: {rows} rows, {size:.0f} MB; {repeats} runs each of predict and of pandas.read_csv")
        calls = []
        for repeat in range(repeats):
            calls += [("floor", str(table), str(package), ""),
                      ("predict", str(table), str(package), str(root / f"predicted-{repeat}.csv")),
                      ("forward", "", str(package), str(rows))]
        results = run_in_fresh_processes(_measure, calls)
    floor = [result for call, result in zip(calls, results, strict=True) if call[0] == "floor"]
    predicted = [result for call, result in zip(calls, results, strict=True) if call[0] == "predict"]
    forward = [result[0] for call, result in zip(calls, results, strict=True) if call[0] == "forward"]
    return PredictBenchmark(rows, repeats, size, [r[0] for r in floor], [r[0] for r in predicted], forward,
                            max(r[1] for r in predicted), max(r[1] for r in floor),
                            max(r[2] for r in predicted), max(r[2] for r in floor))


def render(result: PredictBenchmark, console: Console) -> None:
    table = Table(title=f"fedmeta predict on {result.rows:,} rows ({result.table_mb:.0f} MB CSV), median of "
                        f"{result.repeats}")
    for heading in ("work", "seconds", "runs (s)", "peak memory", "of it, the work"):
        table.add_column(heading, justify="left" if heading == "work" else "right")
    for name, seconds, peak, work in (
        ("pandas.read_csv (floor)", result.floor_seconds, result.floor_peak_bytes, result.floor_work_bytes),
        ("fedmeta predict", result.predict_seconds, result.predict_peak_bytes, result.predict_work_bytes),
    ):
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        table.add_row(name, f"{statistics.median(seconds):.2f}", runs, f"{peak / 2**20:.0f} MiB",
                      f"{work / 2**20:.0f} MiB")
    forward = statistics.median(result.forward_seconds)
    table.add_row("its forward passes alone", f"{forward:.2f}", ", ".join(f"{s:.2f}" for s in result.forward_seconds),
                  "", "")
    console.print(table)
    time_ok = verdict(result.ratio <= TIME_AIM)
    memory_ok = verdict(result.predict_peak_bytes < MEMORY_AIM_BYTES)
    console.print(f"predict / floor: {result.ratio:.2f}x (aim <= {TIME_AIM}x: {time_ok}); predict's peak "
                  f"{result.predict_peak_bytes / 2**20:.0f} MiB (aim < 1 GiB: {memory_ok}); the forward passes "
                  f"alone: {forward / statistics.median(result.floor_seconds):.2f}x the floor")
