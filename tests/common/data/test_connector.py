"""Tests for `common.data.connector`: factory tables load into FactoryData, and every data problem is named clearly."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings

import pytest
import torch

from fedmeta.common.data.connector import (
    DataSchema,
    DataValidationError,
    SchemaError,
    load_factory_table,
    validate_table,
)

REGRESSION = DataSchema(features=("temp", "pressure"), target="quality", task="regression")
CLASSIFICATION = DataSchema(
    features=("vibration", "current"), target="fault", task="classification", classes=("ok", "bearing", "belt")
)


def write(tmp_path, text: str, name: str = "factory.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path, schema, **kwargs) -> str:
    """The message of the DataValidationError that loading raises (and check its exact type)."""
    with pytest.raises(DataValidationError) as caught:
        load_factory_table(path, schema, **kwargs)
    assert type(caught.value) is DataValidationError
    return str(caught.value)


def kinds(path, schema, **kwargs) -> list[str]:
    return [p.kind for p in validate_table(path, schema, **kwargs).problems]


# --------------------------------------------------------------------------- good tables


def test_good_csv_loads_features_in_schema_order_as_float32(tmp_path):
    path = write(tmp_path, "pressure,quality,temp\n1.5,0.25,20\n2.5,0.5,21\n3.5,0.75,22\n")
    data = load_factory_table(path, REGRESSION)
    assert data.name == "factory"
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.float32
    assert data.x.shape == (3, 2)
    torch.testing.assert_close(data.x, torch.tensor([[20.0, 1.5], [21.0, 2.5], [22.0, 3.5]]))
    torch.testing.assert_close(data.y, torch.tensor([0.25, 0.5, 0.75]))


def test_semicolon_decimal_comma_csv_loads_the_same_values(tmp_path):
    comma = DataSchema(features=("temp", "pressure"), target="quality", task="regression", delimiter=";", decimal=",")
    dot = write(tmp_path, "temp,pressure,quality\n20.5,1.5,-0.25\n21,2.5,1e-3\n", "dot.csv")
    european = write(tmp_path, "temp;pressure;quality\n20,5;1,5;-0,25\n21;2,5;1e-3\n", "comma.csv")
    a, b = load_factory_table(dot, REGRESSION), load_factory_table(european, comma, name="plant-7")
    assert b.name == "plant-7"
    torch.testing.assert_close(a.x, b.x)
    torch.testing.assert_close(a.y, b.y)


def test_classification_labels_follow_the_schema_class_order(tmp_path):
    path = write(tmp_path, "fault,vibration,current\nbelt,1,2\nok,3,4\nbearing,5,6\nok,7,8\n")
    data = load_factory_table(path, CLASSIFICATION)
    assert data.y.dtype == torch.int64
    assert data.y.tolist() == [2, 0, 1, 0]  # ok=0, bearing=1, belt=2 as the schema lists them
    report = validate_table(path, CLASSIFICATION)
    assert report.class_counts == {"ok": 2, "bearing": 1, "belt": 1}


def test_labels_without_schema_classes_are_sorted_numerically_when_numbers(tmp_path):
    schema = DataSchema(features=("v",), target="fault", task="classification")
    path = write(tmp_path, "v,fault\n1,10\n2,2\n3,1\n4,2\n")
    assert load_factory_table(path, schema).y.tolist() == [2, 1, 0, 1]  # 1 < 2 < 10, not "1" < "10" < "2"


def test_rows_are_ordered_by_the_time_column(tmp_path):
    schema = DataSchema(features=("v",), target="y", task="regression", time_column="t", id_column="id")
    path = write(tmp_path, "id,t,v,y\na,2024-01-03 08:00,3,0.3\nb,2024-01-01T08:00,1,0.1\nc,2024-01-02,2,0.2\n")
    data = load_factory_table(path, schema)
    assert data.x[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_excel_utf8_bom_blank_lines_and_padded_cells_are_accepted(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftemp , pressure,quality\r\n 20 ,1,0.5\r\n\r\n21, 2 ,0.6\r\n".encode())
    data = load_factory_table(path, REGRESSION)
    assert data.x.tolist() == [[20.0, 1.0], [21.0, 2.0]]


def test_extra_columns_are_skipped_when_the_schema_says_ignore(tmp_path):
    path = write(tmp_path, ",temp,pressure,quality,operator\n0,20,1,0.5,anna\n")
    schema = dataclasses.replace(REGRESSION, extra_columns="ignore")
    assert load_factory_table(path, schema).x.shape == (1, 2)
    assert validate_table(path, schema).ignored_columns == ("operator", "(unnamed column 1)")


def test_parquet_round_trip_matches_the_csv(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    frame = pd.DataFrame({"vibration": [0.1, 0.2, 0.3], "current": [1, 2, 3], "fault": ["belt", "ok", "ok"]})
    frame.to_parquet(tmp_path / "factory.parquet")
    frame.to_csv(tmp_path / "factory.csv", index=False)
    from_parquet = load_factory_table(tmp_path / "factory.parquet", CLASSIFICATION)
    from_csv = load_factory_table(tmp_path / "factory.csv", CLASSIFICATION)
    torch.testing.assert_close(from_parquet.x, from_csv.x)
    assert from_parquet.y.tolist() == from_csv.y.tolist() == [2, 0, 0]


def test_parquet_problems_name_rows_without_file_lines(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    pd.DataFrame({"temp": ["1", "x"], "pressure": [1.0, None], "quality": [0.1, 0.2]}).to_parquet(tmp_path / "f.pq")
    message = problems_of(tmp_path / "f.pq", REGRESSION)
    assert "feature column 'temp' has 1 non-numeric value: row 2 'x'" in message
    assert "feature column 'pressure' has 1 missing value (empty or NaN): row 2" in message


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    path = tmp_path / "factory.parquet"
    path.write_bytes(b"PAR1")
    assert "needs the pyarrow package: pip install pyarrow" in problems_of(path, REGRESSION)


# --------------------------------------------------------------------------- each problem


def test_missing_file_is_named_with_a_close_match(tmp_path):
    write(tmp_path, "temp,pressure,quality\n1,2,3\n", "line_a.csv")
    message = problems_of(tmp_path / "line-a.csv", REGRESSION)
    assert "does not exist" in message and "did you mean 'line_a.csv'?" in message


def test_malformed_csv_names_each_bad_line_and_its_field_count(tmp_path):
    path = write(tmp_path, "temp,pressure,quality\n1,2,3\n4,5,6\n7,8\n1,2,3\n1,2,3\n5,6,7,8\n")
    message = problems_of(path, REGRESSION)
    assert "line 4 (row 3) has 2 fields, expected 3 like the header" in message
    assert "line 7 (row 6) has 4 fields, expected 3" in message


def test_unclosed_quote_is_explained(tmp_path):
    path = write(tmp_path, 'temp,pressure,quality\n1,2,3\n4,"5,6\n7,8,9\n')
    assert 'quote (") opened on line 3 is never closed' in problems_of(path, REGRESSION)


def test_wrong_delimiter_is_detected_from_the_header(tmp_path):
    path = write(tmp_path, "temp;pressure;quality\n1;2;3\n")
    assert 'set "delimiter": ";" in the schema' in problems_of(path, REGRESSION)


def test_non_utf8_file_is_explained(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("temp,pressure,quality\n1,2,3\n# Prüfstand\n".encode("latin-1"))
    assert "not UTF-8 text (byte 0xfc on line 3)" in problems_of(path, REGRESSION)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "the file is empty: it has no header line"), ("temp,pressure,quality\n\n", "header but no data rows")],
)
def test_empty_table_is_reported(tmp_path, text, expected):
    assert expected in problems_of(write(tmp_path, text), REGRESSION)


def test_missing_column_suggests_the_close_name(tmp_path):
    path = write(tmp_path, "Temp,presure,quality\n1,2,3\n")
    message = problems_of(path, REGRESSION)
    assert "feature column 'temp' is missing (did you mean 'Temp'?)" in message
    assert "feature column 'pressure' is missing (did you mean 'presure'?)" in message


def test_extra_and_unnamed_columns_are_warnings_by_default_and_problems_when_the_schema_says_error(tmp_path):
    path = write(tmp_path, ",temp,pressure,quality,operator\n0,20,1,0.5,anna\n")
    report = validate_table(path, REGRESSION)
    assert report.ok and load_factory_table(path, REGRESSION).x.tolist() == [[20.0, 1.0]]
    assert report.warnings == ["the file has 1 column the schema does not name: 'operator': not read",
                               "column 1 of the header has no name (an index written by pandas' to_csv? save with "
                               "index=False): not read"]
    message = problems_of(path, dataclasses.replace(REGRESSION, extra_columns="error"))
    assert "column the schema does not name: 'operator'; add them to 'features'" in message
    assert "column 1 of the header has no name" in message


def test_non_numeric_cells_are_listed_with_data_row_and_file_line(tmp_path):
    rows = ["20,1,0.1", "x1,1,0.1", "20,1,0.1", "n.a.,1,0.1", "1,5,1,0.1"]
    path = write(tmp_path, "temp,pressure,quality\n" + "\n".join(rows).replace("1,5,1", '"1,5",1') + "\n")
    message = problems_of(path, REGRESSION)
    assert "feature column 'temp' has 3 non-numeric values" in message
    assert "row 2 (line 3) 'x1', row 4 (line 5) 'n.a.', row 5 (line 6) '1,5'" in message
    assert '"decimal": ","' in message  # the '1,5' cell earns a decimal-comma hint


def test_only_the_first_five_offending_rows_are_listed(tmp_path):
    path = write(tmp_path, "temp,pressure,quality\n" + "bad,1,1\n" * 8)
    message = problems_of(path, REGRESSION)
    assert "8 non-numeric values" in message and "row 5 (line 6) 'bad' and 3 more" in message
    assert "row 6 (line 7)" not in message


def test_nan_and_inf_are_counted_per_column(tmp_path):
    path = write(tmp_path, "temp,pressure,quality\n,1,0.1\nNaN,inf,0.2\n3,-Infinity,nan\n4,1,0.4\n")
    message = problems_of(path, REGRESSION)
    assert "feature column 'temp' has 2 missing values (empty or NaN): row 1 (line 2), row 2 (line 3)" in message
    assert "feature column 'pressure' has 2 infinite values: row 2 (line 3) 'inf', row 3 (line 4) '-Infinity'" in (
        message
    )
    assert "target column 'quality' has 1 missing value" in message
    stats = validate_table(path, REGRESSION).column_stats["temp"]
    assert (stats.missing, stats.min, stats.max, stats.mean) == (2, 3.0, 4.0, 3.5)


def test_a_column_near_the_largest_float_is_out_of_range_with_a_finite_mean(tmp_path):
    """Found by tests/fuzz: two cells of 1e308 summed past float64 (a numpy overflow warning, a mean of inf)."""
    path = write(tmp_path, "temp,pressure,quality\n1e308,1,0.1\n1e308,2,0.2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate_table(path, REGRESSION)
    assert report.column_stats["temp"].mean == 1e308
    assert [p.kind for p in report.problems] == ["out_of_range"]


def test_too_few_rows_for_the_minimum_or_for_k_shots(tmp_path):
    path = write(tmp_path, "temp,pressure,quality\n1,2,3\n4,5,6\n")
    assert "the table has 2 data rows; at least 10 are needed" in problems_of(path, REGRESSION, min_rows=10)
    assert "at least 6 are needed (5 support + 1 query for 5-shot tasks)" in problems_of(path, REGRESSION, shots=5)


def test_rare_class_for_k_shots_reports_rows_per_class(tmp_path):
    labels = ["ok"] * 6 + ["bearing"] * 6 + ["belt"] * 2
    path = write(tmp_path, "vibration,current,fault\n" + "".join(f"1,2,{label}\n" for label in labels))
    message = problems_of(path, CLASSIFICATION, shots=5)
    assert "too few rows of class 'belt' (2) for 5-shot tasks: each class needs at least 6" in message
    assert "rows per class: 'ok': 6, 'bearing': 6, 'belt': 2" in message
    assert kinds(path, CLASSIFICATION, shots=4, ways=3) == ["rare_class", "too_few_classes"]
    assert "only 2 classes with at least 5 rows in target column 'fault'; 3-way tasks need 3" in problems_of(
        path, CLASSIFICATION, shots=4, ways=3
    )


def test_unknown_and_empty_labels_are_reported(tmp_path):
    path = write(tmp_path, "vibration,current,fault\n1,2,ok\n1,2,Belt\n1,2,\n1,2,motor\n")
    message = problems_of(path, CLASSIFICATION)
    assert "label 'Belt' (1 row: row 2 (line 3)) that is not one of the schema's classes" in message
    assert "did you mean 'belt'?" in message
    assert "label 'motor'" in message
    assert "target column 'fault' has 1 empty label: row 3 (line 4)" in message


def test_id_and_time_columns_are_checked(tmp_path):
    schema = DataSchema(features=("v",), target="y", task="regression", id_column="id", time_column="t")
    path = write(tmp_path, "id,t,v,y\nA,2024-01-01,1,1\nA,05.01.2024,2,2\n,2024-01-03,3,3\n")
    message = problems_of(path, schema)
    assert "ID column 'id' repeats IDs in 2 rows: row 1 (line 2) 'A', row 2 (line 3) 'A'" in message
    assert "ID column 'id' has 1 empty cell: row 3 (line 4)" in message
    assert "neither numbers nor ISO 8601 dates/times" in message and "'05.01.2024'" in message


def test_all_problems_of_a_broken_table_are_reported_together(tmp_path):
    schema = DataSchema(
        features=("temp", "pressure", "speed"), target="fault", task="classification", classes=("a", "b"),
        extra_columns="error",
    )
    path = write(tmp_path, "temp,pressure,fault,notes\nhot,1,a,x\n2,,c,y\n3,4,a,z\n5,6,7,8,9\n")
    with pytest.raises(DataValidationError) as caught:
        load_factory_table(path, schema, shots=2)
    found = [p.kind for p in caught.value.problems]
    assert found == [
        "malformed",
        "missing_column",
        "extra_column",
        "non_numeric",
        "missing_values",
        "unknown_label",
        "rare_class",
    ]
    lines = str(caught.value).splitlines()
    assert lines[0] == f"factory data {str(path)!r} has 7 problems:"
    assert len(lines) == 8 and all(line.startswith("- ") for line in lines[1:])


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02PAR1garbage",
        b"PAR1 not really parquet",
        b'temp,pressure,quality\n1,"2"x,3\n',
        b"temp,pressure,quality\n" + b"1," * 100 + b"\n",
        b"\xff\xfe\x00t\x00e",
    ],
)
def test_no_pandas_or_parser_exception_escapes(tmp_path, content):
    path = tmp_path / "weird.csv"
    path.write_bytes(content)
    with pytest.raises(DataValidationError) as caught:
        load_factory_table(path, REGRESSION)
    assert type(caught.value) is DataValidationError


# --------------------------------------------------------------------------- schema


def test_schema_from_json_reads_every_field(tmp_path):
    path = tmp_path / "schema.json"
    spec = {
        "features": ["a", "b"],
        "target": "y",
        "task": "classification",
        "classes": [0, 1, 2],
        "delimiter": ";",
        "decimal": ",",
        "time_column": "t",
        "extra_columns": "ignore",
    }
    path.write_text(json.dumps(spec))
    schema = DataSchema.from_json(path)
    assert (
        schema.features == ("a", "b") and schema.classes == ("0", "1", "2") and schema.columns == ("a", "b", "y", "t")
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"feature": ["a"], "target": "y", "task": "regression"}, "unknown key 'feature' (did you mean 'features'?)"),
        ({"features": ["a"], "task": "regression"}, "missing required key 'target'"),
        ({"features": ["a"], "target": "y", "task": "regresion"}, "'task' must be one of 'regression'"),
        ({"features": "a,b", "target": "y", "task": "regression"}, "'features' must be a list of column names"),
        ({"features": [], "target": "y", "task": "regression"}, "'features' is empty"),
        ({"features": ["a", "y"], "target": "y", "task": "regression"}, "the target 'y' is also listed in 'features'"),
        ({"features": ["a"], "target": "y", "task": "regression", "delimiter": ",", "decimal": ","}, "both ','"),
        ({"features": ["a"], "target": "y", "task": "regression", "classes": ["p", "q"]}, "only applies to"),
        ({"features": ["a"], "target": "y", "task": "classification", "classes": ["p", "p"]}, "more than once"),
        (["a", "b"], "must be a JSON object"),
    ],
)
def test_bad_schema_is_refused_with_a_clear_message(spec, expected):
    with pytest.raises(SchemaError) as caught:
        DataSchema.from_mapping(spec)
    assert isinstance(caught.value, ValueError)
    assert expected in str(caught.value)


def test_all_schema_problems_are_listed_together():
    with pytest.raises(SchemaError) as caught:
        DataSchema.from_mapping({"features": "a", "target": "a", "task": "x", "delim": ";"})
    assert len(caught.value.problems) == 3
    assert str(caught.value).count("\n- ") == 3


@pytest.mark.parametrize(("text", "expected"), [(None, "file not found"), ('{"features": [', "is not valid JSON")])
def test_unreadable_schema_file_is_refused(tmp_path, text, expected):
    path = tmp_path / "schema.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SchemaError, match=expected):
        DataSchema.from_json(path)
