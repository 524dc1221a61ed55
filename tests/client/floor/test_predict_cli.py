"""``fedmeta predict``: every row back with its columns and the prediction, the same numbers the model gives,
in chunks; bad input refused by name with nothing written."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

import fedmeta.client.floor.csv_rows as csv_rows
import fedmeta.client.floor.table_blocks as table_blocks
from fedmeta.common import build_model, expected_f1_threshold
from fedmeta.common.data.connector import DataSchema
from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.package.model_package import AdaptationPlan, Manifest, PackageSchema, load_package, save_package
from tests.client.conftest import FEATURES
from tests.support.cli import run_fedmeta


@pytest.fixture(scope="module")
def adapted(plant_package, tmp_path_factory):
    root, _ = plant_package
    out = tmp_path_factory.mktemp("predict") / "adapted"
    code, output = run_fedmeta("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"),
                               "--rows", "20", "--out", str(out))
    assert code == 0, output
    return out


def _expected(package_path, features: np.ndarray) -> np.ndarray:
    package = load_package(package_path)
    model = build_model(package.manifest.model)
    model.load_state_dict(package.weights)
    scaling, target = package.manifest.scaling, package.manifest.target_scaling
    with torch.no_grad():
        standardized = model(scaling.apply(torch.tensor(features, dtype=torch.float32)))[:, 0].double()
    return (standardized * target.std + target.mean).numpy()  # in the plant's units


def test_every_row_comes_back_with_its_columns_and_the_adapted_models_prediction(plant_package, adapted, tmp_path,
                                                                                 monkeypatch):
    _, table = plant_package
    comments = ["L7 \"north\", bay 2", "two-line\ncomment, \"quoted\"", ""]  # quotes, commas, a line break in a cell
    production = table.drop(columns=["quality"]).assign(line=[comments[i % 3] for i in range(len(table))])
    production.insert(0, "timestamp", pd.date_range("2026-11-01", periods=len(table), freq="min").astype(str))
    production.to_csv(tmp_path / "production.csv", index=False)
    monkeypatch.setattr(csv_rows, "BLOCK_BYTES", 1024)  # many pieces: the streamed path, cells cut across them
    code, output = run_fedmeta("predict", "--model", str(adapted), "--data", str(tmp_path / "production.csv"),
                               "--out", str(tmp_path / "predicted.csv"))
    assert code == 0, output
    assert f"{len(table)} rows predicted" in output
    assert "carried through" in output and "'batch'" in output and "'line'" in output
    result = pd.read_csv(tmp_path / "predicted.csv", dtype={"batch": str})
    assert list(result.columns) == [*production.columns, "predicted_quality"]
    assert result["timestamp"].tolist() == production["timestamp"].tolist()
    assert result["line"].fillna("").tolist() == production["line"].tolist()
    assert result["batch"].tolist() == production["batch"].astype(str).tolist()
    expected = _expected(adapted, production[list(FEATURES)].to_numpy())
    np.testing.assert_allclose(result["predicted_quality"].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    rmse = float(np.sqrt(np.mean((result["predicted_quality"].to_numpy() - table["quality"].to_numpy()) ** 2)))
    report = json.loads((adapted / "adaptation-report.json").read_text())
    assert rmse < report["scores"]["unadapted"]["rmse"]


def test_parquet_in_and_out_and_classification_probabilities(tmp_path):
    torch.manual_seed(0)
    config_model = build_model({"name": "mlp", "input_shape": (2,), "output_dim": 3, "hidden": 4, "depth": 1})
    weights = {n: p.detach().clone() for n, p in config_model.named_parameters()}
    manifest = Manifest(PackageSchema(("a", "b"), "fault", "classification", ("ok", "wear", "crack")),
                        config_model.config, AdaptationPlan("maml", 5, 0.1), "factory-rows", "run", 1)
    save_package(tmp_path / "package", weights, {}, manifest)
    rows = pd.DataFrame({"id": ["m1", "m2", "m3", "m4"], "a": [0.1, 2.0, -1.0, 3.0], "b": [1.0, 0.0, 5.0, 2.0]})
    rows.to_parquet(tmp_path / "rows.parquet")
    code, output = run_fedmeta("predict", "--model", str(tmp_path / "package"), "--data",
                               str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "out.parquet"))
    assert code == 0, output
    assert "standardised with this table's own rows" in output  # an unadapted package
    result = pd.read_parquet(tmp_path / "out.parquet")
    probabilities = result[["probability_ok", "probability_wear", "probability_crack"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    labels = np.array(["ok", "wear", "crack"])[probabilities.argmax(axis=1)]
    assert result["predicted_fault"].tolist() == labels.tolist() and result["id"].tolist() == ["m1", "m2", "m3", "m4"]
    x = torch.tensor(rows[["a", "b"]].to_numpy(), dtype=torch.float32)
    scaled = (x - x.mean(0)) / x.std(0)
    with torch.no_grad():
        expected = torch.softmax(config_model(scaled), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_bad_tables_are_refused_by_name_and_nothing_is_written(plant_package, adapted, tmp_path):
    _, table = plant_package
    table.drop(columns=["x2"]).to_csv(tmp_path / "no-x2.csv", index=False)
    text = table.astype(object)
    text.loc[5, "x4"] = "n/a"
    text.to_csv(tmp_path / "text.csv", index=False)
    gap = table.copy()
    gap.loc[[3, 8], "x1"] = np.nan
    gap.to_csv(tmp_path / "gap.csv", index=False)
    (tmp_path / "kept.csv").write_text("already here\n")

    def refused(data, out="out.csv") -> str:
        code, output = run_fedmeta("predict", "--model", str(adapted), "--data", str(tmp_path / data),
                                   "--out", str(tmp_path / out))
        assert code == 1, output
        return output

    assert "missing feature column(s) ['x2']" in refused("no-x2.csv")
    assert "column 'x4' holds values that are not numbers: data row(s) 6 ('n/a')" in refused("text.csv")
    assert "'x1' is empty, NaN or infinite in data row(s) 4, 9" in refused("gap.csv")
    (tmp_path / "inf.csv").write_text(",".join(FEATURES) + "\n" + "1,2,3,4,5,6\n" + "1,inf,3,4,5,6\n")
    assert "'x1' is empty, NaN or infinite in data row(s) 2" in refused("inf.csv")
    assert "already exists" in refused("gap.csv", out="kept.csv")
    assert (tmp_path / "kept.csv").read_text() == "already here\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))) == []


def test_a_table_is_cut_into_pieces_only_between_rows_even_inside_multiline_quoted_cells(tmp_path, monkeypatch):
    comments = ["plain", "two-line\ncomment, \"quoted\"", "", "\"\"", "a,\n\n\"b\"\nc"]
    table = pd.DataFrame({"x0": np.arange(40.0), "note": [comments[i % len(comments)] for i in range(40)]})
    table.to_csv(tmp_path / "notes.csv", index=False)
    for size in range(16, 400, 7):  # every cut position, the file's first and last rows included
        monkeypatch.setattr(csv_rows, "BLOCK_BYTES", size)
        pieces = list(csv_rows.csv_pieces(tmp_path / "notes.csv"))
        parsed = pd.concat([pd.read_csv(io.BytesIO(piece), names=["x0", "note"], keep_default_na=False)
                            for piece in pieces])
        assert parsed["note"].tolist() == table["note"].tolist(), size
        assert parsed["x0"].tolist() == table["x0"].tolist()


def test_the_streamed_scaling_of_a_table_equals_the_scaling_of_all_its_rows(tmp_path, monkeypatch):
    generator = np.random.default_rng(0)
    rows = pd.DataFrame({"a": 1e6 + generator.normal(0, 0.01, 500), "b": generator.normal(5, 2, 500)})
    rows.to_csv(tmp_path / "far.csv", index=False)
    monkeypatch.setattr(csv_rows, "BLOCK_BYTES", 512)  # many pieces merged
    schema = DataSchema(("a", "b"), "y", "regression")
    streamed = table_blocks.table_scaling(tmp_path / "far.csv", schema)
    whole = FeatureScaling.fit(torch.tensor(rows.to_numpy()))
    assert streamed.rows == 500
    np.testing.assert_allclose(streamed.std.numpy(), whole.std.numpy(), rtol=1e-5)
    np.testing.assert_allclose(streamed.mean.numpy(), whole.mean.numpy(), rtol=1e-9)


def test_a_failure_rate_sets_the_packages_threshold_and_predict_flags_at_it(tmp_path):
    generator = np.random.default_rng(0)
    rows = pd.DataFrame({"a": generator.normal(size=300), "b": generator.normal(size=300)})
    rows["state"] = np.where(rows["a"] > 1.5, "scrap", "ok")  # about 7% failures
    rows.to_csv(tmp_path / "line.csv", index=False)
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "input_shape": (2,), "output_dim": 2, "hidden": 16})
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    manifest = Manifest(PackageSchema(("a", "b"), "state", "classification", ("ok", "scrap")), model.config,
                        AdaptationPlan("fomaml", 200, 0.1), "factory-rows", "run", 1)
    save_package(tmp_path / "package", weights, {}, manifest)
    code, output = run_fedmeta("adapt", "--model", str(tmp_path / "package"), "--data", str(tmp_path / "line.csv"),
                               "--out", str(tmp_path / "adapted"), "--failure-rate", "0.07")
    assert code == 0, output
    decision = load_package(tmp_path / "adapted").manifest.decision
    assert decision["failure_class"] == "scrap" and decision["failure_rate"] == 0.07
    assert f"'scrap' is flagged at probability {decision['threshold']:.4g}" in output
    assert run_fedmeta("predict", "--model", str(tmp_path / "adapted"), "--data", str(tmp_path / "line.csv"),
                       "--out", str(tmp_path / "scored.csv"))[0] == 0
    scored = pd.read_csv(tmp_path / "scored.csv")
    p_scrap = scored["probability_scrap"].to_numpy()
    np.testing.assert_allclose(p_scrap + scored["probability_ok"].to_numpy(), 1.0, atol=1e-9)
    assert ((scored["predicted_state"] == "scrap").to_numpy() == (p_scrap >= decision["threshold"])).all()
    assert abs(expected_f1_threshold(p_scrap) - decision["threshold"]) < 1e-5  # set on these same rows
    flagged = scored["predicted_state"] == "scrap"
    assert (flagged & (rows["state"] == "scrap")).sum() >= 0.5 * (rows["state"] == "scrap").sum()

    for extra, message in ((["--failure-class", "crack"], "is not one of the model's classes"),
                           (["--failure-rate", "0"], "0<x<1")):
        code, output = run_fedmeta("adapt", "--model", str(tmp_path / "package"), "--data", str(tmp_path / "line.csv"),
                                   "--out", str(tmp_path / "other"), "--failure-rate", "0.07", *extra)
        assert code in (1, 2) and message in output, output


def _random_package(path, classes=None):
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "input_shape": (2,), "output_dim": len(classes or [0]), "hidden": 4})
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = "classification" if classes else "regression"
    target = None if classes else TargetScaling(10.0, 2.0, 20)  # predictions y = 10 + 2 * the model's output
    manifest = Manifest(PackageSchema(("a", "b"), "y", task, classes), model.config, AdaptationPlan("maml", 5, 0.1),
                        "factory-rows", "run", 1, target_scaling=target)
    save_package(path, weights, {}, manifest)


@pytest.mark.parametrize("block_bytes", [16, 1 << 20])
def test_a_csv_row_comes_back_byte_for_byte_with_the_predicted_cells_after_it(tmp_path, monkeypatch, block_bytes):
    """CRLF line breaks, a blank line, a quoted cell holding a line break and quotes, spaces around a
    number and no line break at the end: every row's bytes are kept; the cells follow them."""
    monkeypatch.setattr(csv_rows, "BLOCK_BYTES", block_bytes)
    rows = [b"m1,1.0,2.0,plain", b'\r\nm2, 3.5 ,1e3,"two\r\nlines"', b'm3,0.25,-4,"say ""hi"""']
    (tmp_path / "in.csv").write_bytes(b"id,a,b,note\r\n" + b"\r\n".join(rows))
    _random_package(tmp_path / "package")
    assert run_fedmeta("predict", "--model", str(tmp_path / "package"), "--data", str(tmp_path / "in.csv"),
                       "--out", str(tmp_path / "out.csv"))[0] == 0
    cells = pd.read_csv(tmp_path / "out.csv", dtype=str)["predicted_y"].tolist()
    expected = b"id,a,b,note,predicted_y\n" + b"".join(row + b"," + cell.encode() + b"\n"
                                                        for row, cell in zip(rows, cells, strict=True))
    assert (tmp_path / "out.csv").read_bytes() == expected
    x = torch.tensor([[1.0, 2.0], [3.5, 1e3], [0.25, -4.0]], dtype=torch.float64)
    scaled = ((x - x.mean(0)) / x.std(0)).float()
    package = load_package(tmp_path / "package")
    model = build_model(package.manifest.model)
    model.load_state_dict(package.weights)
    with torch.no_grad():
        np.testing.assert_allclose(np.array(cells, dtype=float), 10 + 2 * model(scaled)[:, 0].numpy(), rtol=1e-6)


def test_a_class_label_holding_the_delimiter_is_quoted_in_the_csv_it_is_written_to(tmp_path):
    _random_package(tmp_path / "package", classes=("ok", 'worn, "badly"'))
    generator = np.random.default_rng(0)
    pd.DataFrame({"a": generator.normal(size=200), "b": generator.normal(size=200)}).to_csv(tmp_path / "in.csv",
                                                                                          index=False)
    assert run_fedmeta("predict", "--model", str(tmp_path / "package"), "--data", str(tmp_path / "in.csv"),
                       "--out", str(tmp_path / "out.csv"))[0] == 0
    result = pd.read_csv(tmp_path / "out.csv")
    assert set(result["predicted_y"]) == {"ok", 'worn, "badly"'}  # both decided somewhere: a real check
    chosen = np.where(result['probability_worn, "badly"'] > result["probability_ok"], 'worn, "badly"', "ok")
    assert result["predicted_y"].tolist() == chosen.tolist()
