"""What validation reports: every `DataProblem` found, the error that carries them, and column summaries.

Problem kinds (`DataProblem.kind`): ``missing_file``, ``unreadable``, ``malformed``,
``wrong_delimiter``, ``empty``, ``missing_column``, ``extra_column``, ``unnamed_column``,
``duplicate_column``, ``non_numeric``, ``missing_values``, ``infinite_values``,
``out_of_range``, ``missing_label``, ``unknown_label``, ``too_few_rows``, ``rare_class``,
``too_few_classes``, ``bad_time``, ``duplicate_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmeta.common.data.connector.schema import DataSchema
from fedmeta.common.data.connector.text import plural


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a table. ``rows`` holds the first offending data rows (1-based), if any."""

    kind: str
    column: str | None
    message: str
    rows: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.message


class DataValidationError(ValueError):
    """A table that cannot be used; ``problems`` holds every `DataProblem`, each on its own line in ``str``."""

    def __init__(self, problems: Sequence[DataProblem], source: str | Path | None = None) -> None:
        self.problems = list(problems)
        self.source = None if source is None else str(source)
        where = f"factory data {self.source!r}" if self.source else "factory data"
        header = f"{where} has {plural(len(self.problems), 'problem')}:"
        super().__init__("\n".join([header, *(f"- {p.message}" for p in self.problems)]))


@dataclass(frozen=True)
class ColumnStats:
    """A numeric column's summary over its finite values (``None`` when it has none)."""

    name: str
    role: str
    count: int
    missing: int
    infinite: int
    non_numeric: int
    min: float | None
    max: float | None
    mean: float | None


@dataclass
class ValidationReport:
    """What `validate_table` found: the table's size, per-column stats, class counts and all problems."""

    path: Path
    schema: DataSchema
    rows: int = 0
    columns: tuple[str, ...] = ()
    column_stats: dict[str, ColumnStats] = field(default_factory=dict)
    class_counts: dict[str, int] | None = None
    classes: tuple[str, ...] | None = None
    ignored_columns: tuple[str, ...] = ()
    problems: list[DataProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what is read anyway, such as columns not named

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise DataValidationError(self.problems, self.path)
