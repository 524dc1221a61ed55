"""Validating and loading a factory table: read, run every check, and build `FactoryData` when all pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmeta.common.data.connector.checks import check_classes, check_header, check_id, check_numeric, check_time
from fedmeta.common.data.connector.readers import read_table
from fedmeta.common.data.connector.report import DataProblem, ValidationReport
from fedmeta.common.data.connector.schema import DataSchema
from fedmeta.common.data.connector.text import plural
from fedmeta.common.validation import check_positive_int

if TYPE_CHECKING:  # `validate_table` (`fedmeta client` checking its table before it starts) never waits for torch
    import torch

    from fedmeta.common.meta.tasks import FactoryData


@dataclass
class _Parsed:
    x: np.ndarray
    y: np.ndarray
    order: np.ndarray | None


def _inspect(
    path: Path, schema: DataSchema, min_rows: int, shots: int | None, ways: int | None
) -> tuple[ValidationReport, _Parsed | None]:
    if not isinstance(schema, DataSchema):
        raise TypeError(f"schema must be a DataSchema, got {type(schema).__name__}")
    check_positive_int("min_rows", min_rows)
    if shots is not None:
        check_positive_int("shots", shots)
    if ways is not None:
        if schema.task != "classification":
            raise ValueError("ways only applies to classification tables")
        if isinstance(ways, bool) or not isinstance(ways, int) or ways < 2:
            raise ValueError(f"ways must be an integer of at least 2, got {ways!r}")
    report = ValidationReport(Path(path), schema)
    problems = report.problems
    table = read_table(report.path, schema, problems)
    if table is None:
        return report, None
    report.columns = tuple(table.names)
    found = check_header(table, schema, report)
    if table.frame is None:
        return report, None
    report.rows = len(table.frame)
    if report.rows == 0:
        if not table.malformed:  # else every data line was malformed, which is reported already
            problems.append(DataProblem("empty", None, "the table has a header but no data rows"))
        return report, None
    features = []
    for name in schema.features:
        if name in found:
            values, stats = check_numeric(table, found[name], name, "feature", schema.decimal, problems)
            report.column_stats[name] = stats
            features.append(values)
    y = None
    if schema.target in found:
        if schema.task == "regression":
            y, stats = check_numeric(table, found[schema.target], schema.target, "target", schema.decimal, problems)
            report.column_stats[schema.target] = stats
        else:
            y = check_classes(table, found[schema.target], schema, shots, ways, report)
    for key, role in (("id_column", "ID"), ("group_column", "group")):
        name = getattr(schema, key)
        if name is not None and name in found:
            check_id(table, found[name], name, role, problems)
    order = None
    if schema.time_column is not None and schema.time_column in found:
        key = check_time(table, found[schema.time_column], schema.time_column, problems)
        if key is not None:
            order = key.sort_values(kind="stable").index.to_numpy()
    needed = min_rows
    if shots is not None and schema.task == "regression":
        needed = max(needed, shots + 1)
    if report.rows < needed:
        why = f" ({shots} support + 1 query for {shots}-shot tasks)" if needed > min_rows else ""
        problems.append(
            DataProblem(
                "too_few_rows",
                None,
                f"the table has {plural(report.rows, 'data row')}; at least {needed} are needed{why}",
            )
        )
    if problems:
        return report, None
    x = np.stack(features, axis=1)
    return report, _Parsed(x, y, order)


def validate_table(
    path: str | Path,
    schema: DataSchema,
    *,
    min_rows: int = 1,
    shots: int | None = None,
    ways: int | None = None,
) -> ValidationReport:
    """Check a CSV or Parquet table against ``schema`` and return a report with every problem found.

    ``shots`` asks that K-shot tasks can be drawn: for classification every class present
    needs ``shots + 1`` rows (support plus one query row), for regression the table does.
    ``ways`` (classification) asks that at least that many classes have enough rows. Bad
    arguments (not bad data) raise ``ValueError``.
    """
    return _inspect(Path(path), schema, min_rows, shots, ways)[0]


def load_factory_table(
    path: str | Path,
    schema: DataSchema,
    *,
    name: str | None = None,
    shots: int | None = None,
    ways: int | None = None,
    min_rows: int = 1,
    dtype: torch.dtype | None = None,
) -> FactoryData:
    """Validate then load a factory's table; `DataValidationError` lists every problem if it is unusable.

    ``x`` is ``[rows, features]`` in the schema's feature order and ``y`` a regression target, both
    float32 unless ``dtype`` says otherwise (raw readings and targets to be scaled by the factory's own
    statistics are read in float64: near 1e6 float32 cannot tell values 0.06 apart), or int64 class
    ids in ``schema.classes`` order (sorted labels without it).
    Rows are ordered by the time column when the schema names one (ties keep file order).
    ``name`` defaults to the file name without its suffix.
    """
    import torch

    from fedmeta.common.meta.tasks import FactoryData

    dtype = torch.float32 if dtype is None else dtype
    path = Path(path)
    report, parsed = _inspect(path, schema, min_rows, shots, ways)
    report.raise_for_problems()
    assert parsed is not None  # no problems means the table was parsed
    x, y = parsed.x, parsed.y
    if parsed.order is not None:
        x, y = x[parsed.order], y[parsed.order]
    return FactoryData(
        name or path.stem,
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(dtype),
        torch.from_numpy(np.array(y, dtype=np.float64 if schema.task == "regression" else np.int64)).to(
            dtype if schema.task == "regression" else torch.int64),
    )
