"""A tree package as ONNX (`fedmeta export`): the same graph contract as a network's export
(`client.floor.export`), with the trees converted by onnxmltools, the ONNX converter XGBoost's own docs point to.

The graph is assembled around the converter's tree ensemble: the package's input scaling in float64 and the
cast to float32 before it (XGBoost compares float32 features with its float32 thresholds, so the exported
trees see what `fedmeta predict` gives them), and after it, for regression, the map back to the factory's
units in float64. A window package's trees read ten statistics of each standardised channel
(`common.trees.features`), which this export does not build into the graph: it is refused by name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedmeta.common.package.model_package import ModelPackage
from fedmeta.common.trees.ensemble import load_ensemble

__all__ = ["tree_onnx"]

_OPSET = 17  # the default domain's ops used around the trees (Sub, Div, Cast, Mul, Add, Reshape)
_IR_VERSION = 8  # what the converter writes; every onnxruntime since 1.10 reads it


def _converted_trees(package: ModelPackage, columns: int) -> onnx.ModelProto:
    try:  # the export extra: only when exporting
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ModuleNotFoundError as error:
        raise ValueError(f"exporting trees needs {error.name}: pip install 'fedmeta-factory[export]'") from None
    return onnxmltools.convert_xgboost(load_ensemble(package.ensemble),
                                       initial_types=[("scaled", FloatTensorType([None, columns]))])


def tree_onnx(package: ModelPackage) -> onnx.ModelProto:
    """The ONNX model of a tree package: ``features`` (float64, raw) in, ``prediction`` ``[rows]`` (regression,
    in the factory's units where the package knows them) or ``probabilities`` ``[rows, classes]`` out."""
    manifest = package.manifest
    if manifest.window_length is not None:
        raise ValueError("a window package's trees read statistics of each channel's window, which the ONNX "
                         "export does not compute: predict it with `fedmeta predict`")
    columns = len(manifest.schema.features)
    trees = _converted_trees(package, columns).graph
    scaling = manifest.scaling
    mean = np.zeros(columns) if scaling is None else scaling.mean.double().numpy()
    std = np.ones(columns) if scaling is None else scaling.std.double().numpy()
    constants = [numpy_helper.from_array(mean, "input_mean"), numpy_helper.from_array(std, "input_std")]
    nodes = [helper.make_node("Sub", ["features", "input_mean"], ["centred"]),
             helper.make_node("Div", ["centred", "input_std"], ["standardised"]),
             helper.make_node("Cast", ["standardised"], ["scaled"], to=TensorProto.FLOAT), *trees.node]
    if manifest.schema.task == "classification":
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(manifest.schema.classes)])
    else:
        target = manifest.target_scaling
        slope, offset = (1.0, 0.0) if target is None else (target.std, target.mean)
        constants += [numpy_helper.from_array(np.array(slope), "target_std"),
                      numpy_helper.from_array(np.array(offset), "target_mean"),
                      numpy_helper.from_array(np.array([-1], dtype=np.int64), "rows")]
        nodes += [helper.make_node("Cast", [trees.output[0].name], ["margin"], to=TensorProto.DOUBLE),
                  helper.make_node("Mul", ["margin", "target_std"], ["spread"]),
                  helper.make_node("Add", ["spread", "target_mean"], ["in_units"]),
                  helper.make_node("Reshape", ["in_units", "rows"], ["prediction"])]
        output = helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, [None])
    graph = helper.make_graph(nodes, "fedmeta-trees",
                              [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, columns])],
                              [output], initializer=[*trees.initializer, *constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", 1)],
                              ir_version=_IR_VERSION, producer_name="fedmeta")
    onnx.checker.check_model(model)
    return model
