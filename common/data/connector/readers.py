"""Reading a CSV or Parquet file into a `Table`, with structural problems (encoding, quoting, delimiter) named.

CSV is read twice: once with the standard ``csv`` module, which checks the structure
(field counts per line, quoting, encoding) and gives exact line numbers for every bad
line, then with ``pd.read_csv(dtype=str)`` so that values stay text until `checks`
converts them column by column. No pandas or pyarrow exception escapes; each becomes a
`DataProblem`.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedmeta.common.data.connector.report import DataProblem
from fedmeta.common.data.connector.schema import DataSchema
from fedmeta.common.data.connector.text import MAX_LISTED
from fedmeta.common.validation import suggest

PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"
_OTHER_DELIMITERS = (";", ",", "\t", "|")


@dataclass
class Table:
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
        shown = hits[:MAX_LISTED]
        parts = [self.where(i) + ("" if values is None else f" {values.iloc[i]!r}") for i in shown]
        text = ", ".join(parts)
        if len(hits) > len(shown):
            text += f" and {len(hits) - len(shown)} more"
        return text, tuple(int(self.data_rows[i]) for i in shown)


def is_parquet(path: Path) -> bool:
    """By its suffix, else by Parquet's magic bytes (a file that cannot be opened is not)."""
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


def _read_csv(path: Path, schema: DataSchema, problems: list[DataProblem]) -> Table | None:
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
    table = Table(names)
    lines, width, is_bad = np.asarray(record_lines, dtype=np.int64), np.asarray(widths), np.asarray(bad, dtype=bool)
    bad_records = np.flatnonzero(is_bad)
    table.malformed = len(bad_records)
    if table.malformed:
        hint = f"check that the delimiter is {schema.delimiter!r} and that text holding it is quoted"
        if schema.delimiter == "," and schema.decimal == "." and (width[bad_records] > len(names)).any():
            hint += '; numbers with a decimal comma (1,5) need "delimiter": ";" and "decimal": ","'
        for i, record in enumerate(bad_records[:MAX_LISTED]):
            message = (
                f"line {lines[record]} (row {record + 1}) has {width[record]} fields, expected {len(names)} "
                "like the header"
            )
            if i == 0:
                message += f" ({hint})"
            if i == MAX_LISTED - 1 and table.malformed > MAX_LISTED:
                message += f"; {table.malformed - MAX_LISTED} more lines have the wrong number of fields"
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


def _read_parquet(path: Path, problems: list[DataProblem]) -> Table | None:
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
    return Table(names, frame, np.arange(1, len(frame) + 1), None)


def read_table(path: Path, schema: DataSchema, problems: list[DataProblem]) -> Table | None:
    """The file as a `Table` (Parquet by suffix or magic bytes, else CSV), or None with the problems appended."""
    if not path.exists():
        try:
            nearby = sorted(p.name for p in path.parent.iterdir() if p.is_file())
        except OSError:  # no such folder, or not allowed to list it
            nearby = []
        hint = suggest(path.name, nearby, cutoff=0.8)  # file names share suffixes: ask for a closer match
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
    return _read_parquet(path, problems) if is_parquet(path) else _read_csv(path, schema, problems)
