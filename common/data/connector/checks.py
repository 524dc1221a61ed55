"""Checks of a read `Table` against its schema: header, numeric columns, labels, times and IDs.

Numeric values are converted column by column with ``pd.to_numeric(errors="coerce")``;
a cell that fails conversion is reported with its row and its text rather than silently
becoming NaN. Empty cells and the usual NaN spellings count as missing values, not as
non-numeric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedmeta.common.data.connector.readers import Table
from fedmeta.common.data.connector.report import ColumnStats, DataProblem, ValidationReport
from fedmeta.common.data.connector.schema import DataSchema
from fedmeta.common.data.connector.text import MAX_LISTED, listing, plural
from fedmeta.common.validation import suggest

# Cell texts (compared in lower case) that mean "no value" in numeric columns. Labels are
# not checked against these ("none" is a plausible fault class); only empty labels are missing.
_NA_TOKENS = frozenset({"", "nan", "-nan", "na", "n/a", "#n/a", "#nv", "null", "none", "<na>"})
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _text(column: pd.Series) -> pd.Series:
    """Cells as stripped text, missing cells (Parquet nulls) as ""."""
    return column.astype("string").fillna("").str.strip()


def check_numeric(
    table: Table, position: int, name: str, role: str, decimal: str, problems: list[DataProblem]
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
            noun = plural(count, what, what.replace("value", "values", 1))
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
        mean=_mean(finite) if finite.size else None,
    )
    return values, stats


def _mean(finite: np.ndarray) -> float:
    """The mean of finite values, without the overflow of their sum near float64's largest (1e308 twice)."""
    largest = float(np.abs(finite).max())
    return float(np.mean(finite / largest)) * largest if largest > 0 else 0.0


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


def check_classes(
    table: Table,
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
        count = plural(int(missing.sum()), "empty label")
        problems.append(DataProblem("missing_label", name, f"target column {name!r} has {count}: {where}", rows))
    present = labels[~missing]
    counts = present.value_counts()
    classes = list(schema.classes) if schema.classes is not None else _class_order(list(counts.index))
    known = set(classes)
    unknown = [label for label in _class_order(list(counts.index)) if label not in known]
    for i, label in enumerate(unknown[:MAX_LISTED]):
        where, rows = table.rows_text((labels == label).to_numpy())
        hint = suggest(label, classes)
        message = (
            f"target column {name!r} has label {label!r} ({plural(int(counts[label]), 'row')}: {where}) that is "
            f"not one of the schema's classes {listing([repr(c) for c in classes])}"
            + (f"; did you mean {hint!r}?" if hint else "")
        )
        if i == MAX_LISTED - 1 and len(unknown) > MAX_LISTED:
            message += f"; {len(unknown) - MAX_LISTED} more unknown labels"
        problems.append(DataProblem("unknown_label", name, message, rows))
    report.classes = tuple(classes)
    report.class_counts = {c: int(counts.get(c, 0)) for c in classes} | {u: int(counts[u]) for u in unknown}
    per_class = listing([f"{c!r}: {n}" for c, n in report.class_counts.items()])
    needed = 1 if shots is None else shots + 1
    if shots is not None:
        rare = [(c, int(counts[c])) for c in classes if 0 < counts.get(c, 0) < needed]
        if rare:
            listed = listing([f"{c!r} ({n})" for c, n in rare])
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
                    f"only {plural(len(eligible), 'class', 'classes')} {enough}in target column {name!r}; "
                    f"{ways}-way tasks need {ways}; rows per class: {per_class}",
                )
            )
    if missing.any() or unknown:
        return None
    index = {c: i for i, c in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64)


def check_time(table: Table, position: int, name: str, problems: list[DataProblem]) -> pd.Series | None:
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
                    f"time column {name!r} has {plural(int(bad.sum()), 'value')} that are neither numbers nor ISO "
                    f"8601 dates/times such as 2024-01-05 14:30:00: {where}",
                    rows,
                )
            )
    if missing.any():
        where, rows = table.rows_text(missing)
        count = plural(int(missing.sum()), "empty cell")
        problems.append(DataProblem("missing_values", name, f"time column {name!r} has {count}: {where}", rows))
    return None if missing.any() or bad.any() else key.reset_index(drop=True)


def check_id(table: Table, position: int, name: str, role: str, problems: list[DataProblem]) -> None:
    """Append empty cells of an ID or group column, and repeated IDs (groups repeat by design)."""
    text = _text(table.frame[position])
    missing = (text == "").to_numpy()
    if missing.any():
        where, rows = table.rows_text(missing)
        count = plural(int(missing.sum()), "empty cell")
        problems.append(DataProblem("missing_values", name, f"{role} column {name!r} has {count}: {where}", rows))
    if role == "ID":
        repeated = text.duplicated(keep=False).to_numpy() & ~missing
        if repeated.any():
            where, rows = table.rows_text(repeated, text)
            count = plural(int(repeated.sum()), "row")
            problems.append(
                DataProblem("duplicate_id", name, f"ID column {name!r} repeats IDs in {count}: {where}", rows)
            )


def check_header(table: Table, schema: DataSchema, report: ValidationReport) -> dict[str, int]:
    """Position of each schema column found; missing, extra, unnamed and repeated columns are reported."""
    names, problems = table.names, report.problems
    first: dict[str, int] = {}
    for position, name in enumerate(names):
        first.setdefault(name, position)
    wanted = schema.columns
    for name in sorted(n for n, count in Counter(names).items() if n and count > 1):
        if name in wanted or schema.extra_columns == "error":  # a repeated extra column is skipped otherwise
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
            hint = suggest(name, unused) or suggest(name, names)
            role = "target" if name == schema.target else "feature" if name in schema.features else "column"
            message = f"{role} column {name!r} is missing" + (f" (did you mean {hint!r}?)" if hint else "")
            message += f"; the file has columns {listing([repr(n) for n in names if n])}"
            problems.append(DataProblem("missing_column", name, message))
    unnamed = [i + 1 for i, n in enumerate(names) if not n]
    notes: list[tuple[str, str]] = []
    if unused:
        extra = listing([repr(n) for n in dict.fromkeys(unused)])
        notes.append(("extra_column", f"the file has {plural(len(set(unused)), 'column')} the schema does not name: "
                                      f"{extra}"))
    if unnamed:
        notes.append(("unnamed_column", f"column{'s' if len(unnamed) > 1 else ''} {', '.join(map(str, unnamed))} of "
                                        "the header ha{} no name (an index written by pandas' to_csv? save with "
                                        "index=False)".format("ve" if len(unnamed) > 1 else "s")))
    for kind, message in notes:
        if schema.extra_columns == "error":
            problems.append(DataProblem(kind, None, f"{message}; add them to 'features' or set "
                                                    '"extra_columns": "warn" in the schema'))
        elif schema.extra_columns == "warn":
            report.warnings.append(f"{message}: not read")
    report.ignored_columns = tuple(dict.fromkeys(unused)) + tuple(f"(unnamed column {i})" for i in unnamed)
    return {name: first[name] for name in wanted if name in first}
