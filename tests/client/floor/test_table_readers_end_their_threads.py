"""A table read in blocks ends its reading thread when the read ends, however it ends: a reader left for the
garbage collector to finalise could be finalised inside another thread's start-up and deadlock it (CPython
3.11), which hung a prediction that followed a refused one in the same process."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import fedmeta.client.floor.csv_rows as csv_rows
import fedmeta.client.floor.table_blocks as table_blocks
from fedmeta.common.data.connector import DataSchema

SCHEMA = DataSchema(("a", "b"), "y", "regression")


def _reader_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("ThreadPoolExecutor")}


def _table(tmp_path, bad_row: int | None):
    rows = pd.DataFrame({"a": np.arange(400.0), "b": np.ones(400)}).astype(object)
    if bad_row is not None:
        rows.loc[bad_row, "b"] = "n/a"
    rows.to_csv(tmp_path / "plant.csv", index=False)
    return tmp_path / "plant.csv"


@pytest.mark.parametrize("bad_row", [None, 350], ids=["read-whole", "refused-mid-table"])
def test_reading_a_table_in_pieces_leaves_no_reading_thread_behind(tmp_path, monkeypatch, bad_row):
    monkeypatch.setattr(csv_rows, "BLOCK_BYTES", 256)  # many pieces, the bad cell in a late one
    path, before = _table(tmp_path, bad_row), _reader_threads()
    if bad_row is None:
        assert len(table_blocks.read_features(path, SCHEMA)) == 400
        assert _reader_threads() - before == set()
        return
    # The error is still held, as a command's runner holds it: its traceback keeps the reader's frame reachable,
    # so no garbage collection can end the thread for it.
    with pytest.raises(table_blocks.TableError, match="data row") as refused:
        table_blocks.read_features(path, SCHEMA)
    assert _reader_threads() - before == set(), refused.value


def test_a_caller_that_stops_early_and_closes_the_reader_ends_its_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_rows, "BLOCK_BYTES", 256)
    path, before = _table(tmp_path, None), _reader_threads()
    blocks = table_blocks.read_blocks(path, SCHEMA, ["a", "b"])
    next(blocks)
    assert len(_reader_threads() - before) == 1  # the next piece is being read ahead
    blocks.close()
    assert _reader_threads() - before == set()
