"""Federated gradient-boosted trees as XGBoost models in XGBoost's own JSON.

A factory boosts new trees from the global ensemble on its own rows and sends those trees alone
(`new_trees`); the server checks them (`check_trees`) and appends them to the ensemble (`append_trees`),
as Flower's ``aggregate_bagging`` does (`flwr.serverapp.strategy.strategy_utils`), but keeping each
tree's class: Flower's takes one tree a reply and files it under class 0, which drops the other classes'
trees of a multi-class round. In a bagging round every factory's trees are fitted to the same global
ensemble, so each boosts at ``rate / factories`` (`TreeSettings.round_rate`): the appended trees then
move the ensemble by their average at ``rate``, not by their sum.

Targets: classes are weighted to balance (the K-shot tasks every method is scored on are balanced, and
the networks meta-train on balanced tasks); a regression target is taken as the factory gives it (the
caller standardises it where its source says so). The ensemble starts at margin 0 (``base_score``) in
every factory, so trees from any of them add up; an ``xgb-histogram`` regression starts at the federation's mean
target instead (`split_finding.start_at_mean`), and whoever boosts on from an ensemble keeps its start.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmeta.common.trees.settings import TreeSettings
from fedmeta.common.trees.shape import TreeShape

if TYPE_CHECKING:
    import xgboost

__all__ = [
    "EMPTY_ENSEMBLE",
    "MAX_CLASS_LEAF_STEP",
    "TreesRejected",
    "append_trees",
    "balanced_weights",
    "boost",
    "booster_params",
    "check_trees",
    "load_ensemble",
    "margins",
    "new_trees",
    "num_rounds",
    "raw_margins",
    "starting_margin",
    "tree_free_model",
]


def _xgboost() -> Any:
    """XGBoost, imported at the first call. It costs 1.6 s and 86 MB (with scikit-learn and SciPy): only a process
    that boosts pays that, not every app process a factory's message starts. Not a lazy module in ``sys.modules``
    either: whatever walks ``sys.modules`` imports those, as importing ``torch._dynamo`` does (``inspect.getmodule``;
    torch.optim's first step and torch.compile import it)."""
    return importlib.import_module("xgboost")

EMPTY_ENSEMBLE = b""  # the first round's global model: no trees yet
# A classification leaf's largest step in log-odds before the rate. Where the ensemble is already confident,
# a leaf's hessian p(1 - p) is tiny and its raw value huge (a leaf of 112 at rate 0.45 on AI4I); XGBoost
# recommends capping it at 1-10 for logistic loss on rare classes.
MAX_CLASS_LEAF_STEP = 5.0


class TreesRejected(ValueError):
    """A factory's trees that the server leaves out, and why."""


def booster_params(shape: TreeShape, settings: TreeSettings, *, rate: float, seed: int) -> dict[str, Any]:
    """XGBoost's parameters for a factory's boosting at ``rate``: one thread, so the trees are the same on
    any machine and torch keeps the cores."""
    params: dict[str, Any] = {
        "objective": shape.objective, "tree_method": "hist", "max_depth": settings.depth, "eta": rate,
        "subsample": settings.subsample, "min_child_weight": settings.min_child_weight,
        "lambda": settings.reg_lambda, "nthread": 1, "seed": seed % 2**31, "verbosity": 0,
        "base_score": 0.5 if shape.objective == "binary:logistic" else 0.0,  # margin 0 everywhere
    }
    if shape.objective == "multi:softprob":
        params["num_class"] = shape.classes
    if shape.kind == "classification":
        params["max_delta_step"] = MAX_CLASS_LEAF_STEP
    return params


def balanced_weights(y: np.ndarray, kind: str) -> np.ndarray | None:
    """Row weights that give every present class the same total (classification), else none."""
    if kind != "classification":
        return None
    classes, counts = np.unique(y, return_counts=True)
    per_class = dict(zip(classes.tolist(), (len(y) / (len(classes) * counts)).tolist(), strict=True))
    return np.array([per_class[label] for label in y.tolist()])


def tree_free_model(shape: TreeShape, settings: TreeSettings, *, start: float | None = None) -> dict[str, Any]:
    """XGBoost's JSON document of a model of this shape with no trees: where trees grown elsewhere (the server's
    histogram trees) go to become a model XGBoost reads. ``start``: a regression model's margin before any tree
    (XGBoost's ``base_score``; default 0)."""
    params = booster_params(shape, settings, rate=settings.rate, seed=0)
    if start is not None:
        if shape.kind != "regression" or not math.isfinite(start):
            raise ValueError(f"only a regression model starts at a finite margin of its own, got {start!r}")
        params["base_score"] = start
    xgb = _xgboost()
    data = xgb.DMatrix(np.zeros((1, shape.num_feature)), label=np.zeros(1), nthread=1)
    return json.loads(bytes(xgb.train(params, data, num_boost_round=0).save_raw("json")))


def load_ensemble(raw: bytes) -> xgboost.Booster | None:
    """The ensemble ``raw`` holds, or None for the empty one."""
    if raw == EMPTY_ENSEMBLE:
        return None
    booster = _xgboost().Booster(params={"nthread": 1})
    booster.load_model(bytearray(raw))
    return booster


def num_rounds(raw: bytes) -> int:
    """How many boosting rounds ``raw`` holds (0 for the empty ensemble)."""
    booster = load_ensemble(raw)
    return 0 if booster is None else booster.num_boosted_rounds()


def boost(ensemble: bytes | xgboost.Booster | None, x: np.ndarray, y: np.ndarray, params: Mapping[str, Any],
          rounds: int, *, kind: str) -> xgboost.Booster:
    """``ensemble`` boosted ``rounds`` more rounds on ``x``, ``y`` (classes weighted to balance), from the margin
    it starts at: a ``base_score`` in ``params`` would replace the ensemble's and move every prediction."""
    start = load_ensemble(ensemble) if isinstance(ensemble, bytes) else ensemble
    xgb = _xgboost()
    data = xgb.DMatrix(x, label=y, weight=balanced_weights(y, kind), nthread=1)
    params = dict(params)
    if start is not None and kind == "regression":
        params["base_score"] = starting_margin(start)
    return xgb.train(params, data, num_boost_round=rounds, xgb_model=start)


def starting_margin(booster: xgboost.Booster) -> float:
    """A regression ensemble's margin before its trees (XGBoost's ``base_score``)."""
    text = json.loads(booster.save_config())["learner"]["learner_model_param"]["base_score"]
    return float(text.strip("[]"))


def new_trees(ensemble: bytes, x: np.ndarray, y: np.ndarray, params: Mapping[str, Any], rounds: int, *,
              kind: str) -> bytes:
    """The trees ``rounds`` rounds of boosting add to ``ensemble`` on these rows, as a model of their own:
    what a factory sends (never the rows, never the ensemble it received)."""
    start = num_rounds(ensemble)
    boosted = boost(ensemble, x, y, params, rounds, kind=kind)
    return bytes(boosted[start:].save_raw("json"))


def _model(document: Mapping[str, Any]) -> dict[str, Any]:
    return document["learner"]["gradient_booster"]["model"]


def append_trees(ensemble: bytes, trees: bytes) -> bytes:
    """``ensemble`` with ``trees`` (a model of new trees, `new_trees`) appended, each under its own class
    and its boosting rounds kept as rounds."""
    if ensemble == EMPTY_ENSEMBLE:
        return trees
    document, new = json.loads(ensemble), json.loads(trees)
    model, added = _model(document), _model(new)
    offset = len(model["trees"])
    for tree in added["trees"]:
        model["trees"].append({**tree, "id": offset + int(tree["id"])})
    model["tree_info"].extend(added["tree_info"])
    ends = model["iteration_indptr"]
    ends.extend(offset + int(end) for end in added["iteration_indptr"][1:])
    model["gbtree_model_param"]["num_trees"] = str(len(model["trees"]))
    return json.dumps(document).encode()


def _learner_param(document: Mapping[str, Any]) -> Mapping[str, Any]:
    return document["learner"]["learner_model_param"]


def check_trees(raw: bytes, shape: TreeShape, *, max_rounds: int, max_leaf: float, max_bytes: int) -> None:
    """Raise `TreesRejected` unless ``raw`` is a model of at most ``max_rounds`` rounds of trees of this
    federation's ``shape`` whose every leaf is finite and at most ``max_leaf`` in size: a factory's reply
    is read by XGBoost only after this."""
    if len(raw) > max_bytes:
        raise TreesRejected(f"the trees take {len(raw)} bytes, more than the {max_bytes} allowed")
    try:
        document = json.loads(raw)
        model, learner = _model(document), _learner_param(document)
        objective = document["learner"]["objective"]["name"]
        trees, tree_info = model["trees"], [int(group) for group in model["tree_info"]]
        columns = int(learner["num_feature"])
        classes = int(learner["num_class"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as error:
        raise TreesRejected(f"not an XGBoost JSON model ({type(error).__name__}: {error})") from None
    if objective != shape.objective or columns != shape.num_feature:
        raise TreesRejected(f"trees for {objective} on {columns} columns; this federation's are "
                            f"{shape.objective} on {shape.num_feature}")
    if shape.objective == "multi:softprob" and classes != shape.classes:
        raise TreesRejected(f"trees for {classes} classes; this federation has {shape.classes}")
    if len(trees) > max_rounds * shape.groups or len(tree_info) != len(trees):
        raise TreesRejected(f"{len(trees)} trees; at most {max_rounds * shape.groups} a round's reply")
    if any(group not in range(shape.groups) for group in tree_info):
        raise TreesRejected(f"tree classes {sorted(set(tree_info))} outside 0..{shape.groups - 1}")
    for tree in trees:
        _check_tree(tree, shape.num_feature, max_leaf)
    try:
        load_ensemble(raw)
    except _xgboost().core.XGBoostError as error:
        raise TreesRejected(f"XGBoost cannot read the trees: {str(error).splitlines()[0]}") from None


def _check_tree(tree: Mapping[str, Any], num_feature: int, max_leaf: float) -> None:
    try:
        left, conditions = tree["left_children"], tree["split_conditions"]
        features = tree["split_indices"]
        leaves = [float(value) for child, value in zip(left, conditions, strict=True) if child == -1]
        splits = [int(feature) for child, feature in zip(left, features, strict=True) if child != -1]
    except (KeyError, TypeError, ValueError) as error:
        raise TreesRejected(f"a malformed tree ({type(error).__name__}: {error})") from None
    if not leaves:
        raise TreesRejected("a tree without leaves")
    if not all(math.isfinite(value) and abs(value) <= max_leaf for value in leaves):
        worst = max(leaves, key=lambda value: abs(value) if math.isfinite(value) else math.inf)
        raise TreesRejected(f"a leaf value {worst!r} is not finite or beyond the bound {max_leaf:g}")
    if any(feature not in range(num_feature) for feature in splits):
        raise TreesRejected(f"a split on a column outside 0..{num_feature - 1}")


def raw_margins(ensemble: bytes, x: np.ndarray, shape: TreeShape) -> np.ndarray:
    """``[n, groups]``: the ensemble's margin of each row for each tree group (0 for the empty ensemble)."""
    booster = load_ensemble(ensemble)
    if booster is None:
        return np.zeros((len(x), shape.groups))
    margin = booster.predict(_xgboost().DMatrix(x, nthread=1), output_margin=True)
    return margin.reshape(len(x), shape.groups).astype(np.float64)


def margins(booster: xgboost.Booster | None, x: np.ndarray, shape: TreeShape,
            rounds: tuple[int, int] | None = None) -> np.ndarray:
    """Predictions ``[n, outputs]`` as the networks give them: a regression value, or class logits (two
    classes: ``[0, margin]``). ``rounds``: only those boosting rounds (`xgboost.Booster.predict`'s
    ``iteration_range``). The empty ensemble predicts margin 0."""
    if booster is None:
        return np.zeros((len(x), 1 if shape.kind == "regression" else shape.classes))
    data = _xgboost().DMatrix(x, nthread=1)
    margin = booster.predict(data, output_margin=True, iteration_range=rounds or (0, 0))
    margin = margin.reshape(len(x), -1).astype(np.float64)
    if shape.objective == "binary:logistic":
        return np.concatenate([np.zeros_like(margin), margin], axis=1)
    return margin
