"""``fedmeta example-plants``: the example tables the factory-floor walkthrough (docs/factory-operator.md) runs on.

Twelve plant tables in each plant's own units (a scale and an offset per feature), drawn from a
synthetic quality family whose plants share a nonlinear response to their process parameters
(``min_nonlinearity=1``): ten train, two new lines (``line-7``, ``line-8``) are held out. Beside
them: the schema, line 7's later production rows without their quality (to predict), a week of
its labelled rows (to update with) and process bounds for two of its parameters (to optimize).
Only synthetic data: nothing is read or downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from fedmeta.common.data.synthetic import FamilyConfig, make_family
from fedmeta.common.runtime.console import exit_on_errors

__all__ = ["ADAPT_ROWS", "FEATURES", "HELD_OUT", "WEEK_ROWS", "example_plants", "write_example_plants"]

FEATURES = [f"x{i}" for i in range(6)]
TARGET = "quality"
HELD_OUT = ("line-7", "line-8")
ADAPT_ROWS = 20  # line 7's first rows: what it labels before adapting
WEEK_ROWS = 50  # the labelled rows after them: a week of feedback for `fedmeta update`
FAMILY = FamilyConfig("quality", num_factories=10, num_held_out=len(HELD_OUT), min_samples=120, max_samples=300,
                      seed=3, min_nonlinearity=1.0)


def write_example_plants(out: Path) -> list[Path]:
    """Write the example under ``out`` (which must not exist); the files written."""
    if out.exists():
        raise FileExistsError(f"{out} exists; not writing the example plants over it")
    family = make_family(FAMILY)
    units = np.random.default_rng(0)
    named = [(f"plant-{i:02d}", data) for i, data in enumerate(family.train)]
    named += list(zip(HELD_OUT, family.held_out, strict=True))
    (out / "plants").mkdir(parents=True)
    written = []
    tables = {}
    for name, data in named:
        x = units.uniform(0.5, 20.0, len(FEATURES)) * data.x.numpy() + units.uniform(-50, 50, len(FEATURES))
        tables[name] = pd.DataFrame(x, columns=FEATURES).assign(**{TARGET: data.y.numpy()},
                                                                batch=range(1, len(data.y) + 1))
        written.append(out / "plants" / f"{name}.csv")
        tables[name].to_csv(written[-1], index=False)
    line = tables[HELD_OUT[0]]
    files = {
        "schema.json": json.dumps({"features": FEATURES, "target": TARGET, "task": "regression",
                                   "id_column": "batch"}, indent=2),
        "labelled-this-week.csv": line.iloc[ADAPT_ROWS:ADAPT_ROWS + WEEK_ROWS].to_csv(index=False),
        "production.csv": line.iloc[ADAPT_ROWS + WEEK_ROWS:].drop(columns=[TARGET]).to_csv(index=False),
        "bounds.json": json.dumps(_bounds(line), indent=2),
    }
    for name, text in files.items():
        written.append(out / name)
        written[-1].write_text(text, encoding="utf-8")
    return written


def _bounds(line: pd.DataFrame) -> dict[str, object]:
    """x0 and x1 controllable within the range line 7 ran at (5th to 95th percentile), the others held
    at their medians; the goal: the highest predicted quality."""
    controllable = {name: [round(float(line[name].quantile(q)), 3) for q in (0.05, 0.95)] for name in FEATURES[:2]}
    fixed = {name: round(float(line[name].median()), 3) for name in FEATURES[2:]}
    return {"controllable": controllable, "fixed": fixed, "goal": "maximize"}


def example_plants(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the example into (must not exist).")] = Path(
        "floor"),
) -> None:
    """Write example plant tables, a schema, production rows, labelled rows and process bounds for the
    factory-floor walkthrough of docs/factory-operator.md (synthetic; the plants share a nonlinear response)."""
    console = Console()
    with exit_on_errors(console, FileExistsError):
        written = write_example_plants(out)
    plants = sum(path.parent.name == "plants" for path in written)
    console.print(f"wrote {plants} plant tables under {out / 'plants'} ({', '.join(HELD_OUT)} held out), "
                  "schema.json, labelled-this-week.csv, production.csv and bounds.json", soft_wrap=True)
