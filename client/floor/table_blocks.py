"""A factory's table (CSV or Parquet) read in blocks, each with its features checked and converted.

Production tables are large and carry more than the model reads, so a table is streamed: memory
stays bounded by the block size whatever its length, and the next block is read and converted
in a worker thread while the caller uses this one. A missing feature column is an error naming
it; a cell that is not a number, or is empty, NaN or infinite, is an error naming its column and
row (1 = the first row below the header).

A CSV block keeps its rows as bytes (`csv_rows`) and only the feature columns are parsed (with,
as text, the key columns a caller names: a window model's group and time, `windows`), unless the
caller asks for every column (to write them into another format).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch

from fedmeta.client.floor.csv_rows import RowAlignmentError, csv_pieces, row_ends
from fedmeta.common.data.connector import DataSchema
from fedmeta.common.data.connector.readers import is_parquet
from fedmeta.common.data.scaling import FeatureScaling

__all__ = ["Block", "TableError", "column_names", "model_columns", "read_blocks", "read_features", "table_scaling"]

_PARQUET_ROWS = 131_072
_T, _U = TypeVar("_T"), TypeVar("_U")


class TableError(ValueError):
    """A table that cannot be read for the model: a missing or unreadable column, a bad cell, no rows."""


@dataclass(frozen=True)
class Block:
    """Consecutive rows of the table: their features ``[rows, features]`` (float64, checked) and
    either the CSV bytes with each row's line-break position, or every column (``batch``); ``keys``
    holds the key columns the reader was asked for (unchecked: their reader checks them)."""

    features: np.ndarray
    piece: bytes | None = None
    ends: np.ndarray | None = None
    batch: pa.RecordBatch | None = None
    keys: pa.RecordBatch | None = None


def column_names(path: Path, schema: DataSchema) -> list[str]:
    """The table's columns; an error naming the file if it is missing or is not a table."""
    try:
        if is_parquet(path):
            return list(pq.ParquetFile(path).schema_arrow.names)
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 16),
                                 parse_options=pa_csv.ParseOptions(delimiter=schema.delimiter))
        return list(reader.schema.names)
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise TableError(f"{path}: cannot be read as a table ({error})") from None


def _prefetched(items: Iterator[_T], work: Callable[[_T], _U]) -> Iterator[_U]:
    """``work(item)`` for each item in order, the next computed in a worker thread while the caller
    uses this one: two items in memory at most."""
    with ThreadPoolExecutor(1) as worker:
        pending = None
        for item in items:
            following = worker.submit(work, item)
            if pending is not None:
                yield pending.result()
            pending = following
        if pending is not None:
            yield pending.result()


@dataclass(frozen=True)
class _Unchecked:
    """A block as the worker thread leaves it: features None where a cell is bad, so that the reader,
    who knows the block's first row, converts them again for the error naming it."""

    features: np.ndarray | None
    rows: int
    piece: bytes | None = None
    ends: np.ndarray | None = None
    batch: pa.RecordBatch | None = None
    keys: pa.RecordBatch | None = None


def _key_columns(data: pa.Table | pa.RecordBatch, keys: Sequence[str]) -> pa.RecordBatch | None:
    """The columns ``keys`` of a parsed piece or batch, as one record batch (None without keys)."""
    if not keys:
        return None
    columns = [data.column(name) for name in keys]
    return pa.RecordBatch.from_arrays(
        [column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column for column in columns],
        names=list(keys))


class _CsvParser:
    """One piece of CSV rows: the feature columns parsed as numbers by pyarrow (fast) or, where a cell
    does not parse (spaces around a number, a decimal comma, a bad cell), as text by `_features`."""

    def __init__(self, path: Path, schema: DataSchema, names: list[str], with_columns: bool,
                 keys: Sequence[str] = ()) -> None:
        self.path, self.schema, self.with_columns, self.keys = path, schema, with_columns, tuple(keys)
        self.read = pa_csv.ReadOptions(column_names=names)
        self.plain = pa_csv.ParseOptions(delimiter=schema.delimiter)
        self.quoted = pa_csv.ParseOptions(delimiter=schema.delimiter, newlines_in_values=True)  # slower: if needed
        text_keys = [name for name in self.keys if name not in schema.features]
        self.numbers = pa_csv.ConvertOptions(include_columns=[*schema.features, *text_keys], null_values=[],
                                             column_types={**{name: pa.float64() for name in schema.features},
                                                           **{name: pa.string() for name in text_keys}})
        self.text = pa_csv.ConvertOptions(column_types={name: pa.string() for name in names},
                                          strings_can_be_null=False, quoted_strings_can_be_null=False)

    def text_batch(self, piece: bytes) -> pa.RecordBatch:
        options = self.quoted if b'"' in piece else self.plain
        table = pa_csv.read_csv(pa.BufferReader(piece), read_options=self.read, parse_options=options,
                                convert_options=self.text)
        batches = table.combine_chunks().to_batches()
        return batches[0] if batches else pa.record_batch([pa.array([], pa.string())] * table.num_columns,
                                                          names=table.column_names)

    def __call__(self, piece: bytes) -> _Unchecked:
        if self.with_columns:
            batch = self.text_batch(piece)
            return _Unchecked(_checked_or_none(batch, self.schema, self.path), batch.num_rows, batch=batch,
                              keys=_key_columns(batch, self.keys))
        options = self.quoted if b'"' in piece else self.plain
        try:
            table = pa_csv.read_csv(pa.BufferReader(piece), read_options=self.read, parse_options=options,
                                    convert_options=self.numbers)
            features = np.stack([table.column(name).to_numpy() for name in self.schema.features], axis=1)
            if not np.isfinite(features).all():
                features = None
            rows, keys = table.num_rows, _key_columns(table, self.keys)
        except pa.ArrowInvalid:
            batch = self.text_batch(piece)
            features, rows = _checked_or_none(batch, self.schema, self.path), batch.num_rows
            keys = _key_columns(batch, self.keys)
        try:
            ends = row_ends(piece, rows)
        except RowAlignmentError as error:
            raise TableError(f"{self.path}: the rows of a piece could not be told apart ({error})") from None
        return _Unchecked(features, rows, piece=piece, ends=ends, keys=keys)


def _checked_or_none(batch: pa.RecordBatch, schema: DataSchema, path: Path) -> np.ndarray | None:
    try:
        return _features(batch, schema, 0, path)
    except TableError:
        return None


def read_blocks(path: Path, schema: DataSchema, names: list[str], with_columns: bool = False,
                keys: Sequence[str] = ()) -> Iterator[Block]:
    """The table in blocks with checked features: a CSV block holds its bytes, or every column as text
    with ``with_columns``; a Parquet block holds every column. Each block also holds the columns ``keys``
    (CSV: as text, unless they are features).

    Read it inside ``contextlib.closing``: a reader left suspended (its caller failed mid-table) keeps a
    worker thread until it is closed, and one the garbage collector finalises inside a thread's start-up
    (CPython 3.11's ``threading._maintain_shutdown_locks``) deadlocks that thread's start: a later prediction
    in the same process hung so."""
    if is_parquet(path):
        def converted(batch: pa.RecordBatch) -> _Unchecked:
            return _Unchecked(_checked_or_none(batch, schema, path), batch.num_rows, batch=batch,
                              keys=_key_columns(batch, keys))

        unchecked = _prefetched(pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_ROWS), converted)
        parser = None
    else:
        parser = _CsvParser(path, schema, names, with_columns, keys)
        unchecked = _prefetched(csv_pieces(path), parser)
    rows = 0
    try:
        for block in unchecked:
            features = block.features
            if features is None:  # convert again as text, for the error naming the cell's row
                batch = block.batch if block.batch is not None else parser.text_batch(block.piece)
                features = _features(batch, schema, rows, path)
            yield Block(features, block.piece, block.ends, block.batch, block.keys)
            rows += block.rows
    except pa.ArrowInvalid as error:
        raise _conversion_problem(path, names, error) from None
    finally:
        unchecked.close()  # its worker thread ends now, not whenever the garbage collector finalises it


def _conversion_problem(path: Path, names: list[str], error: pa.ArrowInvalid) -> TableError:
    """pyarrow's 'In CSV column #3: Row #7: ... invalid value' with the column's name."""
    text = str(error)
    match = re.search(r"column #(\d+)", text)
    if match and int(match.group(1)) < len(names):
        text = text.replace(match.group(0), f"column {names[int(match.group(1))]!r}", 1)
    return TableError(f"{path}: {text}")


def _rows(hits: np.ndarray, first_row: int, values: np.ndarray | None = None) -> str:
    """``data row(s) 4, 9 ('n/a', 'x') and 3 more``: the first offending rows (1 = the first below the header)."""
    shown = hits[:5]
    text = "data row(s) " + ", ".join(str(first_row + int(i) + 1) for i in shown)
    if values is not None:
        text += " (" + ", ".join(repr(values[i]) for i in shown) + ")"
    return text + (f" and {hits.size - shown.size} more" if hits.size > shown.size else "")


def _features(block: pa.RecordBatch, schema: DataSchema, first_row: int, path: Path) -> np.ndarray:
    """``[rows, features]`` float64; an empty, NaN or infinite cell is an error naming its column and row."""
    columns = []
    for name in schema.features:
        column = block.column(name)
        if schema.decimal == "," and pa.types.is_string(column.type):
            column = pc.replace_substring(column, ",", ".")
        try:
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = pd.to_numeric(pd.Series(column.to_numpy(zero_copy_only=False)).str.strip(), errors="coerce")
            text = column.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(values.isna().to_numpy() & (pd.Series(text).str.strip() != "").to_numpy())
            if bad.size:
                raise TableError(f"{path}: column {name!r} holds values that are not numbers: "
                                 + _rows(bad, first_row, text)) from None
            values = values.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise TableError(f"{path}: column {name!r} is empty, NaN or infinite in " + _rows(bad, first_row))
        columns.append(values)
    return np.stack(columns, axis=1)


def model_columns(path: Path, schema: DataSchema, window_length: int | None = None) -> list[str]:
    """The table's columns, once its feature columns and, for a model reading windows of
    ``window_length`` rows, its group and time columns are found there (a `TableError` naming any missing)."""
    names = column_names(path, schema)
    missing = [name for name in schema.features if name not in names]
    if missing:
        raise TableError(f"{path}: missing feature column(s) {missing}; the package reads {list(schema.features)}")
    if window_length is not None:
        for role, name in (("group", schema.group_column), ("time", schema.time_column)):
            if name not in names:
                raise TableError(f"{path}: missing the {role} column {name!r}; the model reads windows of "
                                 f"{window_length} rows of one {schema.group_column!r} group in "
                                 f"{schema.time_column!r} order")
    return names


def read_features(path: Path, schema: DataSchema) -> np.ndarray:
    """Every row's features ``[rows, features]`` (raw, float64), checked as `fedmeta predict` checks them."""
    with closing(read_blocks(path, schema, model_columns(path, schema))) as blocks:
        features = [block.features for block in blocks]
    if not features:
        raise TableError(f"{path}: the table has no data rows")
    return np.concatenate(features)


def table_scaling(path: Path, schema: DataSchema) -> FeatureScaling:
    """Mean and sample standard deviation of this table's own rows (as `FeatureScaling.fit` computes them),
    in one streamed pass: each block's statistics merged into the running ones (Chan et al.), exact
    however far the values lie from zero."""
    count, mean, squares = 0, np.zeros(len(schema.features)), np.zeros(len(schema.features))
    with closing(read_blocks(path, schema, model_columns(path, schema))) as blocks:
        for block in blocks:
            x = block.features
            block_mean = x.mean(axis=0)
            delta, total = block_mean - mean, count + len(x)
            squares += np.square(x - block_mean).sum(axis=0) + np.square(delta) * count * len(x) / total
            mean, count = mean + delta * len(x) / total, total
    if count == 0:
        raise TableError(f"{path}: the table has no data rows")
    std = np.sqrt(squares / (count - 1)) if count > 1 else np.zeros_like(mean)
    return FeatureScaling(torch.from_numpy(mean), torch.from_numpy(np.where(std > 1e-6, std, 1.0)), count)
