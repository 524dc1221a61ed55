"""``fedmeta simulate``: a federated meta-learning run on one machine: synthetic factories, a shared data
set, or a folder of factory tables (``--tables 'DIR/*.csv' --schema FILE --held-out NAME,...``).

With no arguments it trains MAML and the FedAvg baseline on 12 synthetic quality-
prediction factories and reports the 4 held-out factories' K-shot results beside
FedAvg + fine-tuning and local-only training, all measured in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from fedmeta.common import FAMILY_KINDS, FEDERATED_ALGORITHMS
from fedmeta.common.run_settings import AGGREGATIONS, COMPRESSIONS, DATASETS, RUN_SETTINGS, SettingValue
from fedmeta.common.runtime.console import exit_on_errors
from fedmeta.server import CheckpointError, RunDirectory, ServerSettings, refuse_started_runs
from fedmeta.server.strategy import OUTER_OPTIMIZERS
from fedmeta.simulations.report import comparison_rows

__all__ = ["FLAG_SETTINGS", "SIMULATE_DEFAULTS", "simulate"]

# Where `fedmeta simulate` deliberately differs from the Flower app's defaults (the run-settings
# table, `fedmeta.common.run_settings`), and why. Every other flag defaults as the app does.
SIMULATE_DEFAULTS: dict[str, SettingValue] = {
    "num-server-rounds": 40,  # enough for the comparison to settle, about a minute on 2 CPU cores
    "local-lr": 0.005,  # the local outer step the default comparison (and its tests) run with
    "eval-tasks": 25,  # more held-out tasks per K: steadier figures from a single run
    "local-only-steps": 100,  # the local-only baseline is part of the comparison table
    "compare-with": "fedavg",  # FedAvg + fine-tuning trains beside the meta-learner (--no-baseline: not)
}

# The run setting behind each flag (parameter name -> key); the others are the engine's own.
FLAG_SETTINGS = {
    "algorithm": "algorithm",
    "family": "family",
    "dataset": "dataset",
    "tables": "tables",
    "schema": "schema",
    "factories": "num-factories",
    "rounds": "num-server-rounds",
    "fraction": "fraction-train",
    "shots": "shots",
    "query_size": "query-size",
    "inner_steps": "inner-steps",
    "inner_lr": "inner-lr",
    "local_steps": "local-steps",
    "local_lr": "local-lr",
    "meta_batch_size": "meta-batch-size",
    "tasks_per_pass": "tasks-per-pass",
    "outer_optimizer": "outer-optimizer",
    "outer_lr": "outer-lr",
    "aggregation": "aggregation",
    "compression": "compression",
    "dp_noise_multiplier": "dp-noise-multiplier",
    "dp_clip_norm": "dp-clip-norm",
    "secure_aggregation": "secure-aggregation",
    "eval_shots": "eval-shots",
    "eval_tasks": "eval-tasks",
    "inject_faults": "inject-faults",
    "seed": "seed",
    "resume": "resume",
    "device": "device",
}


def _default(key: str) -> SettingValue:
    return SIMULATE_DEFAULTS.get(key, RUN_SETTINGS[key].default)


def _help(key: str) -> str:
    return RUN_SETTINGS[key].help


def _choice(values: tuple[str, ...]) -> click.Choice:
    return click.Choice(list(values))


def _progress(console: Console, rounds: int):
    started = time.perf_counter()

    def show(record) -> None:
        replies = int(record.get("train/replies", 0))
        # A tree round has no query loss: its factories boost on all their rows.
        loss = f"query loss {float(record['train/query-loss']):.4f}  " if "train/query-loss" in record else ""
        line = (
            f"{record['algorithm']:>8} round {record['round']:>3}/{rounds}  {loss}"
            f"{replies} factories  {record['seconds']:.2f} s  "
            f"[dim](elapsed {time.perf_counter() - started:.0f} s)[/dim]"
        )
        if "train/dp-epsilon" in record:
            line += f"  privacy spent: epsilon {float(record['train/dp-epsilon']):.2f}"
        if "eval/loss-k5" in record:
            line += f"  held-out 5-shot loss {float(record['eval/loss-k5']):.4f}"
        console.print(line)

    return show


def _results_table(run_dir: Path, algorithm: str, baselines: tuple[str, ...]) -> Table:
    rows = comparison_rows(run_dir, algorithm, baselines)
    shots = sorted({k for row in rows for k in row.by_shots})
    table = Table(title=f"Held-out factories: query metric after adapting on K labelled samples ({run_dir})")
    table.add_column("method")
    table.add_column("metric")
    for k in shots:
        table.add_column("no adaptation" if k == 0 else f"K={k}", justify="right")
    for row in rows:
        table.add_row(row.method, row.metric, *(f"{row.by_shots[k]:.4f}" if k in row.by_shots else "-" for k in shots))
    return table


def _held_out_setting(value: str, tables: bool) -> dict[str, SettingValue]:
    """``--held-out``: table names with --tables, else how many synthetic factories."""
    if tables:
        return {"held-out-tables": value}
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise typer.BadParameter(f"a synthetic family needs a positive number of held-out factories, got {value!r} "
                                 "(table names go with --tables)", param_hint="--held-out")
    return {"num-held-out": count}


def simulate(
    algorithm: Annotated[
        str, typer.Option(click_type=_choice(FEDERATED_ALGORITHMS), help=_help("algorithm"))
    ] = _default("algorithm"),
    family: Annotated[str, typer.Option(click_type=_choice(FAMILY_KINDS), help=_help("family"))] = _default("family"),
    dataset: Annotated[str, typer.Option(click_type=_choice(DATASETS), help=_help("dataset"))] = _default("dataset"),
    tables: Annotated[str, typer.Option(help=_help("tables"))] = _default("tables"),
    schema: Annotated[str, typer.Option(help="The tables' schema (JSON), with --tables.")] = _default("schema"),
    factories: Annotated[int, typer.Option(min=1, help=_help("num-factories"))] = _default("num-factories"),
    held_out: Annotated[
        str,
        typer.Option(help="Synthetic: how many factories never train (a number). With --tables: the tables that "
                     "never train and evaluate, by file name without suffix (comma-separated)."),
    ] = str(_default("num-held-out")),
    rounds: Annotated[int, typer.Option(min=1, help=_help("num-server-rounds"))] = _default("num-server-rounds"),
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help=_help("fraction-train"))
    ] = _default("fraction-train"),
    shots: Annotated[int, typer.Option(min=1, help=_help("shots"))] = _default("shots"),
    query_size: Annotated[int, typer.Option(min=1, help=_help("query-size"))] = _default("query-size"),
    inner_steps: Annotated[int, typer.Option(min=1, help=_help("inner-steps"))] = _default("inner-steps"),
    inner_lr: Annotated[float, typer.Option(min=0.0, help=_help("inner-lr"))] = _default("inner-lr"),
    local_steps: Annotated[int, typer.Option(min=1, help=_help("local-steps"))] = _default("local-steps"),
    local_lr: Annotated[float, typer.Option(min=0.0, help=_help("local-lr"))] = _default("local-lr"),
    meta_batch_size: Annotated[int, typer.Option(min=1, help=_help("meta-batch-size"))] = _default("meta-batch-size"),
    tasks_per_pass: Annotated[int, typer.Option(min=0, help=_help("tasks-per-pass"))] = _default("tasks-per-pass"),
    outer_optimizer: Annotated[
        str, typer.Option(click_type=_choice(OUTER_OPTIMIZERS), help=_help("outer-optimizer"))
    ] = _default("outer-optimizer"),
    outer_lr: Annotated[float, typer.Option(min=0.0, help=_help("outer-lr"))] = _default("outer-lr"),
    aggregation: Annotated[
        str, typer.Option(click_type=_choice(AGGREGATIONS), help=_help("aggregation"))
    ] = _default("aggregation"),
    dp_noise_multiplier: Annotated[
        float, typer.Option(min=0.0, help=_help("dp-noise-multiplier"))
    ] = _default("dp-noise-multiplier"),
    dp_clip_norm: Annotated[float, typer.Option(min=0.0, help=_help("dp-clip-norm"))] = _default("dp-clip-norm"),
    compression: Annotated[
        str, typer.Option(click_type=_choice(COMPRESSIONS), help=_help("compression"))
    ] = _default("compression"),
    secure_aggregation: Annotated[bool, typer.Option(help=_help("secure-aggregation"))] = _default(
        "secure-aggregation"),
    eval_shots: Annotated[str, typer.Option(help=_help("eval-shots"))] = _default("eval-shots"),
    eval_tasks: Annotated[int, typer.Option(min=1, help=_help("eval-tasks"))] = _default("eval-tasks"),
    inject_faults: Annotated[str, typer.Option(help=_help("inject-faults"))] = _default("inject-faults"),
    baseline: Annotated[bool, typer.Option(help="Also train FedAvg in the same run for comparison.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the factories, the model and sampling.")] = _default("seed"),
    output: Annotated[
        Path | None, typer.Option("--output", "--out", help="Run folder (default: runs/simulate-<time>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help=_help("resume"))] = _default("resume"),
    device: Annotated[
        str, typer.Option(click_type=_choice(("auto", "cpu", "cuda", "mps")), help=_help("device"))
    ] = _default("device"),
    client_cpus: Annotated[float, typer.Option(min=0.0, help="CPUs reserved per simulated factory.")] = 1.0,
    client_gpus: Annotated[
        float, typer.Option(min=0.0, help="GPU share per simulated factory (0.25: 4 share one).")
    ] = 0.0,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Run on the Ray cluster whose head node is at HOST:PORT (`ray start --head` prints it; "
                     "default: RAY_ADDRESS if set, else a Ray of its own on this machine; 'local': a Ray of its own "
                     "even where RAY_ADDRESS is set).", show_default=False),
    ] = None,
) -> None:
    """Federated meta-learning on synthetic factories, compared with FedAvg and local-only training."""
    if resume and output is None:
        raise typer.BadParameter("--resume needs the --output folder of the run to continue", param_hint="--resume")
    if tables and not schema:
        raise typer.BadParameter("--tables needs the tables' --schema", param_hint="--tables")
    run_dir = output or Path("runs") / time.strftime("simulate-%Y%m%d-%H%M%S")
    flags = locals()
    run_config = {key: flags[name] for name, key in FLAG_SETTINGS.items()}
    run_config |= _held_out_setting(held_out, bool(tables))
    baselines = (str(_default("compare-with")),) if baseline and algorithm != "fedavg" else ()
    run_config |= {
        "compare-with": ",".join(baselines),
        "family-seed": seed,
        "local-only-steps": _default("local-only-steps"),
        "run-dir": str(run_dir),
    }
    from fedmeta.server.run import NoFactoriesError  # torch: only when simulating
    from fedmeta.simulations.harness import (  # Ray: only when simulating
        RayClusterError,
        run_federated_simulation,
        simulated_source,
    )

    console = Console()
    # Bad settings, tables or held-out names, or a run folder holding a run to start over: named before the engine
    # starts.
    with exit_on_errors(console, ValueError, CheckpointError):
        settings = ServerSettings.from_run_config(run_config)
        source = simulated_source(run_config)
        if not resume:
            refuse_started_runs(run_dir, (settings.round.algorithm, *settings.compare_with))
    what = f"{factories} + {held_out} held-out {family}" if dataset == "synthetic" else f"the {dataset}"
    if tables:
        what = f"the {tables} ({held_out} held out)"
    console.print(f"Simulating {what} factories; run folder {run_dir}")
    with exit_on_errors(console, RayClusterError, NoFactoriesError):
        run_federated_simulation(
            run_config, client_cpus=client_cpus, client_gpus=client_gpus, progress=_progress(console, rounds),
            source=source, ray_address=ray_address,
        )
    console.print(_results_table(run_dir, algorithm, baselines))
    for trained in (algorithm, *baselines):
        last = RunDirectory(run_dir / trained).read_metrics()[-1]
        if "train/dp-epsilon" in last:  # each model's own; releasing both composes them
            console.print(f"{trained}: client-level privacy spent epsilon {float(last['train/dp-epsilon']):.2f} at "
                          f"delta {float(_default('dp-delta')):g} over {last['round']} rounds")
