"""`fedmeta export`: a model package as an ONNX file for the factory's own systems (PLC gateways, MES, C#).

The exported graph takes the table's raw features in float64 (``features``: ``[rows, features]``,
or ``[rows, channels, length]`` for windows of signals) and does everything `fedmeta predict` does
after reading: the package's input scaling in float64 (a reading near 1e6 varies below float32's
resolution there), then the cast to the model's float32 (an adapted package's; a package without one is
exported without scaling and says so), the model, and for classification the softmax
(``probabilities``: ``[rows, classes]``; regression: ``prediction``: ``[rows]``, mapped back to the
factory's units in float64 where the package standardises its target). The number of rows is free.
Exported with PyTorch's ``torch.export``-based exporter; after writing, onnxruntime runs the file on
check rows and its outputs must match torch's within `TOLERANCE` (in the model's own output units: a
prediction in the factory's units is divided by its target's spread), or nothing is written. A tree package's
graph is built around onnxmltools' conversion of its trees (`client.floor.export_trees`) and checked the same
way against `fedmeta predict`'s outputs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fedmeta.common.package.model_package import ModelPackage, package_model

__all__ = ["FORMATS", "TOLERANCE", "ExportResult", "deployable_model", "export_onnx"]

FORMATS = ("onnx",)
TOLERANCE = 1e-5


class _Deployable(nn.Module):
    """Scaling, model and output activation in one module: raw features in, predictions out."""

    def __init__(self, package: ModelPackage) -> None:
        super().__init__()
        manifest = package.manifest
        self.model = package_model(package)
        self.classification = manifest.schema.task == "classification"
        scaling = manifest.scaling
        features = manifest.model.input_shape[0]
        mean = torch.zeros(features) if scaling is None else scaling.mean
        std = torch.ones(features) if scaling is None else scaling.std
        shape = (features,) if len(manifest.model.input_shape) == 1 else (features, 1)  # windows: per channel
        self.register_buffer("mean", mean.reshape(shape).double().clone())
        self.register_buffer("std", std.reshape(shape).double().clone())

    def forward(self, features: Tensor) -> Tensor:
        out = self.model(((features - self.mean) / self.std).float())
        return torch.softmax(out, dim=-1) if self.classification else out[:, 0]


def deployable_model(package: ModelPackage) -> nn.Module:
    """The module the ONNX file holds (for checks in torch)."""
    return _Deployable(package).eval()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_difference: float
    check_rows: int
    scaled: bool


def _onnx_writer(package: ModelPackage, module: _Deployable, check: Tensor) -> Callable[[str], None]:
    """What writes the ONNX file: torch's exporter for a network, the tree graph for trees."""
    if package.manifest.trees is not None:
        from fedmeta.client.floor.export_trees import tree_onnx  # onnxmltools: only for a tree package

        model = tree_onnx(package)
        return lambda path: Path(path).write_bytes(model.SerializeToString())
    name = "probabilities" if module.classification else "prediction"
    program = torch.onnx.export(module, (check[:2],), input_names=["features"], output_names=[name],
                                dynamic_shapes=({0: torch.export.Dim("rows")},), dynamo=True, verbose=False)
    return program.save


def export_onnx(package: ModelPackage, out: Path, check: Tensor | None = None) -> ExportResult:
    """Write ``package`` as ONNX to the new file ``out``; ``check`` rows (raw features; default: 64 random
    rows around the scaling) must give the same outputs in onnxruntime as in torch."""
    try:  # the export extra: only when exporting
        import onnxruntime
        import onnxscript  # noqa: F401  (what torch's exporter needs)
    except ModuleNotFoundError as error:
        raise ValueError(f"fedmeta export needs {error.name}: pip install 'fedmeta-factory[export]'") from None

    if out.exists():
        raise ValueError(f"{out} already exists; an export never overwrites a file (choose another --out)")
    module = deployable_model(package)
    input_shape = package.manifest.model.input_shape
    if check is None:
        generator = torch.Generator().manual_seed(0)
        check = torch.randn(64, *input_shape, generator=generator, dtype=torch.float64) * module.std + module.mean
    if tuple(check.shape[1:]) != tuple(input_shape):
        raise ValueError(f"check rows must have shape [rows, {', '.join(map(str, input_shape))}], "
                         f"got {tuple(check.shape)}")
    check = check.double()
    save = _onnx_writer(package, module, check)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        save(temporary)
        session = onnxruntime.InferenceSession(temporary, providers=["CPUExecutionProvider"])
        exported = session.run(None, {"features": check.numpy()})[0]
        with torch.no_grad():
            expected = module(check).numpy()
        if exported.shape != expected.shape:  # broadcasting would compare a [rows, 1] column with [rows] rows
            raise ValueError(f"onnxruntime's output has shape {list(exported.shape)}, torch's "
                             f"{list(expected.shape)}; nothing was written")
        target = package.manifest.target_scaling
        difference = float(np.abs(exported - expected).max()) / (1.0 if target is None else target.std)
        if not difference <= TOLERANCE:
            raise ValueError(f"onnxruntime's outputs differ from torch's by {difference:.3g} (> {TOLERANCE}); "
                             "nothing was written")
        if out.exists():
            raise ValueError(f"{out} appeared while exporting; it is left as it is")
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return ExportResult(out, difference, len(check), package.manifest.scaling is not None)
