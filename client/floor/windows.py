"""Windows of a factory's long-format table streamed in blocks, for ``fedmeta predict`` of a window model.

The windows are those of `common.data.connector.windows` (which reads a table whole, for a federation's
factory, ``fedmeta adapt`` and ``fedmeta update``). Here a table of any length is streamed: the rows
must already stand in time order within each group (groups may interleave); a group whose time goes
backwards is an error naming it and the row, because sorting a table too large to hold is out of
scope. The last ``length - 1`` rows of every group seen are carried from block to block, so memory is
bounded by the block plus ``length - 1`` rows per group.

Scaling stays per channel, from the factory's own rows (`common.data.scaling`), applied to rows before
windows are cut, exactly as for a row model; `fedmeta export` scales windows per channel alike.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fedmeta.client.floor.table_blocks import TableError, model_columns, read_blocks
from fedmeta.common.data.connector import DataSchema
from fedmeta.common.data.connector.readers import Table
from fedmeta.common.data.connector.windows import group_names, time_keys, window_slices

__all__ = ["BlockWindows", "WindowStream", "read_windows"]


def _text(value: object) -> str:
    """A cell as a person reads it (not numpy's ``np.float64(3.0)``)."""
    return str(value.item() if isinstance(value, np.generic) else value)


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
        groups = group_names(keys.column(self.group_column).to_pandas())
        empty = np.flatnonzero(groups == "")
        if len(empty):
            raise TableError(f"{self.path}: group column {self.group_column!r} is empty in data row "
                             f"{int(data_rows[empty[0]])}")
        shown = keys.column(self.time_column).to_pandas()
        frame = Table([self.time_column], pd.DataFrame({0: shown}), data_rows=data_rows)
        times, kind = time_keys(frame, 0, self.time_column)
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
    with closing(read_blocks(path, schema, names, keys=(stream.group_column, stream.time_column))) as blocks:
        for block in blocks:
            found = stream.feed(block.features, block.keys, rows)
            windows.append(window_slices(found.rows, found.ends[found.ends >= 0], length))
            rows += len(block.features)
    if not windows or not sum(len(w) for w in windows):
        raise TableError(f"{path}: no {stream.group_column!r} group has the {length} rows one window spans")
    return np.concatenate(windows)
