"""Factory data connector: a factory's private table (CSV or Parquet) plus a schema -> `FactoryData`.

A plant engineer exports a table and writes a small JSON schema naming the feature
columns, the target and the task. Before anything trains, `validate_table` checks the
file against the schema and collects *every* problem at once, in words that point at
the cell to fix: the column, the data row (1 = the first row below the header, which a
spreadsheet numbers 2) and, for CSV, the line of the file (the header is line 1; lines
and rows differ only where a quoted cell spans lines). No pandas or pyarrow exception
reaches the user; they are caught and explained.

CSV is read twice: once with the standard ``csv`` module, which checks the structure
(field counts per line, quoting, encoding) and gives exact line numbers for every bad
line, then with ``pd.read_csv(dtype=str)`` so that values stay text until they are
converted column by column with ``pd.to_numeric(errors="coerce")``; a cell that fails
conversion is reported with its row and its text rather than silently becoming NaN.
Empty cells and the usual NaN spellings count as missing values, not as non-numeric.

Problem kinds (`DataProblem.kind`): ``missing_file``, ``unreadable``, ``malformed``,
``wrong_delimiter``, ``empty``, ``missing_column``, ``extra_column``, ``unnamed_column``,
``duplicate_column``, ``non_numeric``, ``missing_values``, ``infinite_values``,
``out_of_range``, ``missing_label``, ``unknown_label``, ``too_few_rows``, ``rare_class``,
``too_few_classes``, ``bad_time``, ``duplicate_id``.
"""

from __future__ import annotations

import csv
import difflib
import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedmeta.common.tasks import FactoryData
from fedmeta.common.validation import check_positive_int

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

TASKS = ("regression", "classification")
EXTRA_COLUMN_POLICIES = ("error", "ignore")
DECIMAL_MARKS = (".", ",")
PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"
_REQUIRED_KEYS = ("features", "target", "task")
# Offending rows (or lines, labels) listed per problem; the rest are counted.
_MAX_LISTED = 5
_MAX_LISTED_COLUMNS = 20
# Cell texts (compared in lower case) that mean "no value" in numeric columns. Labels are
# not checked against these ("none" is a plausible fault class); only empty labels are missing.
_NA_TOKENS = frozenset({"", "nan", "-nan", "na", "n/a", "#n/a", "#nv", "null", "none", "<na>"})
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_OTHER_DELIMITERS = (";", ",", "\t", "|")


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def _listing(items: Sequence[str], limit: int = _MAX_LISTED_COLUMNS) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _suggest(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The candidate ``name`` was most likely meant as: same name in another case, else the closest."""
    for candidate in candidates:
        if candidate.lower() == name.lower():
            return candidate
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[close[0]] if close else None


# --------------------------------------------------------------------------- schema


class SchemaError(ValueError):
    """A schema that cannot be used; ``problems`` lists every issue found, each on its own line in ``str``."""

    def __init__(self, problems: Sequence[str], source: str = "schema") -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            message = f"{source} has {len(self.problems)} problems:\n" + "\n".join(f"- {p}" for p in self.problems)
        super().__init__(message)


def _column_name(key: str, value: object, problems: list[str], *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        kind = "a column name or null" if optional else "a column name"
        problems.append(f"{key!r} must be {kind} (a non-empty string), got {value!r}")
        return None
    return value.strip()


@dataclass(frozen=True)
class DataSchema:
    """What a factory's table holds: which columns are features, which is the target, and how to read it.

    ``classes`` fixes the label order for classification (label ``i`` is ``classes[i]``),
    so every factory of a federation maps labels identically even when one factory has
    not seen every class; without it the labels of each table are sorted (numerically
    when they are all numbers), which only agrees across factories that share all labels.
    Columns not named here are a problem with ``extra_columns="error"`` and skipped with
    ``"ignore"``. The ID, time and group columns are checked (present, no empty cells,
    unique IDs, readable times) and rows are ordered by time when one is named.
    """

    features: tuple[str, ...]
    target: str
    task: str
    id_column: str | None = None
    time_column: str | None = None
    group_column: str | None = None
    delimiter: str = ","
    decimal: str = "."
    extra_columns: str = "error"
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        features: tuple[str, ...] = ()
        if isinstance(self.features, str) or not isinstance(self.features, Sequence):
            problems.append(f"'features' must be a list of column names, got {self.features!r}")
        elif not self.features:
            problems.append("'features' is empty; name at least one feature column")
        else:
            names = [_column_name("features", f, problems) for f in self.features]
            features = tuple(n for n in names if n is not None)
            duplicates = sorted(n for n, count in Counter(features).items() if count > 1)
            if duplicates:
                problems.append(f"'features' lists {_listing([repr(d) for d in duplicates])} more than once")
        target = _column_name("target", self.target, problems)
        if target is not None and target in features:
            problems.append(f"the target {target!r} is also listed in 'features'; a model must not see its target")
        if self.task not in TASKS:
            problems.append(f"'task' must be one of {', '.join(map(repr, TASKS))}, got {self.task!r}")
        roles = {}
        for key in ("id_column", "time_column", "group_column"):
            roles[key] = _column_name(key, getattr(self, key), problems, optional=True)
            if roles[key] is not None and roles[key] == target:
                problems.append(f"{key!r} {roles[key]!r} is also the target")
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1 or self.delimiter in '\r\n"':
            problems.append(f"'delimiter' must be one character such as ',' ';' or '\\t', got {self.delimiter!r}")
        if self.decimal not in DECIMAL_MARKS:
            problems.append(f"'decimal' must be '.' or ',', got {self.decimal!r}")
        elif self.decimal == self.delimiter:
            problems.append(
                f"'decimal' and 'delimiter' are both {self.decimal!r}; with a decimal comma use "
                "'delimiter': ';' (as European spreadsheet exports do)"
            )
        if self.extra_columns not in EXTRA_COLUMN_POLICIES:
            problems.append(f"'extra_columns' must be 'error' or 'ignore', got {self.extra_columns!r}")
        classes = self._check_classes(problems)
        if problems:
            raise SchemaError(problems)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "target", target)
        for key, value in roles.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "classes", classes)

    def _check_classes(self, problems: list[str]) -> tuple[str, ...] | None:
        if self.classes is None:
            return None
        if self.task != "classification":
            problems.append("'classes' only applies to task 'classification'")
            return None
        if isinstance(self.classes, str) or not isinstance(self.classes, Sequence):
            problems.append(f"'classes' must be a list of labels, got {self.classes!r}")
            return None
        bad = [c for c in self.classes if isinstance(c, bool) or not isinstance(c, str | int)]
        if bad:
            shown = _listing([repr(b) for b in bad])
            problems.append(f"'classes' must hold labels as strings or integers, got {shown}")
            return None
        classes = tuple(str(c).strip() for c in self.classes)
        if len(classes) < 2:
            problems.append(f"'classes' needs at least 2 labels, got {list(classes)}")
        if "" in classes:
            problems.append("'classes' holds an empty label")
        duplicates = sorted(c for c, count in Counter(classes).items() if count > 1)
        if duplicates:
            problems.append(f"'classes' lists {_listing([repr(d) for d in duplicates])} more than once")
        return classes

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the schema names, without repeats: features, target, ID, time, group."""
        named = (*self.features, self.target, self.id_column, self.time_column, self.group_column)
        return tuple(dict.fromkeys(c for c in named if c is not None))

    @classmethod
    def from_mapping(cls, data: object, source: str = "schema") -> DataSchema:
        """A schema from a JSON-like mapping; `SchemaError` lists unknown and missing keys and bad values."""
        if not isinstance(data, Mapping):
            got = type(data).__name__
            raise SchemaError([f"must be a JSON object with keys such as 'features', got {got}"], source)
        known = [f.name for f in fields(cls)]
        problems = []
        for key in data:
            if key not in known:
                hint = _suggest(str(key), known)
                problems.append(
                    f"unknown key {key!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + f"; valid keys: {', '.join(known)}"
                )
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            problems.append(f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        else:
            try:
                schema = cls(**{k: v for k, v in data.items() if k in known})
            except SchemaError as error:
                problems.extend(error.problems)
        if problems:
            raise SchemaError(problems, source)
        return schema

    @classmethod
    def from_json(cls, path: str | Path) -> DataSchema:
        """Read a schema file; a missing file or invalid JSON is a `SchemaError` naming the file."""
        path = Path(path)
        source = f"schema {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise SchemaError(["file not found"], source) from None
        except IsADirectoryError:
            raise SchemaError(["is a folder, not a JSON file"], source) from None
        except UnicodeDecodeError:
            raise SchemaError(["is not UTF-8 text"], source) from None
        except OSError as error:
            raise SchemaError([f"cannot be read: {error.strerror}"], source) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"line {error.lineno}, column {error.colno}"
            raise SchemaError([f"is not valid JSON: {error.msg} ({where})"], source) from None
        return cls.from_mapping(data, source)


# --------------------------------------------------------------------------- reports


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
        header = f"{where} has {_plural(len(self.problems), 'problem')}:"
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

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise DataValidationError(self.problems, self.path)


# --------------------------------------------------------------------------- reading


@dataclass
class _Table:
    """A read table: header names in file order, and (unless the structure is broken) the cells.

    ``frame`` has positional column labels ``0..len(names)-1`` (header names may repeat or
    be empty) and one row per data row, blank lines dropped; ``data_rows`` and ``lines``
    give each row's 1-based data row number and, for CSV, its line in the file.
    """

    names: list[str]
    frame: pd.DataFrame | None = None
    data_rows: np.ndarray | None = None
    lines: np.ndarray | None = None
    malformed: int = 0  # CSV lines left out for a wrong field count (already reported)
    stripped: bool = False  # cells are already text without surrounding spaces (CSV)

    def where(self, index: int) -> str:
        row = int(self.data_rows[index])
        return f"row {row}" if self.lines is None else f"row {row} (line {int(self.lines[index])})"

    def rows_text(self, mask: np.ndarray, values: pd.Series | None = None) -> tuple[str, tuple[int, ...]]:
        """``"row 3 (line 4) 'abc', row 7 (line 8) 'x'"`` for the first offending rows, and their numbers."""
        hits = np.flatnonzero(mask)
        shown = hits[:_MAX_LISTED]
        parts = [self.where(i) + ("" if values is None else f" {values.iloc[i]!r}") for i in shown]
        text = ", ".join(parts)
        if len(hits) > len(shown):
            text += f" and {len(hits) - len(shown)} more"
        return text, tuple(int(self.data_rows[i]) for i in shown)


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == _PARQUET_MAGIC
    except OSError:
        return False


def _encoding_problem(path: Path) -> DataProblem:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
        detail = ""
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        detail = f" (byte 0x{raw[error.start]:02x} on line {line})"
    return DataProblem(
        "unreadable",
        None,
        f"the file is not UTF-8 text{detail}; in Excel use 'Save as' > 'CSV UTF-8', or convert the file to UTF-8",
    )


def _pandas_csv(path: Path, schema: DataSchema, width: int) -> pd.DataFrame:
    """Every cell as stripped-later text; columns are positions, so repeated or empty header names are harmless."""
    with warnings.catch_warnings():
        # Pandas warns when the first data line is too long (it truncates that line instead of skipping it);
        # the caller's row-count check notices, and the line has been reported already.
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        return pd.read_csv(
            path,
            sep=schema.delimiter,
            decimal=schema.decimal,
            dtype=str,
            header=0,
            names=list(range(width)),
            index_col=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
            on_bad_lines="skip",  # lines with too many fields: reported already, the rest is still checked
        )


def _read_csv(path: Path, schema: DataSchema, problems: list[DataProblem]) -> _Table | None:
    names: list[str] | None = None
    record_lines: list[int] = []  # first line of each record (a quoted field may span lines)
    widths: list[int] = []
    bad: list[bool] = []  # too many fields, or too few and not blank
    end = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=schema.delimiter, strict=True)
            for record in reader:
                start, end = end + 1, reader.line_num
                if names is None:
                    names = [name.strip() for name in record]
                    continue
                width = len(record)
                record_lines.append(start)
                widths.append(width)
                bad.append(width != len(names) and width > 0 and (width > len(names) or any(c.strip() for c in record)))
    except UnicodeDecodeError:
        problems.append(_encoding_problem(path))
        return None
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            message = (
                f'a quote (") opened on line {end + 1} is never closed; a quoted field must end with a quote, '
                'and quotes inside it must be doubled ("")'
            )
        else:
            message = (
                f"line {end + 1} is malformed ({error}); a field that holds the delimiter {schema.delimiter!r} or "
                'a quote must be enclosed in quotes, with quotes inside it doubled ("")'
            )
        problems.append(DataProblem("malformed", None, message))
        return None
    except OSError as error:
        problems.append(DataProblem("unreadable", None, f"cannot read the file: {error.strerror or error}"))
        return None
    if names is None or names == [] or names == [""]:
        problems.append(DataProblem("empty", None, "the file is empty: it has no header line naming the columns"))
        return None
    if len(names) == 1 and names[0].lower().startswith("sep="):
        problems.append(
            DataProblem(
                "malformed",
                None,
                f"line 1 is {names[0]!r}, an Excel hint naming the delimiter, not the header; delete that line so "
                "that the column names come first",
            )
        )
        return None
    if len(names) == 1 and len(schema.columns) > 1:
        used = [d for d in _OTHER_DELIMITERS if d != schema.delimiter and d in names[0]]
        if used:
            shown = "\\t" if used[0] == "\t" else used[0]
            problems.append(
                DataProblem(
                    "wrong_delimiter",
                    None,
                    f"the header was read as one column {names[0]!r}: the file seems to separate columns with "
                    f'{used[0]!r}, not {schema.delimiter!r}; set "delimiter": "{shown}" in the schema',
                )
            )
            return None
    table = _Table(names)
    lines, width, is_bad = np.asarray(record_lines, dtype=np.int64), np.asarray(widths), np.asarray(bad, dtype=bool)
    bad_records = np.flatnonzero(is_bad)
    table.malformed = len(bad_records)
    if table.malformed:
        hint = f"check that the delimiter is {schema.delimiter!r} and that text holding it is quoted"
        if schema.delimiter == "," and schema.decimal == "." and (width[bad_records] > len(names)).any():
            hint += '; numbers with a decimal comma (1,5) need "delimiter": ";" and "decimal": ","'
        for i, record in enumerate(bad_records[:_MAX_LISTED]):
            message = (
                f"line {lines[record]} (row {record + 1}) has {width[record]} fields, expected {len(names)} "
                "like the header"
            )
            if i == 0:
                message += f" ({hint})"
            if i == _MAX_LISTED - 1 and table.malformed > _MAX_LISTED:
                message += f"; {table.malformed - _MAX_LISTED} more lines have the wrong number of fields"
            problems.append(DataProblem("malformed", None, message, (int(record) + 1,)))
    try:
        frame = _pandas_csv(path, schema, len(names))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as error:
        # The csv pass accepted the structure, so this is a parser disagreement; say what pandas said.
        problems.append(DataProblem("malformed", None, f"the file could not be parsed as CSV: {error}"))
        return None
    parsed = width <= len(names)  # the records pandas kept
    if len(frame) != parsed.sum():  # pandas split the file differently: keep what is certain
        if table.malformed:
            return table
        problems.append(DataProblem("malformed", None, "the file could not be parsed as CSV consistently"))
        return None
    frame = frame.apply(lambda column: column.str.strip())
    keep = ~(frame == "").all(axis=1).to_numpy() & ~is_bad[parsed]  # drop blank and malformed lines
    table.frame = frame[keep].reset_index(drop=True)
    table.stripped = True
    table.data_rows = (np.arange(len(lines)) + 1)[parsed][keep]
    table.lines = lines[parsed][keep]
    return table


def _read_parquet(path: Path, problems: list[DataProblem]) -> _Table | None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        problems.append(
            DataProblem("unreadable", None, "reading Parquet files needs the pyarrow package: pip install pyarrow")
        )
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises many types (ArrowInvalid, OSError, ...); all mean "not readable"
        problems.append(DataProblem("unreadable", None, f"the file is not a readable Parquet file: {error}"))
        return None
    names = [str(c).strip() for c in frame.columns]
    if not names:
        problems.append(DataProblem("empty", None, "the Parquet file has no columns"))
        return None
    frame = frame.reset_index(drop=True)
    frame.columns = list(range(len(names)))
    return _Table(names, frame, np.arange(1, len(frame) + 1), None)


def _read(path: Path, schema: DataSchema, problems: list[DataProblem]) -> _Table | None:
    if not path.exists():
        try:
            nearby = sorted(p.name for p in path.parent.iterdir() if p.is_file())
        except OSError:  # no such folder, or not allowed to list it
            nearby = []
        hint = _suggest(path.name, nearby, cutoff=0.8)  # file names share suffixes: ask for a closer match
        problems.append(
            DataProblem(
                "missing_file",
                None,
                f"the data file {str(path)!r} does not exist" + (f" (did you mean {hint!r}?)" if hint else ""),
            )
        )
        return None
    if path.is_dir():
        problems.append(DataProblem("missing_file", None, f"{str(path)!r} is a folder, not a data file"))
        return None
    return _read_parquet(path, problems) if _is_parquet(path) else _read_csv(path, schema, problems)


# --------------------------------------------------------------------------- column checks


def _text(column: pd.Series) -> pd.Series:
    """Cells as stripped text, missing cells (Parquet nulls) as ""."""
    return column.astype("string").fillna("").str.strip()


def _numeric(
    table: _Table, position: int, name: str, role: str, decimal: str, problems: list[DataProblem]
) -> tuple[np.ndarray, ColumnStats]:
    """The column as float64 (NaN where unusable), its stats, and its problems appended."""
    column = table.frame[position]
    n = len(column)
    no = np.zeros(n, dtype=bool)
    hint = ""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        missing, non_numeric, shown = np.isnan(values), no, column
    elif pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
        missing = column.isna().to_numpy()
        values, non_numeric, shown = np.full(n, np.nan), ~missing, _text(column)
        hint = " (the column holds dates or times; features and regression targets must be numbers)"
    else:
        shown = column if table.stripped else _text(column)
        text, wrong_mark = shown, no
        if decimal == ",":
            wrong_mark = shown.str.contains(".", regex=False).to_numpy()
            text = shown.str.replace(",", ".", regex=False)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        unparsed = np.isnan(values)  # missing, non-numeric, or a NaN spelling; only these few need a closer look
        missing = no.copy()
        if unparsed.any():
            missing[unparsed] = shown[unparsed].str.lower().isin(_NA_TOKENS).to_numpy()
        non_numeric = (unparsed & ~missing) | wrong_mark
        if decimal == "." and shown[non_numeric].str.fullmatch(r"[-+]?\d*,\d+").any():
            hint = ' (numbers with a decimal comma, such as 1,5, need "decimal": "," in the schema)'
        elif decimal == "," and wrong_mark.any():
            hint = " (the schema's decimal mark is ',' but these use '.'; a '.' as thousands separator is not read)"
    values = values.copy()
    values[missing | non_numeric] = np.nan
    infinite = np.isinf(values)
    too_large = np.abs(np.where(infinite, 0.0, np.nan_to_num(values))) > _FLOAT32_MAX
    label = f"{role} column {name!r}"
    for kind, mask, what, cells in (
        ("non_numeric", non_numeric, "non-numeric value", shown),
        ("missing_values", missing, "missing value", None),
        ("infinite_values", infinite, "infinite value", shown),
        ("out_of_range", too_large, "value too large for 32-bit floats (above 3.4e38)", shown),
    ):
        count = int(mask.sum())
        if count:
            where, rows = table.rows_text(mask, cells)
            noun = _plural(count, what, what.replace("value", "values", 1))
            extra = " (empty or NaN)" if kind == "missing_values" else hint if kind == "non_numeric" else ""
            problems.append(DataProblem(kind, name, f"{label} has {noun}{extra}: {where}", rows))
    finite = values[np.isfinite(values)]
    stats = ColumnStats(
        name,
        role,
        count=int(finite.size),
        missing=int(missing.sum()),
        infinite=int(infinite.sum()),
        non_numeric=int(non_numeric.sum()),
        min=float(finite.min()) if finite.size else None,
        max=float(finite.max()) if finite.size else None,
        mean=float(finite.mean()) if finite.size else None,
    )
    return values, stats


def _labels(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Class labels as text (integer-valued numbers as ``"3"``), and which rows have none."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        missing = np.isnan(values)
        filled = np.where(missing, 0.0, values)
        integral = np.all(np.mod(filled, 1) == 0)
        text = filled.astype(np.int64).astype(str) if integral else filled.astype(str)
        return pd.Series(np.where(missing, "", text), dtype=object), missing
    text = _text(column)
    return text.astype(object), (text == "").to_numpy()


def _class_order(labels: Sequence[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def _check_classes(
    table: _Table,
    position: int,
    schema: DataSchema,
    shots: int | None,
    ways: int | None,
    report: ValidationReport,
) -> np.ndarray | None:
    """Label ids (int64, in class order) or None; problems and class counts go into the report."""
    problems, name = report.problems, schema.target
    labels, missing = _labels(table.frame[position])
    if missing.any():
        where, rows = table.rows_text(missing)
        count = _plural(int(missing.sum()), "empty label")
        problems.append(DataProblem("missing_label", name, f"target column {name!r} has {count}: {where}", rows))
    present = labels[~missing]
    counts = present.value_counts()
    classes = list(schema.classes) if schema.classes is not None else _class_order(list(counts.index))
    known = set(classes)
    unknown = [label for label in _class_order(list(counts.index)) if label not in known]
    for i, label in enumerate(unknown[:_MAX_LISTED]):
        where, rows = table.rows_text((labels == label).to_numpy())
        hint = _suggest(label, classes)
        message = (
            f"target column {name!r} has label {label!r} ({_plural(int(counts[label]), 'row')}: {where}) that is "
            f"not one of the schema's classes {_listing([repr(c) for c in classes])}"
            + (f"; did you mean {hint!r}?" if hint else "")
        )
        if i == _MAX_LISTED - 1 and len(unknown) > _MAX_LISTED:
            message += f"; {len(unknown) - _MAX_LISTED} more unknown labels"
        problems.append(DataProblem("unknown_label", name, message, rows))
    report.classes = tuple(classes)
    report.class_counts = {c: int(counts.get(c, 0)) for c in classes} | {u: int(counts[u]) for u in unknown}
    per_class = _listing([f"{c!r}: {n}" for c, n in report.class_counts.items()])
    needed = 1 if shots is None else shots + 1
    if shots is not None:
        rare = [(c, int(counts[c])) for c in classes if 0 < counts.get(c, 0) < needed]
        if rare:
            listed = _listing([f"{c!r} ({n})" for c, n in rare])
            problems.append(
                DataProblem(
                    "rare_class",
                    name,
                    f"too few rows of class {listed} for {shots}-shot tasks: each class needs at least {needed} "
                    f"({shots} support + 1 query); rows per class: {per_class}",
                )
            )
    if ways is not None:
        eligible = [c for c in classes if counts.get(c, 0) >= needed]
        if len(eligible) < ways:
            enough = f"with at least {needed} rows " if shots is not None else ""
            problems.append(
                DataProblem(
                    "too_few_classes",
                    name,
                    f"only {_plural(len(eligible), 'class', 'classes')} {enough}in target column {name!r}; "
                    f"{ways}-way tasks need {ways}; rows per class: {per_class}",
                )
            )
    if missing.any() or unknown:
        return None
    index = {c: i for i, c in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64)


def _check_time(table: _Table, position: int, name: str, problems: list[DataProblem]) -> pd.Series | None:
    """A sortable key (numbers or UTC timestamps), or None with the problems appended."""
    column = table.frame[position]
    if pd.api.types.is_datetime64_any_dtype(column) or (
        pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    ):
        key, missing, bad = column, column.isna().to_numpy(), np.zeros(len(column), dtype=bool)
    else:
        text = _text(column)
        missing = (text == "").to_numpy()
        numbers = pd.to_numeric(text, errors="coerce")
        times = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        number_bad = numbers.isna().to_numpy() & ~missing
        time_bad = times.isna().to_numpy() & ~missing
        key, bad = (numbers, number_bad) if number_bad.sum() <= time_bad.sum() else (times, time_bad)
        if bad.any():
            where, rows = table.rows_text(bad, text)
            problems.append(
                DataProblem(
                    "bad_time",
                    name,
                    f"time column {name!r} has {_plural(int(bad.sum()), 'value')} that are neither numbers nor ISO "
                    f"8601 dates/times such as 2024-01-05 14:30:00: {where}",
                    rows,
                )
            )
    if missing.any():
        where, rows = table.rows_text(missing)
        count = _plural(int(missing.sum()), "empty cell")
        problems.append(DataProblem("missing_values", name, f"time column {name!r} has {count}: {where}", rows))
    return None if missing.any() or bad.any() else key.reset_index(drop=True)


def _check_id(table: _Table, position: int, name: str, role: str, problems: list[DataProblem]) -> None:
    text = _text(table.frame[position])
    missing = (text == "").to_numpy()
    if missing.any():
        where, rows = table.rows_text(missing)
        count = _plural(int(missing.sum()), "empty cell")
        problems.append(DataProblem("missing_values", name, f"{role} column {name!r} has {count}: {where}", rows))
    if role == "ID":
        repeated = text.duplicated(keep=False).to_numpy() & ~missing
        if repeated.any():
            where, rows = table.rows_text(repeated, text)
            count = _plural(int(repeated.sum()), "row")
            problems.append(
                DataProblem("duplicate_id", name, f"ID column {name!r} repeats IDs in {count}: {where}", rows)
            )


def _check_header(table: _Table, schema: DataSchema, report: ValidationReport) -> dict[str, int]:
    """Position of each schema column found; missing, extra, unnamed and repeated columns are reported."""
    names, problems = table.names, report.problems
    first: dict[str, int] = {}
    for position, name in enumerate(names):
        first.setdefault(name, position)
    wanted = schema.columns
    for name in sorted(n for n, count in Counter(names).items() if n and count > 1):
        if name in wanted or schema.extra_columns == "error":
            where = ", ".join(str(i + 1) for i, n in enumerate(names) if n == name)
            problems.append(
                DataProblem(
                    "duplicate_column",
                    name,
                    f"column {name!r} appears more than once in the header "
                    f"(columns {where}); rename or remove the copies",
                )
            )
    unused = [n for n in names if n and n not in wanted]
    for name in wanted:
        if name not in first:
            hint = _suggest(name, unused) or _suggest(name, names)
            role = "target" if name == schema.target else "feature" if name in schema.features else "column"
            message = f"{role} column {name!r} is missing" + (f" (did you mean {hint!r}?)" if hint else "")
            message += f"; the file has columns {_listing([repr(n) for n in names if n])}"
            problems.append(DataProblem("missing_column", name, message))
    unnamed = [i + 1 for i, n in enumerate(names) if not n]
    if schema.extra_columns == "error":
        if unused:
            extra = _listing([repr(n) for n in dict.fromkeys(unused)])
            problems.append(
                DataProblem(
                    "extra_column",
                    None,
                    f"the file has {_plural(len(set(unused)), 'column')} the schema does not name: {extra}; add "
                    'them to \'features\' or set "extra_columns": "ignore" in the schema',
                )
            )
        if unnamed:
            problems.append(
                DataProblem(
                    "unnamed_column",
                    None,
                    f"column{'s' if len(unnamed) > 1 else ''} {', '.join(map(str, unnamed))} of the header "
                    "ha{} no name (an index written by pandas' to_csv? save with index=False, or set "
                    '"extra_columns": "ignore")'.format("ve" if len(unnamed) > 1 else "s"),
                )
            )
    report.ignored_columns = tuple(dict.fromkeys(unused)) + tuple(f"(unnamed column {i})" for i in unnamed)
    return {name: first[name] for name in wanted if name in first}


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
    table = _read(report.path, schema, problems)
    if table is None:
        return report, None
    report.columns = tuple(table.names)
    found = _check_header(table, schema, report)
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
            values, stats = _numeric(table, found[name], name, "feature", schema.decimal, problems)
            report.column_stats[name] = stats
            features.append(values)
    y = None
    if schema.target in found:
        if schema.task == "regression":
            y, stats = _numeric(table, found[schema.target], schema.target, "target", schema.decimal, problems)
            report.column_stats[schema.target] = stats
        else:
            y = _check_classes(table, found[schema.target], schema, shots, ways, report)
    for key, role in (("id_column", "ID"), ("group_column", "group")):
        name = getattr(schema, key)
        if name is not None and name in found:
            _check_id(table, found[name], name, role, problems)
    order = None
    if schema.time_column is not None and schema.time_column in found:
        key = _check_time(table, found[schema.time_column], schema.time_column, problems)
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
                f"the table has {_plural(report.rows, 'data row')}; at least {needed} are needed{why}",
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
) -> FactoryData:
    """Validate then load a factory's table; `DataValidationError` lists every problem if it is unusable.

    ``x`` is float32 ``[rows, features]`` in the schema's feature order; ``y`` is float32
    (regression) or int64 class ids in ``schema.classes`` order (sorted labels without it).
    Rows are ordered by the time column when the schema names one (ties keep file order).
    ``name`` defaults to the file name without its suffix.
    """
    path = Path(path)
    report, parsed = _inspect(path, schema, min_rows, shots, ways)
    report.raise_for_problems()
    assert parsed is not None  # no problems means the table was parsed
    x, y = parsed.x, parsed.y
    if parsed.order is not None:
        x, y = x[parsed.order], y[parsed.order]
    return FactoryData(
        name or path.stem,
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.array(y, dtype=np.float32 if schema.task == "regression" else np.int64)),
    )
