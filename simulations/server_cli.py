"""``fedmeta server``: the aggregation server (a Flower SuperLink and one run), TLS and node auth on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedmeta.common.credentials import CredentialError
from fedmeta.common.processes import ProcessError, sigterm_as_interrupt
from fedmeta.server.deployment import DEFAULT_PORT, DeploymentError, build_run_config, plan_server, serve
from fedmeta.simulations.elapsed_log import elapsed_log

__all__ = ["server"]


def server(
    certs: Annotated[
        Path, typer.Option(help="Folder with ca.crt, server.crt and server.key (from `fedmeta certs`).")
    ] = Path("certs"),
    state: Annotated[
        Path, typer.Option(help="Folder for the SuperLink's database, logs, Flower's files and the run folder.")
    ] = Path(".fedmeta/server"),
    factory_keys: Annotated[
        Path | None,
        typer.Option(help="Folder of the factories' public keys (*.pub) to register (default: the --certs folder).",
                     show_default=False),
    ] = None,
    run_config: Annotated[
        str | None,
        typer.Option(help="Run settings as for `flwr run`: 'num-server-rounds=20 algorithm=\"reptile\"' or a .toml "
                     "file. run-dir defaults to STATE/run."),
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="The federation's table schema (JSON), when factories train on tables.")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on: every interface, or 127.0.0.1 to stay on this machine.")
    ] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port for factories and the run (Flower's default).")] = DEFAULT_PORT,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in run-dir from its last checkpoint.")
    ] = False,
    node_auth: Annotated[
        bool, typer.Option(help="Accept only factories whose public key is registered.")
    ] = True,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS and no node authentication: for a trusted test network only.")
    ] = False,
) -> None:
    """Start the aggregation server, register the factories' keys and run the federation to its end."""
    console = Console()
    report = elapsed_log(console)

    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: no TLS and no node authentication. Model updates travel in clear "
            "text and any machine that reaches this port can join as a factory.[/bold red]"
        )
    try:
        config = build_run_config(run_config, state=state, schema=schema, resume=resume)
        plan = plan_server(
            state=state,
            certs=None if insecure else certs,
            factory_keys=(factory_keys or certs) if node_auth and not insecure else None,
            host=host,
            port=port,
            run_config=config,
            node_auth=node_auth and not insecure,
        )
        with sigterm_as_interrupt():
            serve(plan, report)
    except (CredentialError, DeploymentError, ProcessError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        console.print("stopped: the SuperLink and the run were shut down")
        raise typer.Exit(130) from None
