"""The server package's commands: ``fedmeta server`` (a Flower SuperLink and one run, TLS and node
authentication on), ``fedmeta certs`` (the federation's CA, server certificate and factory keys) and
``fedmeta status`` (how the runs in a state or run folder stand).

``cli`` is the ``fedmeta-server`` console script, the server image's entry point: the
``server`` command alone. What a command runs is imported when it runs, so ``fedmeta certs``
and ``--help`` do not wait for torch and Flower to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmeta.common.federation.protocol import DEFAULT_CONTROL_PORT, DEFAULT_PORT
from fedmeta.common.runtime.console import elapsed_log, exit_on_errors
from fedmeta.common.runtime.processes import ProcessError, sigterm_as_interrupt
from fedmeta.common.security.credentials import CredentialError
from fedmeta.server.certificates import (
    create_certificate_authority,
    create_factory_keys,
    create_server_certificate,
    load_certificate_authority,
)

__all__ = ["certs", "cli", "server", "status"]


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
        str, typer.Option(help="Address factories reach the Fleet API at: every interface, or 127.0.0.1 to stay "
                          "on this machine.")
    ] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port of the Fleet API, the one factories dial (Flower's default).")
    ] = DEFAULT_PORT,
    control_host: Annotated[
        str, typer.Option(help="Address of the Control and runtime APIs (submit, list, stop runs; the ServerApp's "
                          "own): loopback, for this server's processes only.")
    ] = "127.0.0.1",
    control_port: Annotated[int, typer.Option(help="Port of the Control and runtime APIs.")] = DEFAULT_CONTROL_PORT,
    expose_control_api: Annotated[
        bool, typer.Option("--expose-control-api", help="Allow a --control-host other machines can reach: anyone "
                           "who reaches it can submit, list and stop runs (no authentication).")
    ] = False,
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
    from fedmeta.server.deployment import DeploymentError, build_run_config, plan_server, serve

    console = Console()
    report = elapsed_log(console)

    if expose_control_api:
        console.print(
            f"[bold red]WARNING: --expose-control-api: whoever reaches {control_host}:{control_port} can submit, "
            "list and stop runs; Flower authenticates no one there.[/bold red]"
        )
    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: no TLS and no node authentication. Model updates travel in clear "
            "text and any machine that reaches this port can join as a factory.[/bold red]"
        )
    stopped = "stopped: the SuperLink and the run were shut down"
    with exit_on_errors(console, CredentialError, DeploymentError, ProcessError, stopped=stopped):
        config = build_run_config(run_config, state=state, schema=schema, resume=resume)
        # --insecure drops node authentication, unless --factory-keys asks for it: refused, it needs TLS
        node_auth = node_auth and (not insecure or factory_keys is not None)
        plan = plan_server(
            state=state,
            certs=None if insecure else certs,
            factory_keys=(factory_keys or certs) if node_auth else None,
            host=host,
            port=port,
            run_config=config,
            node_auth=node_auth,
            control_host=control_host,
            control_port=control_port,
            expose_control_api=expose_control_api,
        )
        with sigterm_as_interrupt():
            serve(plan, report)


def certs(
    out: Annotated[Path, typer.Option(help="Folder for the files.")] = Path("certs"),
    host: Annotated[list[str] | None, typer.Option(help="Host name or IP the server is reached at (repeat).")] = None,
    factory: Annotated[list[str] | None, typer.Option(help="Factory to create a key pair for (repeat).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files that exist (otherwise an error).")] = False,
) -> None:
    """Create a CA (or reuse the one in --out), a server certificate and factory key pairs."""
    console = Console()
    with exit_on_errors(console, FileExistsError, ValueError):
        if (out / "ca.crt").exists() and not overwrite:
            authority = load_certificate_authority(out)
            console.print(f"using the existing CA in {out}")
        else:
            authority = create_certificate_authority(out, overwrite=overwrite)
            console.print(f"created {out / 'ca.crt'} and {out / 'ca.key'} (keep ca.key offline)")
        if host:
            console.print(f"created {create_server_certificate(out, authority, host, overwrite=overwrite)}")
        for name in factory or []:
            private, public = create_factory_keys(out, name, overwrite=overwrite)
            console.print(f"created {private} (give to {name} only) and {public} (register on the server)")


def status(
    state: Annotated[
        Path, typer.Option(help="A `fedmeta server --state` folder, a simulation's --run-dir, or one run in them.")
    ] = Path(".fedmeta/server"),
) -> None:
    """A summary of each run there, running or ended: its state and round, the connected factories, the last
    round's metrics and the server's last warnings. TensorBoard shows every round: `tensorboard --logdir STATE`."""
    from fedmeta.server.status import describe_run, find_runs, read_status

    console = Console(highlight=False, soft_wrap=True)  # one line per warning, however long
    with exit_on_errors(console, ValueError, OSError):
        for run in find_runs(state):
            name = str(run.relative_to(state)) if run != state else run.name
            for line in describe_run(name, read_status(run)):
                console.print(line, markup=False)


cli = typer.Typer(help="FedMeta Factory aggregation server.", add_completion=False)
cli.command()(server)
