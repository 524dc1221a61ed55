"""``fedmeta adapt``: a package fitted to a factory's own rows, with lineage and an honest report; bad input
refused by name, and nothing already saved changed."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from fedmeta.client.floor.adapt import adapt_package, factory_candidates
from fedmeta.client.floor.candidates import REPORTED, candidate_names
from fedmeta.client.floor.cli import REPORT_FILE
from fedmeta.common import Recipe
from fedmeta.common.package.model_package import (
    WEIGHTS_FILE,
    ModelPackage,
    load_package,
    package_model,
    save_package,
)
from tests.client.conftest import FEATURES
from tests.support.cli import predicted_rmse, run_fedmeta


def test_adapting_to_twenty_rows_writes_a_package_with_lineage_scaling_and_report(plant_package, tmp_path):
    root, table = plant_package
    code, output = run_fedmeta("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"),
                               "--rows", "20", "--out", str(tmp_path / "adapted"))
    assert code == 0, output
    assert "rows alone" in output and "unadapted" in output and "adapted package written" in output
    assert "does not name: 'batch': not read" in output  # an extra column is a warning, not an error
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
    assert scores["adapted"]["rmse"] < 0.7 * scores["unadapted"]["rmse"], scores
    assert set(scores) == set(candidate_names("regression"))
    kept_unasked = [name for name in scores if name not in REPORTED]  # trees alone: reported, kept on request
    assert report["chosen"] == report["best"] == min(kept_unasked, key=lambda name: scores[name]["mse"])
    assert adapted.manifest.chosen == report["chosen"] and f"kept {report['chosen']!r}" in output
    assert adapted.manifest.metrics["adapted/rmse"] == scores["adapted"]["rmse"]
    target = adapted.manifest.target_scaling  # the 20 rows' own, in the plant's units
    assert target.rows == 20 and target.mean == pytest.approx(table["quality"][:20].mean(), rel=1e-9)


def test_on_a_linear_plant_the_package_written_is_the_line_through_its_rows(plant_package):
    """Least squares fits a linear plant's rows exactly, so the factory gets it (or a model at least as good),
    never the network the federation trained on other plants; it predicts rows it never saw."""
    root, _ = plant_package
    x = torch.randn(40, len(FEATURES), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 7 + 40
    y = x @ torch.arange(1.0, len(FEATURES) + 1, dtype=torch.float64) - 3
    adapted = adapt_package(load_package(root / "package"), x, y, rows=20)
    scores = adapted.report.scores
    assert scores["least squares"]["rmse"] < 1e-3 * y.std()  # the line is the plant
    assert scores["adapted"]["rmse"] > 10 * scores["least squares"]["rmse"]
    assert scores[adapted.report.chosen]["mse"] <= scores["least squares"]["mse"]
    package = ModelPackage(adapted.weights, adapted.inner_lrs, adapted.manifest)
    with torch.no_grad():
        predicted = package_model(package)(adapted.manifest.scaling.apply(x[20:]))[:, 0]
    assert float((predicted - y[20:]).abs().max()) < 1e-3 * float(y.std())


def test_keep_overrides_the_choice_with_a_warning_and_an_unknown_name_is_refused(plant_package, tmp_path):
    root, _ = plant_package
    args = ("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"), "--rows", "20")
    code, output = run_fedmeta(*args, "--out", str(tmp_path / "kept"), "--keep", "unadapted")
    assert code == 0, output
    report = json.loads((tmp_path / "kept" / REPORT_FILE).read_text())
    assert report["chosen"] == "unadapted" != report["best"]
    assert "warning" in output and "kept 'unadapted' as --keep asks" in output
    assert load_package(tmp_path / "kept").manifest.chosen == "unadapted"
    code, output = run_fedmeta(*args, "--out", str(tmp_path / "other"), "--keep", "forest")
    assert code == 1 and "--keep must name one of the candidates" in output and "'forest'" in output
    assert not (tmp_path / "other").exists()


def test_an_existing_output_folder_is_never_overwritten(plant_package, tmp_path):
    root, _ = plant_package
    args = ("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"), "--rows", "10")
    assert run_fedmeta(*args, "--out", str(tmp_path / "adapted"))[0] == 0
    before = (tmp_path / "adapted" / WEIGHTS_FILE).read_bytes()
    code, output = run_fedmeta(*args, "--rows", "20", "--out", str(tmp_path / "adapted"))
    assert code == 1 and "already exists" in output
    assert (tmp_path / "adapted" / WEIGHTS_FILE).read_bytes() == before


def test_bad_input_is_refused_by_name(plant_package, tmp_path):
    root, table = plant_package
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
    table.assign(quality=54.0).to_csv(tmp_path / "constant.csv", index=False)
    constant = refused(root / "package", tmp_path / "constant.csv", "--rows", "20")
    assert "'quality' is 54 in every one of the 20 labelled rows" in constant
    table.assign(quality=float("nan")).to_csv(tmp_path / "no-labels.csv", index=False)
    assert "'quality'" in refused(root / "package", tmp_path / "no-labels.csv")
    table.iloc[:1].to_csv(tmp_path / "one-row.csv", index=False)  # fewer rows than any fold needs
    assert "between 2 and the table's 1 labelled rows" in refused(root / "package", tmp_path / "one-row.csv")


def test_a_cross_validated_recipe_is_chosen_among_the_factory_candidates(plant_package, tmp_path):
    root, table = plant_package
    base = load_package(root / "package")
    plan = dataclasses.replace(base.manifest.adaptation, recipe="cross-validated")
    save_package(tmp_path / "cv-package", base.weights, {}, dataclasses.replace(
        base.manifest, adaptation=plan, weights_sha256="", versions={}))
    code, output = run_fedmeta("adapt", "--model", str(tmp_path / "cv-package"), "--data", str(root / "plant.csv"),
                               "--rows", "20", "--out", str(tmp_path / "adapted"), "--keep", "adapted")
    assert code == 0, output
    report = json.loads((tmp_path / "adapted" / REPORT_FILE).read_text())
    assert Recipe(report["recipe_steps"], report["recipe_lr_scale"]) in factory_candidates(10)
    assert "recipe chosen on all 20 rows" in output
    assert report["scores"]["adapted"]["rmse"] < report["scores"]["unadapted"]["rmse"]
    # and on the plant's rows it never saw (all but the first 20), the adapted package predicts far better than
    # the federation's model kept unadapted (scaled to the same 20 rows)
    code, output = run_fedmeta("adapt", "--model", str(tmp_path / "cv-package"), "--data", str(root / "plant.csv"),
                               "--rows", "20", "--out", str(tmp_path / "unadapted"), "--keep", "unadapted")
    assert code == 0, output
    unseen = tmp_path / "unseen.csv"
    table.iloc[20:].to_csv(unseen, index=False)
    adapted = predicted_rmse(tmp_path / "adapted", unseen, tmp_path / "adapted.csv")
    unadapted = predicted_rmse(tmp_path / "unadapted", unseen, tmp_path / "unadapted.csv")
    assert adapted < 0.7 * unadapted, (adapted, unadapted)  # measured: 0.36 against 1.02


def test_a_reading_near_a_million_is_scaled_by_its_own_variation(plant_package, tmp_path):
    """A flow meter near 1e6 varying by hundredths: float32 cannot tell its readings apart (0.06 steps
    there), so the table is read and scaled in float64."""
    root, table = plant_package
    metered = table.assign(x0=1e6 + table["x0"].astype("float64") / 100)
    metered.to_csv(tmp_path / "metered.csv", index=False, float_format="%.10f")
    metered = pd.read_csv(tmp_path / "metered.csv")
    code, output = run_fedmeta("adapt", "--model", str(root / "package"), "--data", str(tmp_path / "metered.csv"),
                               "--rows", "20", "--out", str(tmp_path / "adapted"))
    assert code == 0, output
    scaling = load_package(tmp_path / "adapted").manifest.scaling
    assert float(scaling.std[0]) == pytest.approx(float(metered["x0"].std()), rel=1e-6)
    assert float(scaling.mean[0]) == pytest.approx(float(metered["x0"].mean()), rel=1e-12)


@pytest.mark.parametrize(("offset", "scale"), [(1e-3, 1e-5), (1e6, 1e3)])
def test_a_target_in_units_far_from_one_is_adapted_as_in_its_own_units(plant_package, offset, scale):
    """The plant's quality as 1e-3 + 1e-5 q or 1e6 + 1e3 q: the same model is kept, its report scaled by the
    units, and it predicts offset + scale times what it predicts for q."""
    root, table = plant_package
    package = load_package(root / "package")
    x = torch.tensor(table[list(FEATURES)].to_numpy(), dtype=torch.float64)
    y = torch.tensor(table["quality"].to_numpy(), dtype=torch.float64)
    plain, far = (adapt_package(package, x, target, rows=20) for target in (y, offset + scale * y))
    assert far.report.chosen == plain.report.chosen
    for name, scores in plain.report.scores.items():
        assert far.report.scores[name]["rmse"] == pytest.approx(scale * scores["rmse"], rel=1e-4), name
    predictions = [package_model(ModelPackage(a.weights, a.inner_lrs, a.manifest))(a.manifest.scaling.apply(x[20:]))
                   for a in (plain, far)]
    torch.testing.assert_close(predictions[1][:, 0], offset + scale * predictions[0][:, 0], rtol=1e-9,
                               atol=1e-5 * scale)
