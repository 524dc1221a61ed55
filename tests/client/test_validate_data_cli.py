"""`fedmeta validate-data`: a summary and exit 0 for a usable table, every problem and exit 1 otherwise."""

from __future__ import annotations

import json

from tests.support.cli import run_fedmeta


def write(tmp_path, text: str, name: str = "factory.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def write_schema(tmp_path, schema: dict) -> str:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    return str(path)


def test_cli_prints_a_summary_and_exits_0_for_a_good_table(tmp_path):
    schema = write_schema(tmp_path, {"features": ["vibration", "current"], "target": "fault", "task": "classification"})
    labels = ["ok"] * 3 + ["belt"] * 3
    data = write(tmp_path, "vibration,current,fault\n" + "".join(f"{i},2,{lab}\n" for i, lab in enumerate(labels)))
    code, output = run_fedmeta("validate-data", str(data), "--schema", schema, "--shots", "2", "--ways", "2")
    assert code == 0, output
    assert "OK" in output and "6 rows" in output
    for expected in ("vibration", "feature", "2.5", "belt", "ok"):
        assert expected in output


def test_cli_lists_problems_and_exits_1_for_a_bad_table(tmp_path):
    schema = write_schema(tmp_path, {"features": ["temp", "pressure"], "target": "quality", "task": "regression"})
    data = write(tmp_path, "temp,presure,quality\nhot,1,0.1\n")
    code, output = run_fedmeta("validate-data", str(data), "--schema", schema)
    assert code == 1, output
    assert "2 problems" in output
    assert "warning: the file has 1 column the schema does not name: 'presure': not read" in output
    assert "feature column 'pressure' is missing (did you mean 'presure'?)" in output
    assert "feature column 'temp' has 1 non-numeric value: row 1 (line 2) 'hot'" in output
    assert "Traceback" not in output


def test_cli_exits_2_for_a_bad_schema_file(tmp_path):
    schema = write_schema(tmp_path, {"features": ["temp"], "target": "quality", "task": "regresion"})
    data = write(tmp_path, "temp,quality\n1,2\n")
    code, output = run_fedmeta("validate-data", str(data), "--schema", schema)
    assert code == 2, output
    assert "schema error" in output and "'regresion'" in output
