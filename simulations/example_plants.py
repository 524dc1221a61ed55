"""``fedmeta example-plants``: the example tables the factory-floor walkthrough (docs/factory-operator.md) runs on.

Twelve plant tables in each plant's own units (a scale and an offset per feature), drawn from a
synthetic quality family: ten train, two new lines (``line-7``, ``line-8``) are held out. Beside
them: the schema, line 7's later production rows without their quality (to predict), a week of
its labelled rows (to update with) and process bounds for two of its parameters (to optimize).
Only synthetic data: nothing is read or downloaded. The family (`FAMILIES`):

- ``nonlinear`` (default): the plants share a nonlinear response to their process parameters
  (``min_nonlinearity=1``): what a federation can learn and 20 rows cannot.
- ``linear``: each plant's quality is a line in its parameters (its own slopes around shared ones)
  plus a little noise: least squares on 20 rows is hard to beat.
- ``large-units`` and ``small-units``: the nonlinear family with the quality in units far from 1,
  about 1e6 ± 1e3 and 1e-3 ± 1e-5.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import click
import numpy as np
import pandas as pd
import typer
from rich.console import Console

from fedmeta.common.data.synthetic import FamilyConfig, make_family
from fedmeta.common.runtime.console import exit_on_errors
from fedmeta.common.validation import check_choice

__all__ = ["ADAPT_ROWS", "FAMILIES", "FEATURES", "HELD_OUT", "WEEK_ROWS", "example_plants", "write_example_plants"]

FEATURES = [f"x{i}" for i in range(6)]
TARGET = "quality"
HELD_OUT = ("line-7", "line-8")
ADAPT_ROWS = 20  # line 7's first rows: what it labels before adapting
WEEK_ROWS = 50  # the labelled rows after them: a week of feedback for `fedmeta update`
FAMILY = FamilyConfig("quality", num_factories=10, num_held_out=len(HELD_OUT), min_samples=120, max_samples=300,
                      seed=3, min_nonlinearity=1.0)


def _linear_quality(x: np.ndarray, plant: int) -> np.ndarray:
    """A line in the standardised parameters ``x``: slopes shared by the family, each plant's own around them."""
    shared = np.random.default_rng(1).normal(size=x.shape[1])
    own = np.random.default_rng(100 + plant)
    slopes = shared + 0.5 * own.normal(size=x.shape[1])
    return x @ slopes + own.normal() + 0.05 * own.normal(size=len(x))


# Family name -> the quality of plant i from its standardised parameters x and the nonlinear family's quality y.
FAMILIES: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "nonlinear": lambda x, y, plant: y,
    "linear": lambda x, y, plant: _linear_quality(x, plant),
    "large-units": lambda x, y, plant: 1e6 + 1e3 * y,
    "small-units": lambda x, y, plant: 1e-3 + 1e-5 * y,
}


def write_example_plants(out: Path, family: str = "nonlinear") -> list[Path]:
    """Write the example of ``family`` (`FAMILIES`) under ``out`` (which must not exist); the files written."""
    check_choice("family", family, tuple(FAMILIES))
    if out.exists():
        raise FileExistsError(f"{out} exists; not writing the example plants over it")
    plants = make_family(FAMILY)
    units = np.random.default_rng(0)
    named = [(f"plant-{i:02d}", data) for i, data in enumerate(plants.train)]
    named += list(zip(HELD_OUT, plants.held_out, strict=True))
    (out / "plants").mkdir(parents=True)
    written = []
    tables = {}
    for plant, (name, data) in enumerate(named):
        quality = FAMILIES[family](data.x.double().numpy(), data.y.double().numpy(), plant)
        x = units.uniform(0.5, 20.0, len(FEATURES)) * data.x.numpy() + units.uniform(-50, 50, len(FEATURES))
        tables[name] = pd.DataFrame(x, columns=FEATURES).assign(**{TARGET: quality}, batch=range(1, len(quality) + 1))
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
    family: Annotated[str, typer.Option(
        click_type=click.Choice(list(FAMILIES)),
        help="nonlinear: the plants share a nonlinear response; linear: each plant's quality is a line in its "
             "parameters; large-units, small-units: the nonlinear plants' quality about 1e6 and 1e-3.")] = "nonlinear",
) -> None:
    """Write example plant tables, a schema, production rows, labelled rows and process bounds for the
    factory-floor walkthrough of docs/factory-operator.md (synthetic)."""
    console = Console()
    with exit_on_errors(console, FileExistsError):
        written = write_example_plants(out, family)
    plants = sum(path.parent.name == "plants" for path in written)
    console.print(f"wrote {plants} plant tables under {out / 'plants'} ({', '.join(HELD_OUT)} held out), "
                  "schema.json, labelled-this-week.csv, production.csv and bounds.json", soft_wrap=True)
