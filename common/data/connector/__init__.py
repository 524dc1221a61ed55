"""Factory data connector: a factory's private table (CSV or Parquet) plus a schema -> `FactoryData`.

A plant engineer exports a table and writes a small JSON schema naming the feature
columns, the target and the task. Before anything trains, `validate_table` checks the
file against the schema and collects *every* problem at once, in words that point at
the cell to fix: the column, the data row (1 = the first row below the header, which a
spreadsheet numbers 2) and, for CSV, the line of the file (the header is line 1; lines
and rows differ only where a quoted cell spans lines). No pandas or pyarrow exception
reaches the user; they are caught and explained.

Modules, in import order: `text` (message wording), `schema` (`DataSchema`), `report`
(`DataProblem` and its kinds, `ValidationReport`), `readers` (CSV and Parquet into a
`Table`), `checks` (columns, values, labels, times, IDs) and `loading` (`validate_table`,
`load_factory_table`).
"""

from __future__ import annotations

from fedmeta.common.data.connector.loading import load_factory_table, validate_table
from fedmeta.common.data.connector.report import ColumnStats, DataProblem, DataValidationError, ValidationReport
from fedmeta.common.data.connector.schema import DataSchema, SchemaError

__all__ = [
    "ColumnStats",
    "DataProblem",
    "DataSchema",
    "DataValidationError",
    "SchemaError",
    "ValidationReport",
    "load_factory_table",
    "validate_table",
]
