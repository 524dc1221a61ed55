"""A CSV file as pieces of whole rows, and new cells appended to its rows exactly as they were written.

`fedmeta predict` carries every input column through to its output. Parsing the carried columns
and formatting them again cost more than the prediction itself (measured: half of predict's time
on a 1,000,000-row table) and rewrote them (numbers came back quoted as text), so a CSV is kept
as bytes: only the feature columns are parsed, and each row gets the predicted cells appended
after its last byte. Memory stays bounded by the piece size whatever the table's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["BLOCK_BYTES", "RowAlignmentError", "appended", "csv_cell", "csv_pieces", "header_line", "row_ends"]

BLOCK_BYTES = 8 << 20  # CSV bytes per piece


class RowAlignmentError(ValueError):
    """The piece's line breaks do not match the rows its parser found."""


def header_line(path: Path) -> bytes:
    """The file's first line, without its line break."""
    with path.open("rb") as handle:
        return handle.readline().rstrip(b"\r\n")


def csv_pieces(path: Path) -> Iterator[bytes]:
    """The bytes below the header in pieces of about `BLOCK_BYTES` that end at a line break outside
    quotes, so a quoted cell that spans lines is never cut; every piece ends with a line break (one
    is added after the last row where the file has none).
    (pyarrow's own streaming reader reads ahead without bound: 300 MB of a 431 MB table held at
    once, measured.)"""
    with path.open("rb") as handle:
        handle.readline()
        rest = b""
        while True:
            data = rest + handle.read(BLOCK_BYTES)
            if len(data) <= len(rest):  # end of file: what is left is the last piece
                if data:
                    yield data if data.endswith(b"\n") else data + b"\n"
                return
            cut = _last_row_end(data)
            if cut == 0:  # no whole row yet: read on
                rest = data
                continue
            yield data[:cut]
            rest = data[cut:]


def _last_row_end(data: bytes) -> int:
    """Just past the last line break of ``data`` that lies outside quotes (an even count of quote
    characters before it); 0 if there is none. Counted back from the end: one `bytes.count` pass."""
    end = data.rfind(b"\n")
    if b'"' not in data:
        return end + 1
    quotes = data.count(b'"', 0, max(end, 0))
    while end >= 0 and quotes % 2:
        previous = data.rfind(b"\n", 0, end)
        quotes -= data.count(b'"', previous + 1, end)
        end = previous
    return end + 1


def row_ends(piece: bytes, rows: int) -> np.ndarray:
    """The position of the line break that ends each of the piece's ``rows`` rows (as its parser
    counted them, skipping blank lines). Every line break ends a row unless a quoted cell holds one
    or a line is blank; only then is the quote parity of every byte computed."""
    raw = np.frombuffer(piece, dtype=np.uint8)
    breaks = np.flatnonzero(raw == ord("\n"))
    if breaks.size == rows:
        return breaks
    inside = np.bitwise_xor.accumulate((raw == ord('"')).view(np.uint8))  # 1 inside quotes
    breaks = np.flatnonzero((raw == ord("\n")) & (inside == 0))
    starts = np.concatenate([[0], breaks[:-1] + 1])
    content = breaks - starts - (raw[np.maximum(breaks - 1, 0)] == ord("\r"))
    ends = breaks[content > 0]
    if ends.size != rows:
        raise RowAlignmentError(f"{ends.size} line(s) hold data but {rows} row(s) were parsed")
    return ends


def csv_cell(text: str, delimiter: str) -> str:
    """``text`` as one CSV cell: quoted where it holds the delimiter, a quote or a line break."""
    if any(mark in text for mark in (delimiter, '"', "\n", "\r")):
        return '"' + text.replace('"', '""') + '"'
    return text


def appended(piece: bytes, ends: np.ndarray, cells: list[pa.Array], delimiter: str) -> pa.Buffer:
    """``piece`` with, at the end of each row (before its line break, ``\\r\\n`` or ``\\n``), the
    delimiter and that row's cell of each of ``cells`` (arrays of CSV text, one value per row), and
    ``\\n`` after them. Blank lines are kept where they were."""
    offsets = np.concatenate([[0], ends + 1]).astype(np.int32)
    lines = pa.Array.from_buffers(pa.binary(), ends.size, [None, pa.py_buffer(offsets), pa.py_buffer(piece)])
    cut = 1 + (np.frombuffer(piece, dtype=np.uint8)[np.maximum(ends - 1, 0)] == ord("\r"))
    content = pc.binary_slice(lines, 0, -1) if (cut == 1).all() else _without_line_breaks(lines, cut)
    last = pc.binary_join_element_wise(cells[-1].cast(pa.binary()), b"", b"\n")
    joined = pc.binary_join_element_wise(content, *[cell.cast(pa.binary()) for cell in cells[:-1]], last,
                                         delimiter.encode())
    tail = piece[int(offsets[-1]):]  # blank lines after the last row
    if not len(joined):
        return pa.py_buffer(tail)
    written = joined.buffers()[2][:int(np.frombuffer(joined.buffers()[1], dtype=np.int32)[len(joined)])]
    return pa.py_buffer(written.to_pybytes() + tail) if tail else written


def _without_line_breaks(lines: pa.Array, cut: np.ndarray) -> pa.Array:
    """Each line less its last ``cut`` bytes (2 for ``\\r\\n``, 1 for ``\\n``)."""
    return pc.if_else(pa.array(cut == 2), pc.binary_slice(lines, 0, -2), pc.binary_slice(lines, 0, -1))
