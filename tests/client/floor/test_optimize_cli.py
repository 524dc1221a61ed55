"""``fedmeta optimize``: on a plant whose best settings are known analytically, the model adapted to its rows
recommends them; bounds that do not fit the model are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedmeta.common import build_model
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.package.model_package import AdaptationPlan, Manifest, PackageSchema, save_package
from tests.support.cli import run_fedmeta

FEATURES = ("temperature", "pressure", "speed")
BEST_TEMPERATURE, BEST_SPEED = 200.0, 2.0  # quality = 10 - |T - 200| / 10 - 2 |S - 2| + 0.5 (P - 1.2)
BOUNDS = {"controllable": {"temperature": [170, 230], "speed": [0.5, 3.5]}, "fixed": {"pressure": 1.2},
          "goal": "maximize"}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A fresh network adapted to 400 rows of the plant (4000 full-batch steps: its recipe)."""
    root = tmp_path_factory.mktemp("optimize")
    generator = np.random.default_rng(0)
    t, p, s = generator.uniform(170, 230, 400), generator.uniform(1.0, 1.4, 400), generator.uniform(0.5, 3.5, 400)
    quality = 10 - np.abs(t - BEST_TEMPERATURE) / 10 - 2 * np.abs(s - BEST_SPEED) + 0.5 * (p - 1.2)
    table = pd.DataFrame({"temperature": t, "pressure": p, "speed": s})
    table["quality"] = quality + 0.05 * generator.normal(size=400)
    table.to_csv(root / "plant.csv", index=False)
    torch.manual_seed(0)
    config = ModelConfig("mlp", (3,), 1, hidden=32)
    weights = {n: q.detach().clone() for n, q in build_model(config).named_parameters()}
    manifest = Manifest(PackageSchema(FEATURES, "quality", "regression"), config,
                        AdaptationPlan("fomaml", 4000, 0.05), "factory-rows", "run", 1)
    save_package(root / "package", weights, {}, manifest)
    code, output = run_fedmeta("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"),
                               "--out", str(root / "adapted"))
    assert code == 0, output
    return root


def _optimize(package, bounds: dict, tmp_path, *extra: str) -> tuple[int, str]:
    (tmp_path / "bounds.json").write_text(json.dumps(bounds))
    return run_fedmeta("optimize", "--model", str(package), "--bounds", str(tmp_path / "bounds.json"), *extra)


def test_the_recommended_settings_land_at_the_plants_known_optimum(adapted, tmp_path):
    code, output = _optimize(adapted / "adapted", BOUNDS, tmp_path, "--out", str(tmp_path / "settings.json"))
    assert code == 0, output
    assert "pressure=1.2 held" in output
    best = json.loads((tmp_path / "settings.json").read_text())[0]
    # Tolerance: 3% of each range (measured on plant seed 0: 2.0% and 0.04%; 2000 steps gave 3.1%).
    assert abs(best["settings"]["temperature"] - BEST_TEMPERATURE) < 0.03 * 60, best
    assert abs(best["settings"]["speed"] - BEST_SPEED) < 0.03 * 3, best
    assert abs(best["predicted"] - 10.0) < 0.5, best


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({**BOUNDS, "fixed": {"pressure": 1.2, "humidity": 0.4}}, "['humidity'] are not features of the model"),
        ({**BOUNDS, "fixed": {}}, "features ['pressure'] are neither controllable nor fixed"),
        ({**BOUNDS, "controllable": {"temperature": [230, 170], "speed": [0.5, 3.5]}}, "low < high"),
        ({**BOUNDS, "goal": "maximise"}, "'goal' must be 'maximize' or 'minimize'"),
        ({**BOUNDS, "class": "scrap"}, "'class' applies to classification models only"),
    ],
)
def test_bounds_that_do_not_fit_the_model_are_refused_by_name(adapted, tmp_path, bounds, message):
    code, output = _optimize(adapted / "adapted", bounds, tmp_path)
    assert code == 1 and message in output, output


def test_an_unadapted_package_cannot_recommend_settings(adapted, tmp_path):
    code, output = _optimize(adapted / "package", BOUNDS, tmp_path)
    assert code == 1 and "adapt it with `fedmeta adapt` first" in output


def test_a_failure_model_recommends_settings_where_failures_are_unlikely(tmp_path):
    generator = np.random.default_rng(1)
    t, s = generator.uniform(180, 230, 300), generator.uniform(0.5, 3.5, 300)
    table = pd.DataFrame({"temperature": t, "speed": s, "state": np.where(t > 210, "scrap", "ok")})
    table.to_csv(tmp_path / "plant.csv", index=False)
    torch.manual_seed(0)
    config = ModelConfig("mlp", (2,), 2, hidden=16)
    weights = {n: q.detach().clone() for n, q in build_model(config).named_parameters()}
    manifest = Manifest(PackageSchema(("temperature", "speed"), "state", "classification", ("ok", "scrap")), config,
                        AdaptationPlan("fomaml", 300, 0.1), "factory-rows", "run", 1)
    save_package(tmp_path / "package", weights, {}, manifest)
    assert run_fedmeta("adapt", "--model", str(tmp_path / "package"), "--data", str(tmp_path / "plant.csv"),
                       "--out", str(tmp_path / "adapted"))[0] == 0
    bounds = {"controllable": {"temperature": [180, 230]}, "fixed": {"speed": 2.0}, "goal": "minimize",
              "class": "scrap"}
    code, output = _optimize(tmp_path / "adapted", bounds, tmp_path, "--out", str(tmp_path / "settings.json"))
    assert code == 0, output
    best = json.loads((tmp_path / "settings.json").read_text())[0]
    assert best["settings"]["temperature"] < 205 and best["predicted"] < 0.05, best
    assert "probability of 'scrap'" in output
