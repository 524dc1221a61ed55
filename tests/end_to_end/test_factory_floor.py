"""From the federation to the factory floor, through the CLI: `fedmeta simulate` on a folder of plant tables
writes the model package; a held-out plant adapts it to 20 of its rows and predicts its other rows better
than the unadapted package. (Against the same network trained on the 20 rows alone it is not reliably
better on this family: 2 to 4 of 6 held-out plants, see the issue note; not asserted.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedmeta.common.model_package import load_package
from fedmeta.common.synthetic import FamilyConfig, make_family
from tests.support.cli import run_fedmeta

FEATURES = [f"x{i}" for i in range(6)]
HELD_OUT = ("plant-new-0", "plant-new-1")
ADAPT_ROWS = 20


def _rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    """Plant tables in each plant's own units (a random scale and offset per feature), the simulated
    federation over them, and a held-out plant adapted to its first 20 rows."""
    root = tmp_path_factory.mktemp("floor")
    plants = root / "plants"
    plants.mkdir()
    family = make_family(FamilyConfig("quality", num_factories=10, num_held_out=2, min_samples=120, max_samples=300,
                                      seed=3))
    generator = np.random.default_rng(0)
    named = [(f"plant-{i:02d}", data) for i, data in enumerate(family.train)]
    named += list(zip(HELD_OUT, family.held_out, strict=True))
    for name, data in named:
        units = generator.uniform(0.5, 20.0, 6) * data.x.numpy() + generator.uniform(-50, 50, 6)
        table = pd.DataFrame(units, columns=FEATURES).assign(quality=data.y.numpy(), batch=range(len(data.y)))
        table.to_csv(plants / f"{name}.csv", index=False)
    schema = root / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    code, output = run_fedmeta("simulate", "--tables", str(plants / "*.csv"), "--schema", str(schema), "--held-out",
                               ",".join(HELD_OUT), "--algorithm", "fomaml", "--rounds", "30", "--no-baseline",
                               "--device", "cpu", "--out", str(root / "run"))
    assert code == 0, output
    plant = pd.read_csv(plants / f"{HELD_OUT[0]}.csv")
    plant.iloc[ADAPT_ROWS:].drop(columns=["quality"]).to_csv(root / "later.csv", index=False)
    package = root / "run" / "fomaml" / "model"
    code, output = run_fedmeta("adapt", "--model", str(package), "--data", str(plants / f"{HELD_OUT[0]}.csv"),
                               "--rows", str(ADAPT_ROWS), "--out", str(root / "adapted"))
    assert code == 0, output
    return root, plant, output


def test_the_simulated_federation_writes_a_package_of_the_tables_schema(floor):
    root, _, _ = floor
    package = load_package(root / "run" / "fomaml" / "model")
    schema = package.manifest.schema
    assert (schema.features, schema.target, package.manifest.scaling_rule) == (tuple(FEATURES), "quality",
                                                                               "factory-rows")
    assert package.manifest.round == 30 and "loss-k5" in package.manifest.metrics


def test_adapting_to_20_rows_predicts_the_plants_other_rows_better_than_the_unadapted_package(floor):
    root, plant, _ = floor
    later = plant.iloc[ADAPT_ROWS:]
    for model, out in (("adapted", "adapted.csv"), ("run/fomaml/model", "unadapted.csv")):
        code, output = run_fedmeta("predict", "--model", str(root / model), "--data", str(root / "later.csv"),
                                   "--out", str(root / out))
        assert code == 0, output
    adapted = _rmse(pd.read_csv(root / "adapted.csv")["predicted_quality"].to_numpy(), later["quality"].to_numpy())
    unadapted = _rmse(pd.read_csv(root / "unadapted.csv")["predicted_quality"].to_numpy(),
                      later["quality"].to_numpy())
    assert adapted < 0.8 * unadapted, (adapted, unadapted)  # measured 0.43-0.69 vs 1.00-1.27, 3 family seeds
