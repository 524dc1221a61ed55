"""The client package's commands: ``fedmeta client`` (one factory, a Flower SuperNode serving its
private table to the server) and ``fedmeta validate-data`` (a factory's table checked against its
schema before it trains: its size, per-column statistics and class counts when usable, exit 0;
every problem, one per line, exit 1; an unusable schema file exits 2, like other usage errors).

``cli`` is the ``fedmeta-client`` console script, the factory image's entry point: the
``client`` command alone. What a command runs is imported when it runs, so ``--help`` does not
wait for torch to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmeta.common.federation.protocol import DEFAULT_RUNTIME_PORT, ROLES
from fedmeta.common.runtime.console import elapsed_log, exit_on_errors
from fedmeta.common.runtime.processes import ProcessError, sigterm_as_interrupt

if TYPE_CHECKING:
    from fedmeta.common.data.connector import ValidationReport

__all__ = ["cli", "client", "validate_data"]


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
            help="Flower's isolation: the SuperNode starts its SuperExec, which starts an app process per message "
            "(subprocess), or one warm worker beside it runs every message with torch and the app imported once, "
            "restarted if it dies (process; with --stock-supernode Flower's SuperExec instead).",
        ),
    ] = "subprocess",
    stock_supernode: Annotated[
        bool,
        typer.Option("--stock-supernode", help="Run Flower's SuperNode with its own timings (a 3 s idle poll, a "
                     "killed factory noticed after 60 s) instead of the project's (0.5 s, 20 s), and with "
                     "--isolation process Flower's SuperExec instead of the warm worker. It still runs only the "
                     "installed app."),
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS and no key: for a trusted test network only.")
    ] = False,
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Where the final model of every run is kept, as RUN/round-N (default: STATE/models).",
                     show_default=False),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="This factory's rules for joining rounds (JSON: algorithms, compression, require_dp, "
                     "max_epsilon, require_secure_aggregation, max_rounds); it never leaves the factory.",
                     show_default=False),
    ] = None,
) -> None:
    """Start this factory: check its table, key and CA, then serve the server's runs until stopped."""
    from fedmeta.client.node.deployment import FactoryError, plan_factory, run_factory

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
    with exit_on_errors(console, FactoryError, ProcessError, ValueError, stopped="stopped"):
        plan = plan_factory(
            server=server,
            data=data,
            schema=schema,
            key=key,  # with --insecure a key is refused: node authentication needs TLS
            ca=None if insecure else ca,
            role=role,
            factory=factory,
            state=state,
            runtime_port=runtime_port,
            device=device,
            max_wait_s=max_wait_time,
            isolation=isolation,
            tuned_supernode=not stock_supernode,
            model_dir=model_dir,
            policy=policy,
        )
        report(f"{plan.data.name}: table valid against {plan.schema.name}; log {plan.log}")
        for warning in plan.table_warnings:
            report(f"warning: {warning}")
        with sigterm_as_interrupt():
            run_factory(plan, report)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _summary(report: ValidationReport, console: Console) -> None:
    schema = report.schema
    console.print(
        f"[green]OK[/green] {escape(str(report.path))}: {report.rows} rows, {len(report.columns)} columns; "
        f"{len(schema.features)} features, target {escape(repr(schema.target))} ({schema.task})",
        soft_wrap=True,
    )
    roles = {schema.id_column: "ID", schema.time_column: "time", schema.group_column: "group"}
    table = Table(title="Columns")
    for heading in ("column", "role", "min", "max", "mean", "missing"):
        table.add_column(heading, justify="left" if heading in ("column", "role") else "right")
    for name in schema.columns:
        stats = report.column_stats.get(name)
        role = stats.role if stats else "target" if name == schema.target else roles.get(name, "")
        if stats is None:
            table.add_row(escape(name), role, "-", "-", "-", "-")
        else:
            table.add_row(
                escape(name), role, _number(stats.min), _number(stats.max), _number(stats.mean), str(stats.missing)
            )
    console.print(table)
    if report.class_counts is not None:
        classes = Table(title=f"Classes of {escape(repr(schema.target))}")
        classes.add_column("label id", justify="right")
        classes.add_column("class")
        classes.add_column("rows", justify="right")
        for label_id, (label, count) in enumerate(report.class_counts.items()):
            classes.add_row(str(label_id), escape(label), str(count))
        console.print(classes)
    if report.ignored_columns and not report.warnings:  # "extra_columns": "ignore"; else the warnings say it
        ignored = ", ".join(report.ignored_columns)
        console.print(f"ignored columns (not in the schema): {escape(ignored)}", soft_wrap=True)


def validate_data(
    data: Annotated[Path, typer.Argument(help="The factory's data file: CSV or Parquet.", show_default=False)],
    schema: Annotated[
        Path,
        typer.Option(
            "--schema",
            help="JSON schema naming the feature columns, the target and the task (regression or classification).",
            show_default=False,
        ),
    ],
    shots: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Also check K-shot tasks can be drawn: every class (or, for regression, the table) needs K + 1 rows.",
            show_default=False,
        ),
    ] = None,
    ways: Annotated[
        int | None,
        typer.Option(
            min=2, help="Also check at least this many classes have enough rows (classification).", show_default=False
        ),
    ] = None,
) -> None:
    """Check a factory's data file against its schema; list every problem and exit 1 if there are any."""
    from fedmeta.common.data.connector import DataSchema, SchemaError, validate_table

    console = Console()
    try:
        parsed_schema = DataSchema.from_json(schema)
        report = validate_table(data, parsed_schema, shots=shots, ways=ways)
    except SchemaError as error:
        console.print("[red]schema error[/red]")
        console.print(escape(str(error)), soft_wrap=True)
        raise typer.Exit(2) from error
    except ValueError as error:  # bad arguments, e.g. --ways for a regression table
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from error
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    if not report.ok:
        count = len(report.problems)
        console.print(
            f"[red]{escape(str(report.path))}: {count} problem{'s' if count > 1 else ''}[/red]", soft_wrap=True
        )
        for problem in report.problems:
            console.print(f"- {escape(problem.message)}", soft_wrap=True)
        if any(problem.rows for problem in report.problems):
            console.print(
                "[dim]Row 1 is the first row below the header (a spreadsheet numbers it 2); "
                "lines are lines of the file, the header being line 1.[/dim]",
                soft_wrap=True,
            )
        raise typer.Exit(1)
    _summary(report, console)


cli = typer.Typer(help="FedMeta Factory client: one factory.", add_completion=False)
cli.command()(client)
