"""A tree package as ONNX (`fedmeta export`): the same graph contract as a network's export
(`client.floor.export`), with the trees converted by onnxmltools, the ONNX converter XGBoost's own docs point to.

The graph is assembled around the converter's tree ensemble: the package's input scaling in float64 and the
cast to float32 before it (XGBoost compares float32 features with its float32 thresholds, so the exported
trees see what `fedmeta predict` gives them), and after it, for regression, the map back to the factory's
units in float64. A window package's trees read ten statistics of each standardised channel
(`common.trees.features.window_features`): the graph computes them from the float32 window in float64, as
that function does, and casts them to float32 for the trees.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedmeta.common.package.model_package import ModelPackage
from fedmeta.common.trees.ensemble import load_ensemble
from fedmeta.common.trees.features import STATISTICS_EPS, WINDOW_STATISTICS
from fedmeta.common.trees.shape import tree_shape

__all__ = ["tree_onnx"]

# The default domain's ops used around the trees; up to 17, ReduceMean/Min/Max take `axes` as an attribute.
_OPSET = 17
_IR_VERSION = 8  # what the converter writes; every onnxruntime since 1.10 reads it


def _converted_trees(package: ModelPackage, columns: int) -> onnx.ModelProto:
    try:  # the export extra: only when exporting
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ModuleNotFoundError as error:
        raise ValueError(f"exporting trees needs {error.name}: pip install 'fedmeta-factory[export]'") from None
    return onnxmltools.convert_xgboost(load_ensemble(package.ensemble),
                                       initial_types=[("scaled", FloatTensorType([None, columns]))])


def _window_statistics(window: str, statistics: str,
                       length: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`window_features` as nodes and their constants, by its formulas in float64 so the trees see the columns
    `fedmeta predict` gives them: ``window`` (float64 ``[rows, channels, length]``) to ``statistics`` (float64
    ``[rows, channels * 10]``). Each statistic stays ``[rows, channels, 1]`` until a transpose lays the columns
    out statistic-major, as `window_features` does."""
    time = np.arange(length) - (length - 1) / 2
    constants = [numpy_helper.from_array(time.reshape(length, 1), "window_time"),
                 numpy_helper.from_array(np.array((time**2).sum()), "window_time_spread"),
                 numpy_helper.from_array(np.array(STATISTICS_EPS), "window_eps"),
                 numpy_helper.from_array(np.array(3.0), "window_three"),
                 numpy_helper.from_array(np.array(4.0), "window_four"),
                 numpy_helper.from_array(np.array([-1]), "window_last_step")]
    nodes: list[onnx.NodeProto] = []

    def node(op: str, *inputs: str, **attributes: object) -> str:
        output = f"window_{len(nodes)}_{op.lower()}"
        nodes.append(helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def reduce(op: str, data: str) -> str:
        return node(op, data, axes=[-1], keepdims=1)

    mean = reduce("ReduceMean", window)
    centred = node("Sub", window, mean)
    std = node("Sqrt", reduce("ReduceMean", node("Mul", centred, centred)))
    scale = node("Add", std, "window_eps")
    magnitude = node("Abs", window)
    rms = node("Sqrt", reduce("ReduceMean", node("Mul", window, window)))
    named = {
        "mean": mean,
        "std": std,
        "min": reduce("ReduceMin", window),
        "max": reduce("ReduceMax", window),
        "last": node("Gather", window, "window_last_step", axis=-1),
        "slope": node("Div", node("MatMul", centred, "window_time"), "window_time_spread"),
        "skewness": node("Div", reduce("ReduceMean", node("Pow", centred, "window_three")),
                         node("Pow", scale, "window_three")),
        "kurtosis": node("Div", reduce("ReduceMean", node("Pow", centred, "window_four")),
                         node("Pow", scale, "window_four")),
        "crest factor": node("Div", reduce("ReduceMax", magnitude), node("Add", rms, "window_eps")),
        "mean |x|": reduce("ReduceMean", magnitude),
    }
    by_channel = node("Concat", *(named[name] for name in WINDOW_STATISTICS), axis=-1)  # [rows, channels, 10]
    nodes.append(helper.make_node("Flatten", [node("Transpose", by_channel, perm=[0, 2, 1])], [statistics], axis=1))
    return nodes, constants


def tree_onnx(package: ModelPackage) -> onnx.ModelProto:
    """The ONNX model of a tree package: ``features`` (float64, raw) in, ``prediction`` ``[rows]`` (regression,
    in the factory's units where the package knows them) or ``probabilities`` ``[rows, classes]`` out. A window
    package's graph also names the model's float32 input ``window`` and its statistics ``window_statistics``
    (float64), for checks."""
    manifest = package.manifest
    inputs = manifest.model.input_shape
    trees = _converted_trees(package, tree_shape(manifest.model, manifest.schema.task).num_feature).graph
    scaling = manifest.scaling
    per_channel = (inputs[0],) + (1,) * (len(inputs) - 1)  # a window: its channel's scaling for every step
    mean = np.zeros(per_channel) if scaling is None else scaling.mean.double().numpy().reshape(per_channel)
    std = np.ones(per_channel) if scaling is None else scaling.std.double().numpy().reshape(per_channel)
    constants = [numpy_helper.from_array(mean, "input_mean"), numpy_helper.from_array(std, "input_std")]
    model_input = "scaled" if manifest.window_length is None else "window"
    nodes = [helper.make_node("Sub", ["features", "input_mean"], ["centred"]),
             helper.make_node("Div", ["centred", "input_std"], ["standardised"]),
             helper.make_node("Cast", ["standardised"], [model_input], to=TensorProto.FLOAT)]
    if manifest.window_length is not None:  # statistics in float64 of the float32 window, as `fedmeta predict`'s
        statistics, statistic_constants = _window_statistics("window_values", "window_statistics",
                                                             manifest.window_length)
        nodes += [helper.make_node("Cast", ["window"], ["window_values"], to=TensorProto.DOUBLE), *statistics,
                  helper.make_node("Cast", ["window_statistics"], ["scaled"], to=TensorProto.FLOAT)]
        constants += statistic_constants
    nodes += trees.node
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
                              [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, *inputs])],
                              [output], initializer=[*trees.initializer, *constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", 1)],
                              ir_version=_IR_VERSION, producer_name="fedmeta")
    onnx.checker.check_model(model)
    return model
