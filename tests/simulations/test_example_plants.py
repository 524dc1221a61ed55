"""``fedmeta example-plants`` writes the factory operator's walkthrough tables: readable by the schema it writes, the
production rows without their target, bounds inside the line's range; an existing folder is refused."""

from __future__ import annotations

import json

import pandas as pd

from fedmeta.simulations.example_plants import ADAPT_ROWS, FEATURES, HELD_OUT, WEEK_ROWS
from tests.support.cli import run_fedmeta


def test_the_example_holds_the_walkthroughs_tables(tmp_path):
    out = tmp_path / "floor"
    code, output = run_fedmeta("example-plants", "--out", str(out))
    assert code == 0, output
    plants = sorted(path.stem for path in (out / "plants").glob("*.csv"))
    assert len(plants) == 12 and set(HELD_OUT) <= set(plants)
    line = pd.read_csv(out / "plants" / "line-7.csv")
    week, production = pd.read_csv(out / "labelled-this-week.csv"), pd.read_csv(out / "production.csv")
    assert list(week["batch"]) == list(line["batch"][ADAPT_ROWS:ADAPT_ROWS + WEEK_ROWS])
    assert "quality" not in production and list(production["batch"]) == list(line["batch"][ADAPT_ROWS + WEEK_ROWS:])
    schema = json.loads((out / "schema.json").read_text())
    assert schema["features"] == FEATURES and schema["id_column"] == "batch"
    code, output = run_fedmeta("validate-data", str(out / "plants" / "line-7.csv"), "--schema",
                               str(out / "schema.json"))
    assert code == 0, output
    bounds = json.loads((out / "bounds.json").read_text())
    for name, (low, high) in bounds["controllable"].items():
        assert line[name].min() <= low < high <= line[name].max()


def test_an_existing_folder_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "floor"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, output = run_fedmeta("example-plants", "--out", str(out))
    assert code == 1 and "exists; not writing the example plants over it" in output
    assert [path.name for path in out.iterdir()] == ["mine.txt"]
