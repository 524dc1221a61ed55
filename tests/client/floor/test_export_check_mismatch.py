"""`fedmeta export`'s check: an ONNX file that does not give the package's outputs, in value or in shape, is a
failure (exit 1, named) and is never written. The exporter is replaced here by one that writes a graph
answering torch's outputs altered, so no torch export runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from fedmeta.common import build_model
from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.package.model_package import AdaptationPlan, Manifest, PackageSchema, save_package
from tests.support.cli import run_fedmeta

export_module = importlib.import_module("fedmeta.client.floor.export")  # `fedmeta.client.floor.export` is the command


@pytest.fixture()
def package(tmp_path) -> Path:
    """An adapted two-feature regression package."""
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "input_shape": (2,), "output_dim": 1, "hidden": 8})
    manifest = Manifest(PackageSchema(("flow", "temperature"), "quality", "regression"), model.config,
                        AdaptationPlan("maml", 5, 0.1), "factory-rows", "run", 1,
                        scaling=FeatureScaling(torch.tensor([10.0, 5.0]), torch.tensor([2.0, 1.0]), 20),
                        target_scaling=TargetScaling(3.0, 0.5, 20))
    save_package(tmp_path / "package", {n: p.detach().clone() for n, p in model.named_parameters()}, {}, manifest)
    return tmp_path / "package"


def _writing(alter: Callable[[np.ndarray], np.ndarray]):
    """An `_onnx_writer` whose graph answers, whatever its input, ``alter`` of torch's outputs on the check rows."""

    def writer(package, module, check):
        with torch.no_grad():
            answer = alter(module(check).numpy()).astype(np.float64)
        constant = helper.make_tensor("answer", TensorProto.DOUBLE, answer.shape, answer.flatten())
        graph = helper.make_graph(
            [helper.make_node("Constant", [], ["prediction"], value=constant)], "altered",
            [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, 2])],
            [helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, list(answer.shape))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return lambda path: Path(path).write_bytes(model.SerializeToString())

    return writer


def _export(package: Path, out: Path, *check: str) -> tuple[int, str]:
    code, output = run_fedmeta("export", "--model", str(package), "--out", str(out), *check)
    assert not out.exists() and [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    return code, " ".join(output.split())


@pytest.mark.parametrize(("alter", "shown"), [(lambda y: y + 1e-3, "by 0.002 (> 1e-05)"),
                                              (lambda y: np.full_like(y, np.nan), "by nan (> 1e-05)")],
                         ids=["off-by-a-thousandth", "nan"])
def test_an_onnx_file_whose_outputs_differ_from_the_package_is_a_failure_and_not_written(package, tmp_path,
                                                                                         monkeypatch, alter, shown):
    """10^-3 in the factory's units, 2 x 10^-3 of the target's spread: far above the tolerance; NaN is no match."""
    monkeypatch.setattr(export_module, "_onnx_writer", _writing(alter))
    code, output = _export(package, tmp_path / "line.onnx")
    assert code == 1 and f"onnxruntime's outputs differ from torch's {shown}; nothing was written" in output


def test_an_onnx_file_whose_outputs_have_another_shape_is_a_failure_and_not_written(package, tmp_path, monkeypatch):
    """A column ``[rows, 1]`` for the ``[rows]`` predictions: on a one-row check table the values agree, the
    shape does not."""
    (tmp_path / "one-row.csv").write_text("flow,temperature\n10.5,4.0\n")
    monkeypatch.setattr(export_module, "_onnx_writer", _writing(lambda y: y.reshape(-1, 1)))
    code, output = _export(package, tmp_path / "line.onnx", "--check", str(tmp_path / "one-row.csv"))
    assert code == 1 and "onnxruntime's output has shape [1, 1], torch's [1]; nothing was written" in output


def test_the_writer_stand_in_passes_the_check_when_it_alters_nothing(package, tmp_path, monkeypatch):
    """The failures above are the alterations', not the stand-in's."""
    monkeypatch.setattr(export_module, "_onnx_writer", _writing(lambda y: y))
    code, output = run_fedmeta("export", "--model", str(package), "--out", str(tmp_path / "line.onnx"))
    assert code == 0 and (tmp_path / "line.onnx").is_file(), output
