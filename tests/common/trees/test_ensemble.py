"""Federated trees in XGBoost's JSON: the replies a factory sends, how the server appends and checks them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost
from flwr.serverapp.strategy.strategy_utils import aggregate_bagging

from fedmeta.common.trees.ensemble import (
    EMPTY_ENSEMBLE,
    MAX_CLASS_LEAF_STEP,
    TreesRejected,
    append_trees,
    balanced_weights,
    boost,
    booster_params,
    check_trees,
    load_ensemble,
    margins,
    new_trees,
)
from fedmeta.common.trees.settings import TreeSettings
from fedmeta.common.trees.shape import TreeShape

FEATURES = 4
REGRESSION = TreeShape(FEATURES, "regression")
BINARY = TreeShape(FEATURES, "classification", 2)
MULTI = TreeShape(FEATURES, "classification", 3)


def _rows(shape: TreeShape, seed: int, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, shape.num_feature))
    if shape.kind == "regression":
        y = x @ rng.normal(size=shape.num_feature) + 0.1 * rng.normal(size=n)
    else:
        y = np.arange(n) % shape.classes  # every class present
        x[:, 0] += y  # learnable
    return x, y.astype(np.float64)


def _params(shape: TreeShape, *, rate: float = 0.3, seed: int = 0, **settings) -> dict:
    return booster_params(shape, TreeSettings(depth=3, **settings), rate=rate, seed=seed)


def _model(raw: bytes) -> dict:
    return json.loads(raw)["learner"]["gradient_booster"]["model"]


def _margins(raw: bytes, x: np.ndarray, shape: TreeShape) -> np.ndarray:
    return margins(load_ensemble(raw), x, shape)


@pytest.mark.parametrize("shape", [REGRESSION, BINARY], ids=["regression", "binary"])
def test_append_trees_equals_flower_aggregate_bagging_for_single_output_models(shape):
    factories = [_rows(shape, seed) for seed in range(3)]
    settings = TreeSettings(depth=3)
    ours = flower = EMPTY_ENSEMBLE
    for round_ in range(3):
        replies = [
            new_trees(ours, x, y, booster_params(shape, settings, rate=settings.round_rate(3), seed=10 * round_ + i),
                      1, kind=shape.kind)
            for i, (x, y) in enumerate(factories)
        ]
        for reply in replies:
            ours, flower = append_trees(ours, reply), aggregate_bagging(flower, reply)
    x_test, _ = _rows(shape, 99)
    assert load_ensemble(ours).num_boosted_rounds() == 9
    assert _model(ours)["iteration_indptr"] == _model(flower)["iteration_indptr"]
    np.testing.assert_allclose(_margins(ours, x_test, shape), _margins(flower, x_test, shape))
    assert np.abs(_margins(ours, x_test, shape)).max() > 0  # the trees do predict something


def test_append_trees_adds_multi_class_trees_per_class_where_flower_drops_them():
    x_test, _ = _rows(MULTI, 99)
    zero_round = xgboost.train(_params(MULTI), xgboost.DMatrix(*_rows(MULTI, 0)), num_boost_round=0)
    base = margins(zero_round, x_test, MULTI)  # the margin a model of no trees gives
    replies = [new_trees(EMPTY_ENSEMBLE, x, y, _params(MULTI, seed=seed), 2, kind="classification")
               for seed, (x, y) in enumerate(_rows(MULTI, seed) for seed in range(3))]

    ours = flower = EMPTY_ENSEMBLE
    for reply in replies:
        ours, flower = append_trees(ours, reply), aggregate_bagging(flower, reply)

    parts = [_margins(reply, x_test, MULTI) for reply in replies]
    expected = parts[0] + sum(part - base for part in parts[1:])
    np.testing.assert_allclose(_margins(ours, x_test, MULTI), expected, rtol=1e-5, atol=1e-5)
    assert _model(ours)["tree_info"] == [0, 1, 2] * 6
    assert load_ensemble(ours).num_boosted_rounds() == sum(load_ensemble(r).num_boosted_rounds() for r in replies)
    # Flower's takes one tree a reply, under class 0: the sum is lost.
    assert not np.allclose(_margins(flower, x_test, MULTI), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", [REGRESSION, BINARY, MULTI], ids=["regression", "binary", "multi"])
def test_new_trees_sends_only_the_new_rounds_and_appending_them_reproduces_continuous_boosting(shape):
    x, y = _rows(shape, 0)
    params = _params(shape)
    ensemble = bytes(boost(EMPTY_ENSEMBLE, x, y, params, 3, kind=shape.kind).save_raw("json"))

    reply = new_trees(ensemble, x, y, params, 2, kind=shape.kind)

    assert load_ensemble(reply).num_boosted_rounds() == 2
    assert len(_model(reply)["trees"]) == 2 * shape.groups
    continuous = boost(ensemble, x, y, params, 2, kind=shape.kind)
    np.testing.assert_allclose(_margins(append_trees(ensemble, reply), x, shape), margins(continuous, x, shape),
                               atol=1e-5)


@pytest.mark.parametrize("shape", [REGRESSION, MULTI], ids=["regression", "multi"])
def test_bagging_identical_factories_at_round_rate_equals_one_factory_at_full_rate(shape):
    x, y = _rows(shape, 0)
    settings = TreeSettings(depth=3, rate=0.3, subsample=1.0)
    start = bytes(boost(EMPTY_ENSEMBLE, x, y, booster_params(shape, settings, rate=settings.rate, seed=0), 1,
                        kind=shape.kind).save_raw("json"))
    factories = 4

    bagged = start
    for seed in range(factories):
        params = booster_params(shape, settings, rate=settings.round_rate(factories), seed=seed)
        bagged = append_trees(bagged, new_trees(start, x, y, params, 1, kind=shape.kind))
    alone = boost(start, x, y, booster_params(shape, settings, rate=settings.rate, seed=0), 1, kind=shape.kind)

    assert not np.allclose(margins(alone, x, shape), _margins(start, x, shape))  # the round moves the margins
    np.testing.assert_allclose(_margins(bagged, x, shape), margins(alone, x, shape), rtol=1e-5, atol=1e-6)


# --- check_trees -------------------------------------------------------------------------------------------

LIMITS = {"max_rounds": 2, "max_leaf": 10.0, "max_bytes": 1_000_000}


def _reply(shape: TreeShape = MULTI, rounds: int = 2, features: int = FEATURES) -> bytes:
    x, y = _rows(TreeShape(features, shape.kind, shape.classes), 0)
    return new_trees(EMPTY_ENSEMBLE, x, y, _params(shape), rounds, kind=shape.kind)


def _edited(raw: bytes, edit) -> bytes:
    document = json.loads(raw)
    edit(document["learner"]["gradient_booster"]["model"])
    return json.dumps(document).encode()  # allow_nan: a NaN is written as NaN, which json.loads reads back


def _set_leaf(value: float):
    def edit(model: dict) -> None:
        tree = model["trees"][0]
        tree["split_conditions"][tree["left_children"].index(-1)] = value
    return edit


def _split_on(column: int):
    def edit(model: dict) -> None:
        tree = model["trees"][0]
        tree["split_indices"][next(i for i, c in enumerate(tree["left_children"]) if c != -1)] = column
    return edit


def test_check_trees_accepts_a_genuine_reply():
    for shape in (REGRESSION, BINARY, MULTI):
        check_trees(_reply(shape), shape, **LIMITS)


def test_check_trees_rejects_oversize_bytes():
    raw = _reply()
    with pytest.raises(TreesRejected, match=f"{len(raw)} bytes, more than the 100 allowed"):
        check_trees(raw, MULTI, **{**LIMITS, "max_bytes": 100})


@pytest.mark.parametrize("raw", [b"\xff\xfe not json", b"{not json", b'{"learner": {"objective": 1}}', b"[1, 2]",
                                 b'"a string"'], ids=["bytes", "broken", "json-not-a-model", "list", "string"])
def test_check_trees_rejects_what_is_not_an_xgboost_json_model(raw):
    with pytest.raises(TreesRejected, match="not an XGBoost JSON model"):
        check_trees(raw, MULTI, **LIMITS)


def test_check_trees_rejects_the_wrong_objective():
    expected = r"trees for binary:logistic on 4 columns; this federation's are multi:softprob on 4$"
    with pytest.raises(TreesRejected, match=expected):
        check_trees(_reply(BINARY), MULTI, **LIMITS)


def test_check_trees_rejects_the_wrong_num_feature():
    with pytest.raises(TreesRejected, match=f"on 5 columns; this federation's are multi:softprob on {FEATURES}"):
        check_trees(_reply(features=5), MULTI, **LIMITS)


def test_check_trees_rejects_the_wrong_class_count():
    with pytest.raises(TreesRejected, match="trees for 4 classes; this federation has 3"):
        check_trees(_reply(TreeShape(FEATURES, "classification", 4)), MULTI, **LIMITS)


def test_check_trees_rejects_more_rounds_than_max_rounds():
    with pytest.raises(TreesRejected, match="9 trees; at most 6 a round's reply"):
        check_trees(_reply(rounds=3), MULTI, **LIMITS)


def test_check_trees_rejects_a_nan_leaf():
    raw = _edited(_reply(), _set_leaf(float("nan")))
    assert b"NaN" in raw
    with pytest.raises(TreesRejected, match="leaf value nan is not finite"):
        check_trees(raw, MULTI, **LIMITS)


def test_check_trees_rejects_an_oversize_leaf():
    with pytest.raises(TreesRejected, match=r"leaf value -1000\.0 is not finite or beyond the bound 10$"):
        check_trees(_edited(_reply(), _set_leaf(-1000.0)), MULTI, **LIMITS)


def test_check_trees_rejects_a_split_on_a_column_beyond_num_feature():
    with pytest.raises(TreesRejected, match=rf"split on a column outside 0\.\.{FEATURES - 1}$"):
        check_trees(_edited(_reply(), _split_on(FEATURES)), MULTI, **LIMITS)


def test_check_trees_rejects_an_out_of_range_class_in_tree_info():
    def edit(model: dict) -> None:
        model["tree_info"][-1] = 3
    with pytest.raises(TreesRejected, match=r"tree classes \[0, 1, 2, 3\] outside 0\.\.2$"):
        check_trees(_edited(_reply(), edit), MULTI, **LIMITS)
    with pytest.raises(TreesRejected, match=r"tree classes \[0, 1\] outside 0\.\.0$"):
        check_trees(_edited(_reply(BINARY), lambda model: model["tree_info"].__setitem__(0, 1)), BINARY, **LIMITS)


# --- weights and margins -----------------------------------------------------------------------------------

def _leaves(booster: xgboost.Booster) -> list[float]:
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    return [value for tree in trees for value, left in zip(tree["split_conditions"], tree["left_children"],
                                                            strict=True) if left == -1]


def test_a_class_leaf_stays_within_its_step_where_the_ensemble_is_confidently_wrong():
    x, y = _rows(BINARY, 0, n=1000)  # a leaf's raw value grows with its rows where the hessians vanish
    params = _params(BINARY) | {"eta": 1.0}
    wrong = boost(EMPTY_ENSEMBLE, x, 1 - y, params | {"max_delta_step": 0}, 30, kind="classification")
    capped = boost(wrong, x, y, params, 1, kind="classification")[30:]
    uncapped = boost(wrong, x, y, params | {"max_delta_step": 0}, 1, kind="classification")[30:]
    assert max(map(abs, _leaves(capped))) <= MAX_CLASS_LEAF_STEP + 1e-6
    assert max(map(abs, _leaves(uncapped))) > 1.5 * MAX_CLASS_LEAF_STEP  # what the cap keeps out of a reply
    assert "max_delta_step" not in _params(REGRESSION)


def test_balanced_weights_give_each_present_class_the_same_total():
    y = np.array([0, 0, 0, 0, 0, 0, 2, 2, 1, 2, 0, 5])
    weights = balanced_weights(y, "classification")
    totals = [weights[y == label].sum() for label in np.unique(y)]
    np.testing.assert_allclose(totals, totals[0])
    assert weights.sum() == pytest.approx(len(y))
    assert balanced_weights(y.astype(float), "regression") is None


def test_margins_of_the_empty_ensemble_are_zeros_one_column_a_class():
    x = np.ones((5, FEATURES))
    np.testing.assert_array_equal(margins(None, x, REGRESSION), np.zeros((5, 1)))
    np.testing.assert_array_equal(margins(None, x, BINARY), np.zeros((5, 2)))
    np.testing.assert_array_equal(margins(None, x, MULTI), np.zeros((5, 3)))
    assert load_ensemble(EMPTY_ENSEMBLE) is None


def test_binary_margins_are_zero_then_the_boosters_margin():
    x, y = _rows(BINARY, 0)
    booster = boost(EMPTY_ENSEMBLE, x, y, _params(BINARY), 2, kind="classification")
    result = margins(booster, x, BINARY)
    assert result.shape == (len(x), 2)
    np.testing.assert_array_equal(result[:, 0], 0.0)
    np.testing.assert_allclose(result[:, 1], booster.predict(xgboost.DMatrix(x), output_margin=True))
    assert np.ptp(result[:, 1]) > 0
    np.testing.assert_allclose(margins(booster, x, BINARY, rounds=(0, 1))[:, 1],
                               booster.predict(xgboost.DMatrix(x), output_margin=True, iteration_range=(0, 1)))
