"""``fedmeta client``: one factory (a Flower SuperNode) serving its private table to the server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape

from fedmeta.client.deployment import DEFAULT_RUNTIME_PORT, FactoryError, plan_factory, run_factory
from fedmeta.common.data_sources import ROLES
from fedmeta.common.processes import ProcessError, sigterm_as_interrupt
from fedmeta.simulations.elapsed_log import elapsed_log

__all__ = ["client"]


def client(
    server: Annotated[str, typer.Option(help="The server's HOST:PORT.")],
    data: Annotated[Path, typer.Option(help="This factory's table (CSV or Parquet); it never leaves this machine.")],
    schema: Annotated[Path, typer.Option(help="The table's schema (JSON), the federation's.")],
    key: Annotated[
        Path | None, typer.Option(help="This factory's private key (`fedmeta certs --factory NAME`).")
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="The federation's CA certificate (ca.crt).")] = None,
    role: Annotated[
        str, typer.Option(click_type=click.Choice(list(ROLES)), help="Train, or only adapt and evaluate.")
    ] = "train",
    factory: Annotated[
        str | None, typer.Option(help="This factory's name (default: the table's file name).", show_default=False)
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="Folder for the SuperNode's log and Flower's files (default: .fedmeta/factory-NAME).",
                     show_default=False),
    ] = None,
    runtime_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Local port of the node's app API (one per factory on a machine).")
    ] = DEFAULT_RUNTIME_PORT,
    device: Annotated[
        str, typer.Option(click_type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Where to train.")
    ] = "auto",
    max_wait_time: Annotated[
        float | None,
        typer.Option(help="Give up after the server was unreachable this many seconds (default: never).",
                     show_default=False),
    ] = None,
    isolation: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["subprocess", "process"]),
            help="Flower's isolation: the SuperNode starts its SuperExec (subprocess), or a long-running SuperExec "
            "runs beside it (process); either starts one app process per message.",
        ),
    ] = "subprocess",
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS and no key: for a trusted test network only.")
    ] = False,
) -> None:
    """Start this factory: check its table, key and CA, then serve the server's runs until stopped."""
    console = Console()
    report = elapsed_log(console)

    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: no TLS and no node authentication. This factory's model updates "
            "travel in clear text and it cannot tell the real server from an impostor.[/bold red]"
        )
    elif key is None or ca is None:
        missing = " and ".join(flag for flag, value in (("--key", key), ("--ca", ca)) if value is None)
        console.print(f"[red]error:[/red] a secured federation needs {missing} (or --insecure on a test network)")
        raise typer.Exit(1)
    try:
        plan = plan_factory(
            server=server,
            data=data,
            schema=schema,
            key=None if insecure else key,
            ca=None if insecure else ca,
            role=role,
            factory=factory,
            state=state,
            runtime_port=runtime_port,
            device=device,
            max_wait_s=max_wait_time,
            isolation=isolation,
        )
        report(f"{plan.data.name}: table valid against {plan.schema.name}; log {plan.log}")
        with sigterm_as_interrupt():
            run_factory(plan, report)
    except (FactoryError, ProcessError, ValueError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        console.print("stopped")
        raise typer.Exit(130) from None
