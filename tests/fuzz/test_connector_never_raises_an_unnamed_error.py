"""A factory's CSV table, however it is written (any encoding, byte-order mark or bytes of none, any delimiter and
line ending, stray quotes, huge and tiny numbers, NaN and the infinities, empty, repeated and missing columns,
rows too short or too long), is loaded into finite `FactoryData` of the schema's shape or refused with a
`DataValidationError` listing every problem: no pandas, csv or encoding error reaches the factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.common.data.connector import DataSchema, DataValidationError, load_factory_table
from tests.fuzz.strategies import FUZZ, encode, names_the_problem, scratch_folder

SCHEMAS = (
    DataSchema(("a", "b"), "y", "regression"),
    DataSchema(("a", "b"), "y", "regression", delimiter=";", decimal=","),
    DataSchema(("a",), "y", "classification", id_column="id", extra_columns="error"),
    DataSchema(("a", "b"), "y", "classification", classes=("0", "1", "x"), time_column="id", delimiter="\t"),
)
# Header names besides the schema's columns: another case, spaces around, empty, one no schema names, Excel's hint.
ODD_NAMES = st.sampled_from(["A", " b ", "", "extra", "sep=;", "y"])
# Cells, written with "." for the decimal mark (the schema's replaces it): plain numbers, the ones that break
# parsers (huge, tiny, past float32 or float64, NaN and infinite spellings, missing, a decimal comma, hex, digits of
# another script, a date) and odd text (quotes, delimiters, line breaks, NUL, a byte-order mark). A row's cells are
# picked from these by one draw of bytes, a draw per cell being most of an example's time.
PLAIN = ("1", "-2.5", "0", "3", "17.25", "-0.001", "42", "0.5", "100", "-3", "2", "1e3", "+4", ".5")
BREAKING = ("1e308", "1e309", "-1e400", "5e-324", "3.5e38", "-0", "nan", "NaN", "-inf", "inf", "Infinity", "", " ",
            "n/a", "None", "1,5", "1.5.3", "0x10", "1_000", "\u0661\u0662", "2024-01-05", "1e", "--1")
ODD = ("abc", '"1"', '"a,b"', '"', 'x"y', '"\n"', "2024-01-05T14:30:00Z", "\x00", "\ufeff", "x", "1;2", "\t", "a|b")
POOLS = {mark: tuple(cell.replace(".", mark) for cell in PLAIN * 6 + BREAKING + ODD) for mark in (".", ",")}
PLAIN_POOLS = {mark: tuple(cell.replace(".", mark) for cell in PLAIN) for mark in (".", ",")}  # a table in four
# Now and then one cell of a table is any of these instead.
FREE_CELLS = st.floats().map(repr) | st.integers(-(10**30), 10**30).map(str) | st.text(max_size=4)


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, DataSchema]:
    """A table's file and its schema: the schema's columns in any order, some repeated, left out or added, and up
    to 8 rows, most of them as wide as the header, of the cells above in the schema's decimal mark, joined by the
    schema's delimiter or, now and then, another; in any encoding, perhaps damaged (`encode`)."""
    schema = draw(st.sampled_from(SCHEMAS))
    header = list(draw(st.permutations(schema.columns)))
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2)))):
        change = draw(st.sampled_from(("repeat", "drop", "add")))
        if change == "add" or not header:
            header.insert(draw(st.integers(0, len(header))), draw(ODD_NAMES))
        elif change == "repeat":
            header.append(draw(st.sampled_from(tuple(header))))
        else:
            header.pop(draw(st.integers(0, len(header) - 1)))
    widths = (len(header),) * 6 + (max(0, len(header) - 1), len(header) + 1)
    pool = (PLAIN_POOLS if draw(st.integers(0, 3)) == 0 else POOLS)[schema.decimal]
    rows = [[pool[byte % len(pool)] for byte in draw(st.binary(min_size=width, max_size=width))]
            for width in (draw(st.sampled_from(widths)) for _ in range(draw(st.integers(0, 8))))]
    filled = [row for row in rows if row]
    if filled and draw(st.booleans()):
        row = draw(st.sampled_from(tuple(range(len(filled)))))
        filled[row][draw(st.integers(0, len(filled[row]) - 1))] = draw(FREE_CELLS)
    delimiter = draw(st.sampled_from((schema.delimiter,) * 7 + (",", ";", "\t", "|")))
    end = draw(st.sampled_from(("\n", "\r\n", "\r")))
    return encode(draw, "".join(delimiter.join(line) + end for line in [header, *rows])), schema


_FOLDER = scratch_folder("fuzz-connector-")
PATH = Path(_FOLDER.name) / "plant.csv"


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's overflow and invalid-value warnings: wrong numbers
@FUZZ
@given(tables())
def test_a_table_is_loaded_or_refused_with_every_problem_named(table: tuple[bytes, DataSchema]) -> None:
    content, schema = table
    PATH.write_bytes(content)
    try:
        loaded = load_factory_table(PATH, schema)
    except DataValidationError as error:
        event("refused")
        assert type(error) is DataValidationError and error.problems
        names_the_problem(error, f"factory data {str(PATH)!r}", *(problem.message for problem in error.problems))
    else:
        event("accepted")
        assert loaded.x.shape == (len(loaded.y), len(schema.features)) and len(loaded.y) >= 1
        assert bool(torch.isfinite(loaded.x).all())
        if schema.task == "regression":
            assert bool(torch.isfinite(loaded.y).all())
