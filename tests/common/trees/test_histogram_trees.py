"""Histogram-aggregated federated boosting (``xgb-histogram``): the factories' summed histograms grow the trees
XGBoost grows on their pooled rows, from the pooled rows' mean target as XGBoost starts, whatever way the rows
are split among factories, and the server refuses histograms that cannot be one level's honest sums."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnxmltools
import onnxruntime
import pytest
from onnxmltools.convert.common.data_types import FloatTensorType

from fedmeta.common.trees.ensemble import (
    EMPTY_ENSEMBLE,
    TreesRejected,
    balanced_weights,
    boost,
    booster_params,
    check_trees,
    load_ensemble,
    margins,
    raw_margins,
    starting_margin,
    tree_free_model,
)
from fedmeta.common.trees.histogram_wire import pack_histograms
from fedmeta.common.trees.histograms import (
    LevelSplits,
    bin_columns,
    column_sketch,
    gradients,
    level_histograms,
    open_nodes,
    summed_nodes,
)
from fedmeta.common.trees.settings import TreeSettings
from fedmeta.common.trees.shape import TreeShape
from fedmeta.common.trees.split_finding import grow_round, merge_sketches, read_histograms, start_at_mean

BINS = 12
# Integer columns 0..9 with an edge at every value: each value its own bin, as XGBoost's exact method sees them.
EDGES = np.concatenate([np.tile(np.arange(1, 10, dtype=np.float32), (4, 1)),
                        np.full((4, BINS - 10), np.inf, dtype=np.float32)], axis=1)


def _rows(kind: str, seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, size=(n, 4)).astype(float)
    if kind == "regression":
        return x, 2 * x[:, 0] + np.sin(x[:, 1]) + 0.3 * rng.normal(size=n)
    return x, (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n) > 6).astype(float)


def _asker(parts: list[tuple[np.ndarray, np.ndarray]], shape: TreeShape, ensemble: bytes,
           edges: np.ndarray = EDGES) -> Callable[[LevelSplits], list[tuple[str, list[np.ndarray]]]]:
    """The factories holding ``parts``, asked for a level's histograms at ``ensemble``'s margins."""

    def ask(splits: LevelSplits) -> list[tuple[str, list[np.ndarray]]]:
        replies = []
        for index, (x, y) in enumerate(parts):
            grad, hess = gradients(raw_margins(ensemble, x, shape), y, shape)
            replies.append((f"f{index}", pack_histograms(level_histograms(bin_columns(x, edges), grad, hess, splits,
                                                                          BINS))))
        return replies

    return ask


def _federated(parts: list[tuple[np.ndarray, np.ndarray]], shape: TreeShape, settings: TreeSettings, rounds: int,
               edges: np.ndarray = EDGES, *, start: bool = True) -> bytes:
    """The start (``start``: as the server starts; else margin 0) and ``rounds`` boosting rounds grown on the
    parts' summed histograms, as the server grows them."""
    ensemble = EMPTY_ENSEMBLE
    if start:
        ensemble, _ = start_at_mean(ensemble, edges, shape, settings, _asker(parts, shape, ensemble, edges), needed=1)
    for _ in range(rounds):
        ensemble, summary = grow_round(ensemble, edges, shape, settings, _asker(parts, shape, ensemble, edges),
                                       needed=1)
        assert summary["rejected"] == 0 and "model-unchanged" not in summary
    return ensemble


SETTINGS = TreeSettings(depth=3, rate=0.3, subsample=1.0, min_child_weight=2.0, reg_lambda=1.0)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_histogram_trees_are_xgboosts_trees_on_the_pooled_rows(kind: str) -> None:
    x, y = _rows(kind)
    shape = TreeShape(4, kind, 1 if kind == "regression" else 2)
    federated = load_ensemble(_federated([(x, y)], shape, SETTINGS, rounds=6))
    params = {**booster_params(shape, SETTINGS, rate=SETTINGS.rate, seed=0), "tree_method": "exact"}
    if kind == "regression":  # XGBoost's own start: the mean target
        params["base_score"] = y.mean()
    reference = boost(None, x, y, params, 6, kind=kind)
    assert np.abs(margins(federated, x, shape) - margins(reference, x, shape)).max() < 1e-5
    # and the trees are not trivial: the ensemble explains most of the target
    if kind == "regression":
        assert np.mean((margins(federated, x, shape)[:, 0] - y) ** 2) < 0.25 * y.var()


def test_a_regression_starts_at_the_pooled_mean_target_however_the_rows_are_split() -> None:
    """Before its first tree the ensemble predicts the mean of every factory's targets together, as XGBoost's
    ``hist`` starts on the pooled rows; a classification, an ensemble with trees, or too few replies: unchanged."""
    x, y = _rows("regression", seed=6)
    y = y + 40.0  # far from 0: trees grown from 0 would spend their first rounds on the offset
    shape = TreeShape(4, "regression")
    parts = [(x[:30], y[:30]), (x[30:], y[30:])]
    started, summary = start_at_mean(EMPTY_ENSEMBLE, EDGES, shape, SETTINGS, _asker(parts, shape, EMPTY_ENSEMBLE),
                                     needed=2)
    assert summary == {"replies": 2.0, "rejected": 0.0}
    assert np.allclose(margins(load_ensemble(started), x, shape), y.mean(), rtol=1e-6, atol=0)
    assert start_at_mean(EMPTY_ENSEMBLE, EDGES, shape, SETTINGS, _asker(parts, shape, EMPTY_ENSEMBLE),
                         needed=3)[0] == EMPTY_ENSEMBLE
    assert start_at_mean(started, EDGES, shape, SETTINGS, _asker(parts, shape, started), needed=1)[0] == started
    classes = TreeShape(4, "classification", 2)
    assert start_at_mean(EMPTY_ENSEMBLE, EDGES, classes, SETTINGS, _asker(parts, classes, EMPTY_ENSEMBLE),
                         needed=1) == (EMPTY_ENSEMBLE, {})
    grown, from_zero = (_federated(parts, shape, SETTINGS, rounds=3, start=start) for start in (True, False))
    errors = [np.mean((margins(load_ensemble(model), x, shape)[:, 0] - y) ** 2) for model in (grown, from_zero)]
    assert errors[0] < 0.05 * errors[1]


def test_boosting_on_from_an_ensemble_keeps_its_start() -> None:
    """A factory continuing the federation's trees passes XGBoost a base_score of 0 (what bagging's first round
    needs); the ensemble's own start must win, or every prediction drops by it."""
    x, y = _rows("regression", seed=7)
    shape = TreeShape(4, "regression")
    start = json.dumps(tree_free_model(shape, SETTINGS, start=float(y.mean()))).encode()
    continued = boost(start, x, y, booster_params(shape, SETTINGS, rate=0.3, seed=0), 2, kind="regression")
    assert starting_margin(continued) == pytest.approx(y.mean(), rel=1e-6)
    assert abs(np.mean(margins(continued, x, shape)[:, 0]) - y.mean()) < 0.1 * y.std()
    with pytest.raises(ValueError, match="finite margin"):
        tree_free_model(TreeShape(4, "classification", 2), SETTINGS, start=1.0)


def test_the_trees_do_not_depend_on_how_the_rows_are_split_among_factories() -> None:
    x, y = _rows("regression", seed=1)
    shape = TreeShape(4, "regression")
    pooled = _federated([(x, y)], shape, SETTINGS, rounds=4)
    split = _federated([(x[:50], y[:50]), (x[50:260], y[50:260]), (x[260:], y[260:])], shape, SETTINGS, rounds=4)
    trees = [json.loads(model)["learner"]["gradient_booster"]["model"]["trees"] for model in (split, pooled)]
    for split_tree, pooled_tree in zip(*trees, strict=True):  # the same splits; sums differ in their last bits
        for key in ("left_children", "right_children", "split_indices"):
            assert split_tree[key] == pooled_tree[key]
        assert np.allclose(split_tree["split_conditions"], pooled_tree["split_conditions"], rtol=1e-12, atol=0)


def test_factories_sum_one_child_of_each_split_and_the_server_derives_its_sibling() -> None:
    """Below the root a level's replies hold one node per split (the smaller child), half the bytes of every open
    node; the sibling the server derives (parent less child) is the sibling the factories would have summed."""
    x, y = _rows("regression", seed=4)
    shape = TreeShape(4, "regression")
    grad, hess = gradients(np.zeros((len(x), 1)), y, shape)
    bins = bin_columns(x, EDGES)
    asked: list[tuple[int, int, int]] = []  # (level, open nodes, nodes summed)

    def ask(splits: LevelSplits) -> list[tuple[str, list[np.ndarray]]]:
        reply = level_histograms(bins, grad, hess, splits, BINS)
        every = level_histograms(bins, grad, hess, LevelSplits(splits.level, splits.splits), BINS)[0]
        opened = open_nodes(splits, 0)
        asked.append((splits.level, len(opened), len(reply[0])))
        if splits.level:
            sums = dict(zip(summed_nodes(splits, 0), reply[0], strict=True))
            for (_, parent), child in splits.summed.items():
                sibling = 4 * parent + 3 - child  # the two children sum to 4 * parent + 3
                derived = parents[parent] - sums[child]
                assert np.allclose(derived, every[opened.index(sibling)], rtol=0, atol=1e-9)
                assert sums[child][0, :, 1].sum() <= derived[0, :, 1].sum()  # the smaller child was asked for
        parents.clear()
        parents.update(zip(opened, every, strict=True))
        return [("f0", pack_histograms(reply))]

    parents: dict[int, np.ndarray] = {}
    grow_round(EMPTY_ENSEMBLE, EDGES, shape, SETTINGS, ask, needed=1)
    assert asked[0] == (0, 1, 1) and all(summed * 2 == opened for level, opened, summed in asked[1:])
    assert sum(summed for *_, summed in asked) < 0.6 * sum(opened for _, opened, _ in asked)


def test_a_summed_child_that_is_not_a_splits_child_is_refused_by_name() -> None:
    shape = TreeShape(4, "regression")
    sent = LevelSplits(1, {(0, 0): (0, 5)}, {(0, 0): 1}).to_json()
    assert LevelSplits.from_json(sent, shape, BINS, max_depth=3).summed == {(0, 0): 1}
    for summed in ([[0, 0, 3]], [[0, 1, 3]], "left"):
        with pytest.raises(ValueError, match="summed"):
            LevelSplits.from_json({**sent, "summed": summed}, shape, BINS, max_depth=3)


def test_three_class_histogram_trees_learn_and_pass_the_servers_tree_checks() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    y = np.digitize(x[:, 0] + 0.3 * x[:, 1], [-0.5, 0.5]).astype(float)
    shape = TreeShape(4, "classification", 3)
    edges = merge_sketches([(column_sketch(x[:150], BINS), 150), (column_sketch(x[150:], BINS), 150)], BINS)
    ensemble = _federated([(x[:150], y[:150]), (x[150:], y[150:])], shape, SETTINGS, rounds=5, edges=edges)
    check_trees(ensemble, shape, max_rounds=5, max_leaf=10.0, max_bytes=2**20)
    accuracy = (margins(load_ensemble(ensemble), x, shape).argmax(axis=1) == y).mean()
    assert accuracy > 0.85


def test_merged_edges_are_ascending_padded_and_cut_the_pooled_rows_evenly() -> None:
    rng = np.random.default_rng(3)
    small, large = rng.normal(size=(100, 2)), rng.normal(2.0, size=(900, 2))
    edges = merge_sketches([(column_sketch(small, BINS), 100), (column_sketch(large, BINS), 900)], BINS)
    finite = edges[np.isfinite(edges)]
    assert edges.shape == (2, BINS - 1) and edges.dtype == np.float32 and finite.size >= 2 * (BINS - 3)
    assert all(np.all(np.diff(row[np.isfinite(row)]) > 0) for row in edges)
    counts = np.bincount(bin_columns(np.concatenate([small, large]), edges)[:, 0], minlength=BINS)
    assert counts.max() < 3 * 1000 / BINS  # quantiles of the pooled rows, weighted by each factory's rows


def test_a_sketch_weighted_as_the_rows_are_boosted_gives_a_rare_class_bins_of_its_own() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 1))
    y = (x[:, 0] > 1.9).astype(float)  # about 3 in 100, all in the column's upper tail
    weights = balanced_weights(y, "classification")
    tail = [(column_sketch(x, BINS, w)[0] > 1.9).sum() for w in (None, weights)]
    assert tail[0] <= 1 and tail[1] >= BINS // 3  # unweighted: no cut among the failures; weighted: many


def test_a_sketch_of_rows_with_nan_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        column_sketch(np.array([[1.0], [np.nan]]), BINS)


def _one_level_reply() -> tuple[list[np.ndarray], LevelSplits, TreeShape]:
    x, y = _rows("regression")
    shape = TreeShape(4, "regression")
    splits = LevelSplits(1, {(0, 0): (0, 5)})
    grad, hess = gradients(np.zeros((len(x), 1)), y, shape)
    return level_histograms(bin_columns(x, EDGES), grad, hess, splits, BINS), splits, shape


def test_an_honest_level_reply_passes_the_servers_checks_bit_for_bit() -> None:
    reply, splits, shape = _one_level_reply()
    assert reply[0].shape == (2, 4, BINS, 2)
    [read] = read_histograms(pack_histograms(reply), splits, shape, BINS)
    assert np.array_equal(read, reply[0])


@pytest.mark.parametrize(("tamper", "named"), [
    (lambda h: h[:, :, :-1], "shape"),
    (lambda h: np.where(np.arange(h.size).reshape(h.shape) == 7, np.nan, h), "NaN or infinite"),
    (lambda h: h * np.array([1.0, -1.0]), "negative hessian"),
    (lambda h: h + (np.arange(h.shape[1]) == 2)[None, :, None, None] * 5.0, "different node totals"),
])
def test_histograms_that_cannot_be_honest_sums_are_refused_by_name(tamper, named: str) -> None:
    reply, splits, shape = _one_level_reply()
    with pytest.raises(TreesRejected, match=named):
        read_histograms(pack_histograms([tamper(reply[0])]), splits, shape, BINS)


def test_a_rejected_factory_is_left_out_and_too_few_replies_leave_the_ensemble_unchanged() -> None:
    x, y = _rows("regression")
    shape = TreeShape(4, "regression")

    def ask_with_liar(splits: LevelSplits) -> list[tuple[str, list[np.ndarray]]]:
        grad, hess = gradients(np.zeros((len(x), 1)), y, shape)
        honest = level_histograms(bin_columns(x, EDGES), grad, hess, splits, BINS)
        return [("honest", pack_histograms(honest)), ("liar", pack_histograms([np.full_like(honest[0], np.inf)]))]

    grown, summary = grow_round(EMPTY_ENSEMBLE, EDGES, shape, SETTINGS, ask_with_liar, needed=1)
    assert summary["rejected"] == SETTINGS.depth and grown != EMPTY_ENSEMBLE
    assert grown == _federated([(x, y)], shape, SETTINGS, rounds=1, start=False)  # the liar moved nothing
    started, summary = start_at_mean(EMPTY_ENSEMBLE, EDGES, shape, SETTINGS, ask_with_liar, needed=1)
    assert summary["rejected"] == 1 and np.allclose(margins(load_ensemble(started), x, shape), y.mean())
    unchanged, summary = grow_round(EMPTY_ENSEMBLE, EDGES, shape, SETTINGS, ask_with_liar, needed=2)
    assert unchanged == EMPTY_ENSEMBLE and summary["model-unchanged"] == 1.0


@pytest.mark.parametrize("sent", [
    {"level": 9, "splits": []},
    {"level": 1, "splits": [[0, 0, 99, 3]]},
    {"level": 1, "splits": [[0, 0, 1, 0]]},
    {"level": 1, "splits": [[0, 5, 1, 2]]},
    {"level": "x", "splits": []},
    {"splits": []},
])
def test_splits_outside_the_federations_trees_are_refused_by_name(sent: dict) -> None:
    with pytest.raises(ValueError, match=r"split|level"):
        LevelSplits.from_json(json.loads(json.dumps(sent)), TreeShape(4, "regression"), BINS, max_depth=3)


def test_histogram_trees_convert_to_onnx_that_predicts_as_xgboost_does() -> None:
    """What `fedmeta export` does with a tree package: the server-written trees are a model onnxmltools reads."""
    x, y = _rows("regression", seed=4)
    shape = TreeShape(4, "regression")
    booster = load_ensemble(_federated([(x[:200], y[:200]), (x[200:], y[200:])], shape, SETTINGS, rounds=5))
    graph = onnxmltools.convert_xgboost(booster, initial_types=[("x", FloatTensorType([None, 4]))])
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (predicted,) = session.run(None, {"x": x.astype(np.float32)})
    assert np.abs(predicted.reshape(-1) - margins(booster, x, shape)[:, 0]).max() < 1e-4
