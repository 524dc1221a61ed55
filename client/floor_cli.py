"""The factory floor's commands: ``fedmeta adapt`` (a model package fitted to the factory's own labelled
rows) and ``fedmeta predict`` (its predictions for a table). Everything runs on the factory's machine;
nothing is sent anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmeta.client.adapt import AdaptationReport, adapt_package, table_schema
from fedmeta.client.predict import PredictionError, predict_table
from fedmeta.common import exit_on_errors
from fedmeta.common.connector import DataSchema, DataValidationError, SchemaError, load_factory_table, validate_table
from fedmeta.common.model_package import ModelPackage, PackageError, load_package, save_package

__all__ = ["REPORT_FILE", "adapt", "predict"]

REPORT_FILE = "adaptation-report.json"


def _print_report(report: AdaptationReport, console: Console) -> None:
    table = Table(title=f"Error on held-out folds of the {report.rows} rows ({report.folds} folds)")
    metrics = list(next(iter(report.scores.values())))
    table.add_column("model")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, values in report.scores.items():
        table.add_row(name, *(f"{values[metric]:.4g}" for metric in metrics))
    console.print(table)
    adapted = "no adaptation" if report.recipe_steps == 0 else (
        f"{report.recipe_steps} steps at {report.recipe_lr_scale:g}x the package's step size")
    console.print(f"recipe chosen on all {report.rows} rows: {adapted}")


def _package(model: Path, console: Console) -> ModelPackage:
    """The package, its version differences printed as warnings."""
    package = load_package(model)
    for note in package.version_notes:
        console.print(f"[yellow]warning:[/yellow] {escape(note)}")
    return package


def adapt(
    model: Annotated[Path, typer.Option(help="The model package folder (model.json and weights).")],
    data: Annotated[Path, typer.Option(help="This factory's labelled table (CSV or Parquet).")],
    out: Annotated[Path, typer.Option(help="New folder for the adapted package and its report.")],
    schema: Annotated[
        Path | None,
        typer.Option(help="This table's schema (delimiter, decimal mark, ID and time columns); its features and "
                     "target must be the package's. Default: the package's columns.", show_default=False),
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(min=2, help="Adapt on the first N labelled rows (default: all); the scaling uses every row.",
                     show_default=False),
    ] = None,
) -> None:
    """Adapt a model package to this factory's labelled rows with the package's recipe."""
    console = Console()
    with exit_on_errors(console, PackageError, SchemaError, DataValidationError, ValueError):
        package = _package(model, console)
        reading = table_schema(package.manifest, None if schema is None else DataSchema.from_json(schema))
        checked = validate_table(data, reading)
        for warning in checked.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        checked.raise_for_problems()
        factory = load_factory_table(data, reading)
        adapted = adapt_package(package, factory.x, factory.y, rows=rows, table=data.name)
        report_text = json.dumps(adapted.report.to_json(), indent=2)
        save_package(out, adapted.weights, adapted.inner_lrs, adapted.manifest, extras={REPORT_FILE: report_text})
    _print_report(adapted.report, console)
    console.print(f"adapted package written to {escape(str(out))}")


def predict(
    model: Annotated[Path, typer.Option(help="The model package folder (adapted or as delivered).")],
    data: Annotated[Path, typer.Option(help="The table to predict (CSV or Parquet); the target may be absent.")],
    out: Annotated[Path, typer.Option(help="New file for the rows and their predictions (.csv or .parquet).")],
    schema: Annotated[
        Path | None,
        typer.Option(help="This table's schema (delimiter, decimal mark, ID and time columns); its features must "
                     "be the package's. Default: the package's columns.", show_default=False),
    ] = None,
) -> None:
    """Predict every row of a table: all its columns come back with the prediction beside them."""
    console = Console()
    with exit_on_errors(console, PackageError, SchemaError, PredictionError, ValueError):
        package = _package(model, console)
        reading = table_schema(package.manifest, None if schema is None else DataSchema.from_json(schema))
        summary = predict_table(package, data, out, reading)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if summary.scaled_with_table:
        console.print("[yellow]note:[/yellow] the package holds no factory's scaling (it was not adapted): the "
                      "inputs were standardised with this table's own rows")
    console.print(f"{summary.rows} rows predicted into {escape(str(out))}")
