"""``fedmeta bench deployment``: per-round cost of real processes against the simulation engine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["bench_deployment"]


def bench_deployment(
    factories: Annotated[int, typer.Option(min=2, help="Factories (each a SuperNode in the deployments).")] = 3,
    rounds: Annotated[int, typer.Option(min=2, help="Rounds; the first is not timed.")] = 4,
    isolation: Annotated[
        list[str] | None,
        typer.Option(help="Deployment isolation modes to run (repeat; default: subprocess and process).",
                     show_default=False),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Round time of the same federation on the simulation engine and as real processes (TLS, node auth)."""
    from fedmeta.simulations.benchmarks import deployment  # imports torch and Ray: only when benchmarking

    console = Console()
    started = time.perf_counter()
    try:
        result = deployment.run_deployment_benchmark(
            factories,
            rounds,
            isolations=isolation or deployment.ISOLATIONS,
            log=lambda message: console.print(f"[dim]{time.perf_counter() - started:5.1f} s  {message}[/dim]"),
        )
    except (ValueError, RuntimeError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    deployment.render(result, console)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_dict(), indent=2))
        console.print(f"results written to {json_path}")
