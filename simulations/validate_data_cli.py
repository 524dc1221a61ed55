"""``fedmeta validate-data``: check a factory's data file against its schema before it trains.

Prints the table's size, per-column statistics and class counts when the table is
usable (exit 0), or every problem found, one per line (exit 1). A schema file that
cannot be used exits 2, like other usage errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmeta.common.connector import DataSchema, SchemaError, ValidationReport, validate_table

__all__ = ["validate_data"]


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
    if report.ignored_columns:
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
