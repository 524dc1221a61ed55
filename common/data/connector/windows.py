"""Windows of sensor signals cut from a factory's long-format table, for models that read them.

A window model (`common.meta.models` CNN1d, TCN: ``input_shape == (channels, length)``) reads ``length``
consecutive time steps of one unit. A factory's table holds one row per time step: a group column
(the unit or machine), a time column, the channels as feature columns and the target of that step
(the RUL at that cycle, the fault label at that moment). The window ending at a row holds that row
and the ``length - 1`` rows before it in its group, in time order, channels first; its target is
the row's target, as C-MAPSS labels a window with the RUL at its last cycle
(`common.data.datasets.cmapss.make_windows`). A row with fewer than ``length - 1`` rows before it in its
group ends no window: nothing is padded (padding invents readings the unit never gave).

`read_window_table` reads a table whole (a federation's factory, ``fedmeta adapt``, ``fedmeta
update``): rows are sorted by time within their group (stable: rows of one time keep their file
order), so the file may hold them in any order. Windows are ordered by the time of their last row,
ties in file order: ``--rows N`` takes the N windows that ended first. `client.floor.windows` streams a
table of any length for ``fedmeta predict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fedmeta.common.data.connector.checks import check_time
from fedmeta.common.data.connector.loading import load_factory_table
from fedmeta.common.data.connector.readers import Table, read_table
from fedmeta.common.data.connector.report import DataProblem
from fedmeta.common.data.connector.schema import DataSchema
from fedmeta.common.meta.adaptation_recipe import MAX_FOLDS

__all__ = ["WindowTable", "Windows", "group_names", "read_window_table", "time_keys", "window_chunks", "window_slices"]


def window_slices(rows: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """The windows ``[len(ends), channels, length]`` of ``rows [n, channels]`` ending at the rows ``ends``
    (each window's rows are the ``length`` rows up to and including its end)."""
    index = ends[:, None] + np.arange(1 - length, 1)
    return np.ascontiguousarray(rows[index].transpose(0, 2, 1))


def window_chunks(rows: np.ndarray, ends: np.ndarray, length: int, size: int) -> Iterator[np.ndarray]:
    """`window_slices` of ``ends`` in chunks of ``size`` windows, so that only one chunk is ever built."""
    for start in range(0, len(ends), size):
        yield window_slices(rows, ends[start:start + size], length)


def group_names(column: pd.Series) -> np.ndarray:
    """Group cells as text without surrounding spaces (as `validate_table` checks them)."""
    return column.astype("string").fillna("").str.strip().to_numpy(dtype=object)


def time_keys(table: Table, position: int, name: str) -> tuple[np.ndarray, str]:
    """Sortable times of a column (numbers, or ISO 8601 dates as UTC nanoseconds) read as `validate_table`
    reads them (`check_time`), and which of the two they are."""
    problems: list[DataProblem] = []
    key = check_time(table, position, name, problems)
    if key is None:
        raise ValueError("; ".join(problem.message for problem in problems))
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
        """What cross-validation holds out whole (`common.meta.adaptation_recipe.support_folds`): with two groups
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
    rows = load_factory_table(path, dataclasses.replace(schema, time_column=None, window=None, extra_columns="ignore"),
                              dtype=torch.float64)
    problems: list[DataProblem] = []
    table = read_table(path, schema, problems)
    if table is None or table.frame is None or problems or len(table.frame) != len(rows.y):
        raise ValueError(f"{path}: the group and time columns could not be read again: "
                         + ("; ".join(p.message for p in problems) or "the file changed while it was read"))
    names = group_names(table.frame[table.names.index(group)])
    times, _ = time_keys(table, table.names.index(time), time)
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
