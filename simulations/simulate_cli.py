"""``fedmeta simulate``: a federated meta-learning run on synthetic factories, one machine.

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

from fedmeta.common.data_sources import DATASETS, default_lr
from fedmeta.common.federation import FEDERATED_ALGORITHMS
from fedmeta.common.outer_optimizer import OUTER_OPTIMIZERS
from fedmeta.common.synthetic import FAMILY_KINDS
from fedmeta.simulations.report import comparison_rows

__all__ = ["simulate"]

# K values every held-out factory can supply: fault factories hold >= 10 windows per
# class; AI4I's variant H has only 21 failures.
_DEFAULT_EVAL_SHOTS = {"fault": "1,5", "ai4i": "1,5,10"}


def _choice(values: tuple[str, ...]) -> click.Choice:
    return click.Choice(list(values))


def _progress(console: Console, rounds: int):
    started = time.perf_counter()

    def show(record) -> None:
        loss = record.get("train/query-loss", float("nan"))
        replies = int(record.get("train/replies", 0))
        line = (
            f"{record['algorithm']:>8} round {record['round']:>3}/{rounds}  query loss {float(loss):.4f}  "
            f"{replies} factories  {record['seconds']:.2f} s  "
            f"[dim](elapsed {time.perf_counter() - started:.0f} s)[/dim]"
        )
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


def simulate(
    algorithm: Annotated[
        str, typer.Option(click_type=_choice(FEDERATED_ALGORITHMS), help="Meta-learning algorithm.")
    ] = "maml",
    family: Annotated[
        str, typer.Option(click_type=_choice(FAMILY_KINDS), help="Synthetic factory family.")
    ] = "quality",
    dataset: Annotated[
        str, typer.Option(click_type=_choice(DATASETS), help="Synthetic factories, or a shared real data set.")
    ] = "synthetic",
    factories: Annotated[int, typer.Option(min=1, help="Training factories.")] = 12,
    held_out: Annotated[int, typer.Option(min=1, help="Factories that never train; they evaluate.")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 40,
    fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of factories per round.")] = 1.0,
    shots: Annotated[int, typer.Option(min=1, help="Support samples per training task (per class).")] = 5,
    query_size: Annotated[int, typer.Option(min=1, help="Query samples per training task.")] = 15,
    inner_steps: Annotated[int, typer.Option(min=1, help="Inner-loop adaptation steps.")] = 5,
    inner_lr: Annotated[
        float | None,
        typer.Option(min=0.0, show_default=False, help="Inner-loop and fine-tuning step size [default: per data set, "
                     "0.05 synthetic, 0.01 ai4i/cwru, 0.003 cmapss]."),
    ] = None,
    local_steps: Annotated[int, typer.Option(min=1, help="Local meta-steps per round.")] = 5,
    local_lr: Annotated[float, typer.Option(min=0.0, help="Clients' local outer (Adam) step size.")] = 0.005,
    meta_batch_size: Annotated[int, typer.Option(min=1, help="Tasks per local meta-step.")] = 4,
    outer_optimizer: Annotated[
        str, typer.Option(click_type=_choice(OUTER_OPTIMIZERS), help="Server optimizer.")
    ] = "sgd",
    outer_lr: Annotated[float, typer.Option(min=0.0, help="Server step size (sgd 1.0 = plain averaging).")] = 1.0,
    eval_shots: Annotated[
        str | None, typer.Option(help="K values for held-out evaluation [default: 1,5,10,20; fault: 1,5].")
    ] = None,
    baseline: Annotated[bool, typer.Option(help="Also train FedAvg in the same run for comparison.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the factories, the model and sampling.")] = 0,
    output: Annotated[Path | None, typer.Option(help="Run folder (default: runs/simulate-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output from its last checkpoint.")] = False,
    device: Annotated[
        str, typer.Option(click_type=_choice(("auto", "cpu", "cuda", "mps")), help="Client device.")
    ] = "auto",
    client_cpus: Annotated[float, typer.Option(min=0.0, help="CPUs reserved per simulated factory.")] = 1.0,
    client_gpus: Annotated[
        float, typer.Option(min=0.0, help="GPU share per simulated factory (0.25: 4 share one).")
    ] = 0.0,
) -> None:
    """Federated meta-learning on synthetic factories, compared with FedAvg and local-only training."""
    if resume and output is None:
        raise typer.BadParameter("--resume needs the --output folder of the run to continue", param_hint="--resume")
    run_dir = output or Path("runs") / time.strftime("simulate-%Y%m%d-%H%M%S")
    baselines = ("fedavg",) if baseline and algorithm != "fedavg" else ()
    run_config = {
        "algorithm": algorithm,
        "compare-with": ",".join(baselines),
        "family": family,
        "num-factories": factories,
        "num-held-out": held_out,
        "family-seed": seed,
        "seed": seed,
        "num-server-rounds": rounds,
        "fraction-train": fraction,
        "shots": shots,
        "query-size": query_size,
        "inner-steps": inner_steps,
        "inner-lr": inner_lr if inner_lr is not None else default_lr(dataset),
        "local-only-lr": inner_lr if inner_lr is not None else default_lr(dataset),
        "local-steps": local_steps,
        "local-lr": local_lr,
        "meta-batch-size": meta_batch_size,
        "outer-optimizer": outer_optimizer,
        "outer-lr": outer_lr,
        "eval-shots": eval_shots or _DEFAULT_EVAL_SHOTS.get(dataset if dataset != "synthetic" else family, "1,5,10,20"),
        "dataset": dataset,
        "eval-tasks": 25,
        "local-only-steps": 100,
        "run-dir": str(run_dir),
        "resume": resume,
        "device": device,
    }
    from fedmeta.simulations.harness import run_federated_simulation  # starts Ray: only when simulating

    console = Console()
    what = f"{factories} + {held_out} held-out {family}" if dataset == "synthetic" else f"the {dataset}"
    console.print(f"Simulating {what} factories; run folder {run_dir}")
    run_federated_simulation(
        run_config, client_cpus=client_cpus, client_gpus=client_gpus, progress=_progress(console, rounds)
    )
    console.print(_results_table(run_dir, algorithm, baselines))
