"""A factory's schema file, whatever it holds (any JSON, any encoding, damaged bytes), is read into a
`DataSchema` or refused with a `SchemaError` that names the file and lists its problems."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.common.data.connector import DataSchema, SchemaError
from tests.fuzz.strategies import FUZZ, changed_document, json_bytes, names_the_problem, scratch_folder

REGRESSION = {"features": ["temperature", "pressure"], "target": "rul", "task": "regression", "id_column": "id",
              "time_column": "cycle", "group_column": "unit", "delimiter": ";", "decimal": ",",
              "extra_columns": "error", "window": 3}
CLASSIFICATION = {"features": ["rms", "kurtosis"], "target": "fault", "task": "classification",
                  "classes": ["ok", "inner", 3], "extra_columns": "ignore"}
KEYS = st.sampled_from([f.name for f in fields(DataSchema)]) | st.text(max_size=12)

_FOLDER = scratch_folder("fuzz-schema-")
PATH = Path(_FOLDER.name) / "schema.json"


@FUZZ
@given(json_bytes(changed_document(REGRESSION, KEYS) | changed_document(CLASSIFICATION, KEYS)))
def test_a_schema_file_is_read_or_refused_by_name(content: bytes) -> None:
    PATH.write_bytes(content)
    try:
        schema = DataSchema.from_json(PATH)
    except SchemaError as error:
        event("refused")
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
        names_the_problem(error, f"schema {str(PATH)!r}")
    else:
        event("accepted")
        assert schema.features and schema.target not in schema.features
