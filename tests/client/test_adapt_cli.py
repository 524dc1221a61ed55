"""``fedmeta adapt``: a package fitted to a factory's own rows, with lineage and an honest report; bad input
refused by name, and nothing already saved changed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from fedmeta.client.floor_cli import REPORT_FILE
from fedmeta.common import MetaConfig, RegressionTaskSampler, build_model, meta_train
from fedmeta.common.model_package import (
    WEIGHTS_FILE,
    AdaptationPlan,
    Manifest,
    PackageSchema,
    load_package,
    save_package,
)
from fedmeta.common.synthetic import FamilyConfig, make_family
from tests.support.cli import run_fedmeta

FAMILY = FamilyConfig("quality", num_factories=12, num_held_out=4, seed=0)
FEATURES = tuple(f"x{i}" for i in range(6))


@pytest.fixture(scope="module")
def package_and_table(tmp_path_factory):
    """A first-order MAML package meta-trained on the family's training plants, and a held-out plant's
    table in its own units (every feature x3 + 7) with an extra batch-number column."""
    root = tmp_path_factory.mktemp("adapt")
    family = make_family(FAMILY)
    torch.manual_seed(0)
    model = build_model(family.model_config)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = MetaConfig("fomaml", inner_steps=5, inner_lr=0.05, outer_lr=3e-3, meta_batch_size=8, local_steps=300)
    trained = meta_train(model, weights, RegressionTaskSampler(list(family.train), 10, 10, seed=0), config,
                         device="cpu")
    manifest = Manifest(PackageSchema(FEATURES, "quality", "regression"), family.model_config,
                        AdaptationPlan("fomaml", 10, 0.05), "factory-rows", "run-1", 5)
    save_package(root / "package", trained.weights, {}, manifest)
    plant = family.held_out[2]
    table = pd.DataFrame((plant.x * 3 + 7).numpy(), columns=list(FEATURES))
    table["quality"] = plant.y.numpy()
    table["batch"] = range(len(table))
    table.to_csv(root / "plant.csv", index=False)
    return root, table


def test_adapting_to_twenty_rows_writes_a_package_with_lineage_scaling_and_report(package_and_table, tmp_path):
    root, table = package_and_table
    code, output = run_fedmeta("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"),
                               "--rows", "20", "--out", str(tmp_path / "adapted"))
    assert code == 0, output
    assert "rows alone" in output and "unadapted" in output and "adapted package written" in output
    base, adapted = load_package(root / "package"), load_package(tmp_path / "adapted")
    lineage = adapted.manifest.lineage
    assert lineage["package_sha256"] == base.manifest.weights_sha256 and lineage["rows"] == 20
    assert lineage["scaling_rows"] == len(table) and len(lineage["rows_sha256"]) == 64
    raw = torch.tensor(table[list(FEATURES)].to_numpy(), dtype=torch.float64)
    assert torch.allclose(adapted.manifest.scaling.mean.double(), raw.mean(0), atol=1e-4)
    assert any(not torch.equal(adapted.weights[n], base.weights[n]) for n in base.weights)
    report = json.loads((tmp_path / "adapted" / REPORT_FILE).read_text())
    assert report["rows"] == 20 and report["folds"] == 5
    scores = report["scores"]
    assert scores["adapted"]["rmse"] < 0.7 * scores["unadapted"]["rmse"], scores  # measured 0.34 vs 1.07
    assert adapted.manifest.metrics["adapted/rmse"] == scores["adapted"]["rmse"]


def test_an_existing_output_folder_is_never_overwritten(package_and_table, tmp_path):
    root, _ = package_and_table
    args = ("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"), "--rows", "10")
    assert run_fedmeta(*args, "--out", str(tmp_path / "adapted"))[0] == 0
    before = (tmp_path / "adapted" / WEIGHTS_FILE).read_bytes()
    code, output = run_fedmeta(*args, "--rows", "20", "--out", str(tmp_path / "adapted"))
    assert code == 1 and "already exists" in output
    assert (tmp_path / "adapted" / WEIGHTS_FILE).read_bytes() == before


def test_bad_input_is_refused_by_name(package_and_table, tmp_path):
    root, table = package_and_table
    table.drop(columns=["x3"]).to_csv(tmp_path / "no-x3.csv", index=False)
    table.drop(columns=["quality"]).to_csv(tmp_path / "no-target.csv", index=False)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in (root / "package").iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    weights = bytearray((damaged / WEIGHTS_FILE).read_bytes())
    weights[-2] ^= 0xFF
    (damaged / WEIGHTS_FILE).write_bytes(bytes(weights))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": list(FEATURES), "target": "scrap", "task": "regression"}))

    def refused(package, data, *extra: str) -> str:
        code, output = run_fedmeta("adapt", "--model", str(package), "--data", str(data),
                                   "--out", str(tmp_path / "out"), *extra)
        assert code == 1, output
        assert not (tmp_path / "out").exists()
        return output

    assert "x3" in refused(root / "package", tmp_path / "no-x3.csv")
    assert "quality" in refused(root / "package", tmp_path / "no-target.csv")
    assert "SHA-256" in refused(damaged, root / "plant.csv")
    assert "'scrap'" in refused(root / "package", root / "plant.csv", "--schema", str(schema))
    assert "between 2 and the table's" in refused(root / "package", root / "plant.csv", "--rows", "100000")
