"""The factory floor's commands: ``fedmeta adapt`` (a model package fitted to the factory's own labelled
rows), ``fedmeta predict`` (its predictions for a table), ``fedmeta update`` (new labelled rows update
it, versions kept, drift reported), ``fedmeta optimize`` (process settings a quality model recommends)
and ``fedmeta export`` (ONNX for the factory's own systems). Everything runs on the factory's machine;
nothing is sent anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import click
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmeta.client.floor.adapt import AdaptationReport, adapt_package, require_factory_scaling, table_schema
from fedmeta.client.floor.export import FORMATS, export_onnx
from fedmeta.client.floor.optimize import Bounds, recommend_settings
from fedmeta.client.floor.predict import predict_table
from fedmeta.client.floor.table_blocks import TableError, read_features
from fedmeta.client.floor.update import ModelStore
from fedmeta.client.floor.windows import read_windows
from fedmeta.common import exit_on_errors
from fedmeta.common.data.connector import (
    DataSchema,
    DataValidationError,
    SchemaError,
    load_factory_table,
    validate_table,
)
from fedmeta.common.data.connector.windows import Windows, read_window_table
from fedmeta.common.package.model_package import Manifest, ModelPackage, PackageError, load_package, write_package

__all__ = ["REPORT_FILE", "adapt", "export", "optimize", "predict", "update"]

REPORT_FILE = "adaptation-report.json"

# The options several commands share, declared once.
PackageFolder = Annotated[Path, typer.Option("--model", help="The model package folder (model.json and weights).")]
TableSchema = Annotated[
    Path | None,
    typer.Option("--schema", help="This table's schema (delimiter, decimal mark, ID and time columns); its features "
                 "and target must be the package's. Default: the package's columns.", show_default=False),
]


def _print_report(report: AdaptationReport, console: Console) -> None:
    table = Table(title=f"Error on held-out folds of the {report.rows} {report.examples} ({report.folds} folds)")
    metrics = list(next(iter(report.scores.values())))
    table.add_column("model")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, values in report.scores.items():
        mark = " (kept)" if name == report.chosen else ""
        table.add_row(f"{name}{mark}", *(f"{values[metric]:.4g}" for metric in metrics))
    console.print(table)
    if report.chosen != report.best:
        console.print(f"[yellow]warning:[/yellow] kept {report.chosen!r} as --keep asks, though {report.best!r} has "
                      "the least error on the held-out folds")
    else:
        console.print(f"kept {report.chosen!r}: the least error on the held-out folds")
    if report.chosen == "adapted":
        adapted = "no adaptation" if report.recipe_steps == 0 else (
            f"{report.recipe_steps} steps at {report.recipe_lr_scale:g}x the package's step size")
        console.print(f"recipe chosen on all {report.rows} {report.examples}: {adapted}")


def _package(model: Path, console: Console) -> ModelPackage:
    """The package at ``model``, its version differences printed as warnings."""
    return _with_version_warnings(load_package(model), console)


def _with_version_warnings(package: ModelPackage, console: Console) -> ModelPackage:
    for note in package.version_notes:
        console.print(f"[yellow]warning:[/yellow] {escape(note)}")
    return package


def _reading(package: ModelPackage, schema: Path | None) -> DataSchema:
    """How to read a table for ``package``: its columns, or the factory's schema file checked against them."""
    return table_schema(package.manifest, None if schema is None else DataSchema.from_json(schema))


def _labelled_rows(data: Path, schema: DataSchema, manifest: Manifest,
                   console: Console) -> tuple[torch.Tensor, torch.Tensor, Windows | None]:
    """The table's rows ``x``, ``y`` read as ``schema`` says (raw float64: scaled in float64, `common.data.scaling`)
    and, for a window model, their windows; its warnings printed, its problems raised."""
    checked = validate_table(data, schema)
    for warning in checked.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    checked.raise_for_problems()
    if manifest.window_length is None:
        rows = load_factory_table(data, schema, dtype=torch.float64)
        return rows.x, rows.y, None
    table = read_window_table(data, schema, manifest.window_length)
    return table.x, table.y, table.windows


def adapt(
    model: PackageFolder,
    data: Annotated[Path, typer.Option(help="This factory's labelled table (CSV or Parquet).")],
    out: Annotated[Path, typer.Option(help="New folder for the adapted package and its report.")],
    schema: TableSchema = None,
    rows: Annotated[
        int | None,
        typer.Option(min=2, help="Adapt on the first N labelled rows (default: all); the scaling uses every row. "
                     "A window model: the first N windows to end, by the time of their last row.",
                     show_default=False),
    ] = None,
    failure_rate: Annotated[
        float | None,
        typer.Option(click_type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), show_default=False,
                     help="Two classes: this factory's failure rate; predictions are then made at it, flagged at "
                     "the threshold of best expected F1 on the table's rows."),
    ] = None,
    failure_class: Annotated[
        str | None, typer.Option(help="The failure class (default: the second).", show_default=False)
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(help="Keep this candidate instead of the one of least held-out error (with a warning): "
                     "adapted, unadapted, closed-form head, least squares (regression), logistic regression "
                     "(classification), rows alone, trees alone (scored, kept only when named here); a tree "
                     "package's: adapted, unadapted, least squares or logistic regression, trees alone.",
                     show_default=False),
    ] = None,
) -> None:
    """Adapt a model package to this factory's labelled rows: every candidate model (the package adapted with
    its recipe, unadapted, a closed-form head on its features, least squares or logistic regression on the
    rows, the network trained on the rows alone; gradient-boosted trees on the rows alone, reported) is scored on
    held-out folds of the rows, and the best is written."""
    console = Console()
    with exit_on_errors(console, PackageError, SchemaError, DataValidationError, ValueError):
        package = _package(model, console)
        require_factory_scaling(package.manifest)
        reading = _reading(package, schema)
        x, y, windows = _labelled_rows(data, reading, package.manifest, console)
        adapted = adapt_package(package, x, y, rows=rows, table=data.name, failure_rate=failure_rate,
                                failure_class=failure_class, windows=windows, keep=keep)
        report_text = json.dumps(adapted.report.to_json(), indent=2)
        write_package(out, adapted.package(), extras={REPORT_FILE: report_text})
    _print_report(adapted.report, console)
    decision = adapted.manifest.decision
    if decision is not None:
        console.print(f"{decision['failure_class']!r} is flagged at probability {decision['threshold']:.4g} or more "
                      f"(failure rate {decision['failure_rate']:g})")
    console.print(f"adapted package written to {escape(str(out))}")


def predict(
    model: PackageFolder,
    data: Annotated[Path, typer.Option(help="The table to predict (CSV or Parquet); the target may be absent.")],
    out: Annotated[Path, typer.Option(help="New file for the rows and their predictions (.csv or .parquet).")],
    schema: TableSchema = None,
) -> None:
    """Predict every row of a table: all its columns come back with the prediction beside them."""
    console = Console()
    with exit_on_errors(console, PackageError, SchemaError, TableError, ValueError):
        package = _package(model, console)
        reading = _reading(package, schema)
        summary = predict_table(package, data, out, reading)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if summary.scaled_with_table:
        console.print("[yellow]note:[/yellow] the package holds no factory's scaling (it was not adapted): the "
                      "inputs were standardised with this table's own rows")
    console.print(f"{summary.rows} rows predicted into {escape(str(out))}")
    if summary.without_window:
        console.print(f"{summary.without_window} rows have fewer rows before them in their group than the model's "
                      "window spans: their prediction cells are empty")


def update(
    store: Annotated[Path, typer.Option(help="The model store: a folder of versions (see README).")],
    data: Annotated[
        Path | None, typer.Option(help="New labelled rows from production (CSV or Parquet).", show_default=False)
    ] = None,
    start_from: Annotated[
        Path | None,
        typer.Option("--from", help="Start a new store from this adapted package (version 1).", show_default=False),
    ] = None,
    schema: TableSchema = None,
    rollback: Annotated[
        int | None, typer.Option(min=1, help="Use this earlier version again (none is deleted).", show_default=False)
    ] = None,
) -> None:
    """Update the model with new labelled rows (a new version each time), report drift, or roll back."""
    console = Console()
    if data is None and start_from is None and rollback is None:
        console.print("[red]error:[/red] give --data (update), --from (start a store) or --rollback VERSION")
        raise typer.Exit(2)
    models = ModelStore(store)
    with exit_on_errors(console, PackageError, SchemaError, DataValidationError, ValueError):
        if start_from is not None:
            models.create(start_from)
            console.print(f"model store {escape(str(store))} started from {escape(str(start_from))} as version 1")
        if rollback is not None:
            models.rollback(rollback)
            console.print(f"version {rollback} is in use again; versions {models.versions()} are kept")
        if data is None:
            return
        version, package = models.current_package()
        _with_version_warnings(package, console)
        x, y, windows = _labelled_rows(data, _reading(package, schema), package.manifest, console)
        result = models.update(version, package, x, y, windows)
    seen = result.examples
    console.print(f"version {result.version} written from {result.rows} new {seen} (the version in use erred "
                  f"{result.mean_error_before:.4g} on them on average)")
    drift = result.drift
    if drift.detected:
        console.print(f"[bold red]drift:[/bold red] the prediction error rose (detected at {seen[:-1]} "
                      f"{drift.detected_at_row} of the {drift.rows_seen} {seen} seen): re-adapt on recent rows "
                      "with `fedmeta adapt`")
    else:
        console.print(f"no drift in the {drift.rows_seen} {seen} seen since the store started")


def export(
    model: PackageFolder,
    out: Annotated[Path, typer.Option(help="New file for the exported model.")],
    format: Annotated[str, typer.Option(click_type=click.Choice(list(FORMATS)), help="Export format.")] = "onnx",
    check: Annotated[
        Path | None,
        typer.Option(help="A table whose rows (a window model: the windows ending at them) must give the same "
                     "outputs in onnxruntime as in torch (default: 64 random rows).", show_default=False),
    ] = None,
) -> None:
    """Export a model package (scaling, model, softmax) for the factory's own systems."""
    console = Console()
    with exit_on_errors(console, PackageError, TableError, ValueError):
        package = _package(model, console)
        rows = None
        if check is not None:
            reading, length = table_schema(package.manifest), package.manifest.window_length
            features = read_features(check, reading) if length is None else read_windows(check, reading, length)
            rows = torch.from_numpy(features)
        result = export_onnx(package, out, rows)
    if not result.scaled:
        console.print("[yellow]note:[/yellow] the package holds no factory's scaling (it was not adapted): the "
                      "exported model expects standardised inputs")
    console.print(f"{format} model written to {escape(str(out))}; onnxruntime matches torch within "
                  f"{result.max_difference:.2g} on {result.check_rows} rows")


def optimize(
    model: PackageFolder,
    bounds: Annotated[Path, typer.Option(help="JSON: controllable features and ranges, fixed values, goal.")],
    starts: Annotated[int, typer.Option(min=1, help="Optimiser starts spread over the bounds.")] = 20,
    top: Annotated[int, typer.Option(min=1, help="How many distinct settings to list.")] = 5,
    out: Annotated[
        Path | None, typer.Option(help="Also write the settings as JSON to this new file.", show_default=False)
    ] = None,
) -> None:
    """Recommend process settings that maximise the predicted quality (or minimise a failure's probability)."""
    console = Console()
    with exit_on_errors(console, PackageError, ValueError):
        package = _package(model, console)
        limits = Bounds.from_json(bounds, package)
        if out is not None and out.exists():
            raise ValueError(f"{out} already exists; choose another --out")
        found = recommend_settings(package, limits, starts=starts, top=top)
    outcome = f"probability of {limits.target_class!r}" if limits.target_class else \
        f"predicted {package.manifest.schema.target}"
    held = ", ".join(f"{name}={value:g}" for name, value in limits.fixed.items()) or "nothing"
    table = Table(title=f"Settings that {limits.goal} the {outcome} ({held} held)")
    for name in limits.controllable:
        table.add_column(escape(name), justify="right")
    table.add_column(escape(outcome), justify="right")
    for recommendation in found:
        table.add_row(*(f"{recommendation.settings[n]:.6g}" for n in limits.controllable),
                      f"{recommendation.predicted:.6g}")
    console.print(table)
    if out is not None:
        out.write_text(json.dumps([{"settings": r.settings, "predicted": r.predicted} for r in found], indent=2))
        console.print(f"written to {escape(str(out))}")
