"""``fedmeta export``: the ONNX file gives, in onnxruntime, what `fedmeta predict` gives in torch."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

from fedmeta.common import build_model
from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.package.model_package import AdaptationPlan, Manifest, PackageSchema, save_package
from tests.support.cli import run_fedmeta


@pytest.fixture(scope="module")
def adapted(plant_package, tmp_path_factory):
    root, _ = plant_package
    out = tmp_path_factory.mktemp("export") / "adapted"
    assert run_fedmeta("adapt", "--model", str(root / "package"), "--data", str(root / "plant.csv"), "--rows", "20",
                       "--out", str(out))[0] == 0
    return out


def test_the_onnx_model_predicts_the_table_as_fedmeta_predict_does(plant_package, adapted, tmp_path):
    root, table = plant_package
    code, output = run_fedmeta("export", "--model", str(adapted), "--out", str(tmp_path / "line.onnx"),
                               "--check", str(root / "plant.csv"))
    assert code == 0, output
    assert f"on {len(table)} rows" in output
    assert run_fedmeta("predict", "--model", str(adapted), "--data", str(root / "plant.csv"),
                       "--out", str(tmp_path / "scored.csv"))[0] == 0
    session = onnxruntime.InferenceSession(tmp_path / "line.onnx", providers=["CPUExecutionProvider"])
    features = table[[f"x{i}" for i in range(6)]].to_numpy(dtype=np.float64)  # raw: the graph scales them
    exported = session.run(None, {"features": features})[0]
    predicted = pd.read_csv(tmp_path / "scored.csv")["predicted_quality"].to_numpy()
    assert exported.shape == (len(table),)
    np.testing.assert_allclose(exported, predicted, atol=1e-5, rtol=0)


def test_a_classification_window_model_exports_probabilities(tmp_path):
    torch.manual_seed(0)
    model = build_model({"name": "cnn1d", "input_shape": (2, 64), "output_dim": 3, "hidden": 8})
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    scaling = FeatureScaling(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5]), 100)
    manifest = Manifest(PackageSchema(("vibration", "current"), "fault", "classification", ("ok", "wear", "crack")),
                        model.config, AdaptationPlan("maml", 5, 0.1), "factory-rows", "run", 1, scaling=scaling)
    save_package(tmp_path / "package", weights, {}, manifest)
    code, output = run_fedmeta("export", "--model", str(tmp_path / "package"), "--out", str(tmp_path / "m.onnx"))
    assert code == 0, output
    windows = torch.randn(5, 2, 64, dtype=torch.float64)
    session = onnxruntime.InferenceSession(tmp_path / "m.onnx", providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"features": windows.numpy()})[0]
    with torch.no_grad():
        scaled = ((windows - scaling.mean[:, None]) / scaling.std[:, None]).float()
        expected = torch.softmax(model(scaled), dim=-1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_an_existing_file_is_never_overwritten(adapted, tmp_path):
    (tmp_path / "line.onnx").write_bytes(b"kept")
    code, output = run_fedmeta("export", "--model", str(adapted), "--out", str(tmp_path / "line.onnx"))
    assert code == 1 and "already exists" in output
    assert (tmp_path / "line.onnx").read_bytes() == b"kept"
    code, output = run_fedmeta("export", "--model", str(adapted), "--format", "pmml", "--out", str(tmp_path / "x"))
    assert code == 2 and "pmml" in output


def test_a_reading_near_a_million_reaches_the_model_with_its_hundredths(tmp_path):
    """The graph takes float64 and scales before the cast: in float32, 1e6 + 0.01 is 1e6; a prediction near
    1e6 comes back in float64, mapped to the plant's units after the model's float32."""
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "input_shape": (2,), "output_dim": 1, "hidden": 8})
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    scaling = FeatureScaling(torch.tensor([1e6, 5.0], dtype=torch.float64), torch.tensor([0.03, 2.0]), 100)
    manifest = Manifest(PackageSchema(("flow", "temperature"), "quality", "regression"), model.config,
                        AdaptationPlan("maml", 5, 0.1), "factory-rows", "run", 1, scaling=scaling,
                        target_scaling=TargetScaling(1e6, 1e3, 100))
    save_package(tmp_path / "package", weights, {}, manifest)
    assert run_fedmeta("export", "--model", str(tmp_path / "package"), "--out", str(tmp_path / "m.onnx"))[0] == 0
    rows = torch.tensor([[1e6 - 0.04, 5.0], [1e6 + 0.01, 5.0], [1e6 + 0.05, 5.0]], dtype=torch.float64)
    session = onnxruntime.InferenceSession(tmp_path / "m.onnx", providers=["CPUExecutionProvider"])
    exported = session.run(None, {"features": rows.numpy()})[0]
    with torch.no_grad():
        expected = 1e6 + 1e3 * model(scaling.apply(rows))[:, 0].double().numpy()
    assert exported.dtype == np.float64
    np.testing.assert_allclose(exported, expected, atol=1e-3, rtol=0)
    assert len(set(exported.tolist())) == 3  # three readings, three predictions
