"""Windows of sensor signals rebuilt from a factory's long-format table, for models that read them.

A window model (`common.models` CNN1d, TCN: ``input_shape == (channels, length)``) reads ``length``
consecutive time steps of one unit. A factory's table holds one row per time step: a group column
(the unit or machine), a time column, the channels as feature columns and the target of that step
(the RUL at that cycle, the fault label at that moment). The window ending at a row holds that row
and the ``length - 1`` rows before it in its group, in time order, channels first; its target is
the row's target, as C-MAPSS labels a window with the RUL at its last cycle
(`common.datasets.cmapss.make_windows`). A row with fewer than ``length - 1`` rows before it in its
group ends no window: nothing is padded (padding invents readings the unit never gave).

Two ways of reading, for two jobs:

* `read_window_table` (``fedmeta adapt``, ``fedmeta update``: a few labelled rows, read whole):
  rows are sorted by time within their group (stable: rows of one time keep their file order), so
  the file may hold them in any order. Windows are ordered by the time of their last row, ties in
  file order: ``--rows N`` takes the N windows that ended first.
* `WindowStream` (``fedmeta predict``: a table of any length, streamed in blocks): the rows must
  already stand in time order within each group (groups may interleave); a group whose time goes
  backwards is an error naming it and the row, because sorting a table too large to hold is out
  of scope. The last ``length - 1`` rows of every group seen are carried from block to block, so
  memory is bounded by the block plus ``length - 1`` rows per group.

Scaling stays per channel, from the factory's own rows (`common.scaling`), applied to rows before
windows are cut, exactly as for a row model; `fedmeta export` scales windows per channel alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from fedmeta.client.table_blocks import TableError, model_columns, read_blocks
from fedmeta.common.adaptation_recipe import MAX_FOLDS
from fedmeta.common.connector import DataProblem, DataSchema, load_factory_table
from fedmeta.common.connector.checks import check_time
from fedmeta.common.connector.readers import Table, read_table

__all__ = [
    "BlockWindows", "WindowStream", "WindowTable", "Windows", "read_window_table", "read_windows", "window_chunks",
    "window_slices",
]


def window_slices(rows: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """The windows ``[len(ends), channels, length]`` of ``rows [n, channels]`` ending at the rows ``ends``
    (each window's rows are the ``length`` rows up to and including its end)."""
    index = ends[:, None] + np.arange(1 - length, 1)
    return np.ascontiguousarray(rows[index].transpose(0, 2, 1))


def window_chunks(rows: np.ndarray, ends: np.ndarray, length: int, size: int) -> Iterator[np.ndarray]:
    """`window_slices` of ``ends`` in chunks of ``size`` windows, so that only one chunk is ever built."""
    for start in range(0, len(ends), size):
        yield window_slices(rows, ends[start:start + size], length)


def _group_names(column: pd.Series) -> np.ndarray:
    """Group cells as text without surrounding spaces (as `validate_table` checks them)."""
    return column.astype("string").fillna("").str.strip().to_numpy(dtype=object)


def _text(value: object) -> str:
    """A cell as a person reads it (not numpy's ``np.float64(3.0)``)."""
    return str(value.item() if isinstance(value, np.generic) else value)


def _time_keys(table: Table, position: int, name: str) -> tuple[np.ndarray, str]:
    """Sortable times of a column (numbers, or ISO 8601 dates as UTC nanoseconds) read as `validate_table`
    reads them (`check_time`), and which of the two they are."""
    problems: list[DataProblem] = []
    key = check_time(table, position, name, problems)
    if key is None:
        raise TableError("; ".join(problem.message for problem in problems))
    if pd.api.types.is_datetime64_any_dtype(key):
        return pd.DatetimeIndex(key).as_unit("ns").asi8, "dates"
    return key.to_numpy(dtype=np.float64), "numbers"


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays
class Windows:
    """Where the windows of a table lie among its rows, laid out group after group, each in time order.

    ``ends [windows]`` is the row each window ends at and ``groups [windows]`` its group (numbered in
    order of first appearance in the file), both in the order ``--rows`` takes windows: by the time of
    their last row, ties in file order."""

    ends: np.ndarray
    groups: np.ndarray
    length: int
    group_column: str
    time_column: str

    def __len__(self) -> int:
        return len(self.ends)

    def gather(self, rows: Tensor, count: int | None = None) -> Tensor:
        """The first ``count`` (default: all) windows ``[count, channels, length]`` of ``rows [n, channels]``."""
        return torch.from_numpy(window_slices(rows.numpy(), self.ends[:count], self.length))

    def targets(self, y: Tensor, count: int | None = None) -> Tensor:
        """Each of the first ``count`` windows' target: that of its last row."""
        return y[torch.from_numpy(self.ends[:count])]

    def units(self, count: int | None = None) -> Tensor:
        """What cross-validation holds out whole (`common.adaptation_recipe.support_folds`): with two groups
        or more among the first ``count`` windows, each group (a unit's neighbouring windows share
        rows, so splitting one across folds would leak); with one, up to `MAX_FOLDS` stretches of
        consecutive windows in time order (blocked cross-validation of a single series)."""
        groups = self.groups[:count]
        if len(np.unique(groups)) >= 2:
            return torch.from_numpy(groups.astype(np.int64))
        folds = min(MAX_FOLDS, len(groups))
        return torch.from_numpy(np.arange(len(groups)) * folds // len(groups))


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class WindowTable:
    """A window table's labelled rows, group after group in time order: raw ``x [rows, channels]``
    (float64: what the factory's scaling is fitted on) and ``y [rows]``, with its `Windows`."""

    x: Tensor
    y: Tensor
    windows: Windows


def read_window_table(path: Path, schema: DataSchema, length: int) -> WindowTable:
    """The labelled rows of the table at ``path`` (already checked with `validate_table` against ``schema``,
    which names its group and time columns) and their windows of ``length`` rows; a table where no
    group has that many rows is a ``ValueError`` saying so."""
    group, time = schema.group_column, schema.time_column
    if group is None or time is None:
        raise ValueError("a window table needs the schema's group_column and time_column")
    # In file order (no time column to sort by): the order is set here, within each group.
    rows = load_factory_table(path, dataclasses.replace(schema, time_column=None, extra_columns="ignore"),
                              features_dtype=torch.float64)
    problems: list[DataProblem] = []
    table = read_table(path, schema, problems)
    if table is None or table.frame is None or problems or len(table.frame) != len(rows.y):
        raise TableError(f"{path}: the group and time columns could not be read again: "
                         + ("; ".join(p.message for p in problems) or "the file changed while it was read"))
    names = _group_names(table.frame[table.names.index(group)])
    times, _ = _time_keys(table, table.names.index(time), time)
    codes, distinct = pd.factorize(names)
    order = np.lexsort((times, codes))  # group by group, in time order; stable: equal times keep file order
    sizes = np.bincount(codes)
    grouped_codes = codes[order]
    position = np.arange(len(order)) - (np.cumsum(sizes) - sizes)[grouped_codes]
    ends = np.flatnonzero(position >= length - 1)
    if not len(ends):
        longest = int(sizes.argmax())
        raise ValueError(f"{path}: no {group!r} group has the {length} rows one window spans (the longest, "
                         f"{distinct[longest]!r}, has {int(sizes[longest])}): there is nothing to learn from")
    ends = ends[np.lexsort((order[ends], times[order[ends]]))]  # by the time of the last row, ties in file order
    windows = Windows(ends, grouped_codes[ends], length, group, time)
    index = torch.from_numpy(order)
    return WindowTable(rows.x[index], rows.y[index], windows)


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays
class BlockWindows:
    """A block's rows regrouped with the rows carried before them: ``rows [n, channels]`` and, for each
    row of the block in file order, where its window ends in ``rows`` (-1: no full window yet)."""

    rows: np.ndarray
    ends: np.ndarray


@dataclass
class _Carried:
    """What a group leaves for the next block: its last ``length - 1`` rows and its last time."""

    rows: np.ndarray
    time: float | int
    shown: object  # the last time as the table wrote it, for an error message


class WindowStream:
    """Windows of a table streamed in blocks whose rows stand in time order within each group (see the
    module docstring); ``feed`` each block in turn."""

    def __init__(self, length: int, schema: DataSchema, path: Path) -> None:
        if schema.group_column is None or schema.time_column is None:
            raise ValueError("a window table needs the schema's group_column and time_column")
        self.length, self.path = length, path
        self.group_column, self.time_column = schema.group_column, schema.time_column
        self.carried: dict[str, _Carried] = {}
        self.time_kind: str | None = None

    def feed(self, rows: np.ndarray, keys: pa.RecordBatch, first_row: int) -> BlockWindows:
        """The windows ending at the rows ``rows [n, channels]`` (scaled) of a block whose group and time
        cells are ``keys``; ``first_row`` rows of the table came before it (for row numbers in errors)."""
        data_rows = np.arange(first_row + 1, first_row + 1 + len(rows))
        groups = _group_names(keys.column(self.group_column).to_pandas())
        empty = np.flatnonzero(groups == "")
        if len(empty):
            raise TableError(f"{self.path}: group column {self.group_column!r} is empty in data row "
                             f"{int(data_rows[empty[0]])}")
        shown = keys.column(self.time_column).to_pandas()
        frame = Table([self.time_column], pd.DataFrame({0: shown}), data_rows=data_rows)
        times, kind = _time_keys(frame, 0, self.time_column)
        if self.time_kind not in (None, kind):
            raise TableError(f"{self.path}: time column {self.time_column!r} holds {kind} from data row "
                             f"{int(data_rows[0])} on but {self.time_kind} before")
        self.time_kind = kind
        codes, distinct = pd.factorize(groups)
        members = np.argsort(codes, kind="stable")  # each group's rows of the block, in file order
        bounds = np.cumsum(np.bincount(codes, minlength=len(distinct)))
        pieces, ends, start, size = [], np.full(len(rows), -1, dtype=np.int64), 0, 0
        for code, name in enumerate(distinct):
            own = members[start:bounds[code]]
            start = bounds[code]
            before = self.carried.get(name)
            self._check_order(name, times[own], shown.iloc[own], data_rows[own], before)
            previous = rows[:0] if before is None else before.rows
            sequence = np.concatenate([previous, rows[own]])
            at = len(previous) + np.arange(len(own))  # each block row's place in its group's sequence
            full = at >= self.length - 1
            ends[own[full]] = size + at[full]
            pieces.append(sequence)
            size += len(sequence)
            tail = sequence[max(0, len(sequence) - (self.length - 1)):]  # length 1: nothing (an empty slice)
            self.carried[name] = _Carried(tail.copy(), times[own[-1]], shown.iloc[own[-1]])
        return BlockWindows(np.concatenate(pieces) if pieces else rows[:0], ends)

    def _check_order(self, name: str, times: np.ndarray, shown: pd.Series, data_rows: np.ndarray,
                     before: _Carried | None) -> None:
        """A group's time must never go backwards (equal times keep their file order)."""
        earlier = times if before is None else np.concatenate([[before.time], times])
        back = np.flatnonzero(np.diff(earlier) < 0)
        if not len(back):
            return
        at = int(back[0]) + (1 if before is None else 0)  # the row that went back, as an index of ``times``
        previous = shown.iloc[at - 1] if at > 0 else before.shown
        raise TableError(f"{self.path}: group {name!r} goes back in time at data row {int(data_rows[at])} "
                         f"({self.time_column} {_text(shown.iloc[at])} after {_text(previous)}); predict reads each "
                         "group's rows in the order they stand in the file, which must be time order (a streamed "
                         f"table is not sorted): sort it by {self.group_column!r} and {self.time_column!r} first")


def read_windows(path: Path, schema: DataSchema, length: int) -> np.ndarray:
    """Every full window ``[windows, channels, length]`` of the table at ``path``, raw (unscaled) and in
    file order, built as `fedmeta predict` builds them (`WindowStream`): the inputs an export is checked on."""
    stream = WindowStream(length, schema, path)
    names = model_columns(path, schema, length)
    windows, rows = [], 0
    for block in read_blocks(path, schema, names, keys=(stream.group_column, stream.time_column)):
        found = stream.feed(block.features, block.keys, rows)
        windows.append(window_slices(found.rows, found.ends[found.ends >= 0], length))
        rows += len(block.features)
    if not windows or not sum(len(w) for w in windows):
        raise TableError(f"{path}: no {stream.group_column!r} group has the {length} rows one window spans")
    return np.concatenate(windows)
