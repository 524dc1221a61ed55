"""The server's part in histogram-aggregated federated boosting (``xgb-histogram``): merge the factories'
column sketches into shared bin edges, sum their level histograms (`common.trees.histograms`), choose each
open node's split by XGBoost's gain, and write the finished trees as an XGBoost model that `append_trees`
adds to the ensemble. Below the root the factories sum one child of each split, the one with fewer rows (by
hessian); the other's sums are its parent's less its sibling's. The trees are those of XGBoost's ``hist``
method on the pooled rows with these bins: the gain and leaf weight below are XGBoost's (``lambda``,
``min_child_weight``, ``max_delta_step``). A regression starts, as XGBoost does, at the mean target of the
pooled rows (`start_at_mean`), not at 0: from 0, the first trees spend their rate on the offset (20 trees at
rate 0.1 leave 12% of it)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedmeta.common.trees.ensemble import (
    EMPTY_ENSEMBLE,
    MAX_CLASS_LEAF_STEP,
    TreesRejected,
    append_trees,
    tree_free_model,
)
from fedmeta.common.trees.histogram_wire import unpack_histogram
from fedmeta.common.trees.histograms import LevelSplits, level_nodes, open_nodes, summed_nodes, weighted_quantiles
from fedmeta.common.trees.settings import TreeSettings
from fedmeta.common.trees.shape import TreeShape

__all__ = [
    "MIN_SPLIT_GAIN",
    "GrowingRound",
    "HistogramReplies",
    "grow_round",
    "merge_sketches",
    "read_histograms",
    "round_model",
    "start_at_mean",
    "sum_histograms",
]

log = logging.getLogger(__name__)

MIN_SPLIT_GAIN = 1e-6  # XGBoost's kRtEps: a split must lower the loss by more than this
_NO_PARENT = 2147483647  # XGBoost's parent of a root


def merge_sketches(sketches: Sequence[tuple[np.ndarray, float]], bins: int) -> np.ndarray:
    """``[columns, bins - 1]`` ascending float32 bin edges, padded with +inf: the quantiles of the factories'
    sketches (`column_sketch`, each with its row count) pooled, each quantile weighted by its factory's rows."""
    if not sketches:
        raise ValueError("no factory sent a column sketch")
    points = np.concatenate([sketch for sketch, _ in sketches], axis=1).astype(np.float64).T  # [points, columns]
    weights = np.concatenate([np.full(sketch.shape[1], count / sketch.shape[1]) for sketch, count in sketches])
    picked = weighted_quantiles(points, weights, np.arange(1, bins) / bins)
    edges = np.full((points.shape[1], bins - 1), np.inf, dtype=np.float32)
    for column, values in enumerate(picked):
        unique = np.unique(values.astype(np.float32))
        edges[column, :len(unique)] = unique
    return edges


def read_histograms(packed: Sequence[np.ndarray], splits: LevelSplits, shape: TreeShape,
                    bins: int) -> list[np.ndarray]:
    """A factory's level reply unpacked (`histogram_wire`); raise `TreesRejected` unless it holds one level's
    sums of this federation: a ``[summed nodes, columns, bins, 2]`` finite array per group, hessians at least 0,
    and every column of a node summing to the same totals (each sums the node's rows once)."""
    if len(packed) != shape.groups:
        raise TreesRejected(f"{len(packed)} histogram groups; this federation's trees have {shape.groups}")
    histograms = []
    for group, blob in enumerate(packed):
        try:
            histogram = unpack_histogram(blob, (len(summed_nodes(splits, group)), shape.num_feature, bins, 2))
        except ValueError as error:
            raise TreesRejected(f"group {group}'s histogram: {error}") from None
        if not np.isfinite(histogram).all():
            raise TreesRejected(f"group {group}'s histogram holds NaN or infinite sums")
        if (histogram[..., 1] < 0).any():
            raise TreesRejected(f"group {group}'s histogram holds a negative hessian sum")
        totals = histogram.sum(axis=2)
        spread = np.abs(totals - totals[:, :1]).max(initial=0.0)
        if spread > 1e-6 * (1.0 + np.abs(totals).max(initial=0.0)):
            raise TreesRejected(f"group {group}'s columns sum to different node totals (off by {spread:.3g})")
        histograms.append(histogram)
    return histograms


def sum_histograms(replies: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The factories' level histograms summed group by group."""
    return [np.sum([reply[group] for reply in replies], axis=0) for group in range(len(replies[0]))]


@dataclass
class _Node:
    grad: float
    hess: float
    gain: float = 0.0


@dataclass
class GrowingRound:
    """One boosting round's trees (one per class group) grown level by level: the splits chosen so far (sent to
    the factories as `LevelSplits`), every node's gradient and hessian sums, the last level's histograms (its
    children's are derived from them), and the level to sum next."""

    shape: TreeShape
    settings: TreeSettings
    level: int = 0
    splits: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    nodes: dict[tuple[int, int], _Node] = field(default_factory=dict)
    histograms: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether every tree is finished: the depth reached, or no node left open."""
        level = LevelSplits(self.level, self.splits)
        return self.level >= self.settings.depth or not any(open_nodes(level, g) for g in range(self.shape.groups))

    def level_splits(self) -> LevelSplits:
        """The splits so far, and the child of each split above this level whose sums the factories send: the
        one with the smaller hessian sum (fewer rows)."""
        above = level_nodes(self.level - 1) if self.level else range(0)
        summed = {}
        for group, parent in self.splits:
            if parent in above:
                left, right = 2 * parent + 1, 2 * parent + 2
                smaller = self.nodes[group, left].hess <= self.nodes[group, right].hess
                summed[group, parent] = left if smaller else right
        return LevelSplits(self.level, dict(self.splits), summed)

    def _weight(self, grad: float | np.ndarray, hess: float | np.ndarray) -> float | np.ndarray:
        weight = -grad / (hess + self.settings.reg_lambda)
        if self.shape.kind == "classification":
            weight = np.clip(weight, -MAX_CLASS_LEAF_STEP, MAX_CLASS_LEAF_STEP)
        return weight

    def _gain(self, grad: float | np.ndarray, hess: float | np.ndarray) -> float | np.ndarray:
        """XGBoost's ``CalcGain``: the loss a node's weight saves (with ``max_delta_step``, at the clipped one)."""
        weight = self._weight(grad, hess)
        return -(2 * grad * weight + (hess + self.settings.reg_lambda) * weight**2)

    def grow(self, level: LevelSplits, histograms: Sequence[np.ndarray]) -> None:
        """Choose the split of every open node at this level from the factories' summed ``histograms`` (of the
        nodes ``level``, this level's `level_splits`, asked for; each other node is its parent less its sibling),
        then step down."""
        full: dict[tuple[int, int], np.ndarray] = {}
        for group, histogram in enumerate(histograms):
            for slot, node in enumerate(summed_nodes(level, group)):
                full[group, node] = histogram[slot]
            for node in open_nodes(level, group):
                if (group, node) not in full:
                    sibling = node + 1 if node % 2 else node - 1
                    derived = self.histograms[group, (node - 1) // 2] - full[group, sibling]
                    derived[..., 1] = np.maximum(derived[..., 1], 0.0)  # a bin all of whose rows went one way
                    full[group, node] = derived
            for node in open_nodes(level, group):
                if self.level == 0:
                    grad, hess = full[group, 0][0].sum(axis=0)
                    self.nodes[group, 0] = _Node(float(grad), float(hess))
                self._split(group, node, full[group, node])
        self.histograms = full
        self.level += 1

    def _split(self, group: int, node: int, histogram: np.ndarray) -> None:
        """The best split of ``node`` by its ``[columns, bins, 2]`` sums, if any lowers the loss."""
        parent = self.nodes[group, node]
        left = np.cumsum(histogram, axis=1)[:, :-1]  # [columns, bins - 1, 2]: a split at bin t keeps bins < t
        right = np.array([parent.grad, parent.hess]) - left
        gain = self._gain(left[..., 0], left[..., 1]) + self._gain(right[..., 0], right[..., 1]) - \
            self._gain(parent.grad, parent.hess)
        mcw = self.settings.min_child_weight
        valid = (left[..., 1] >= mcw) & (right[..., 1] >= mcw) & (left[..., 1] > 0) & (right[..., 1] > 0)
        gain = np.where(valid, gain, -np.inf)
        column, cut = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if not gain[column, cut] > MIN_SPLIT_GAIN:
            return
        parent.gain = float(gain[column, cut])
        self.splits[group, node] = (int(column), int(cut) + 1)
        for child, (grad, hess) in ((2 * node + 1, left[column, cut]), (2 * node + 2, right[column, cut])):
            self.nodes[group, child] = _Node(float(grad), float(hess))

    def tree_json(self, group: int, edges: np.ndarray, tree_id: int) -> dict[str, object]:
        """``group``'s tree in XGBoost's JSON, its nodes numbered breadth first; leaf values times the rate."""
        order, queue = [], [0]
        while queue:
            node = queue.pop(0)
            order.append(node)
            if (group, node) in self.splits:
                queue += [2 * node + 1, 2 * node + 2]
        ids = {node: i for i, node in enumerate(order)}
        rate = self.settings.rate
        left, right, parents, columns, conditions, weights, hessians, gains = ([] for _ in range(8))
        for node in order:
            stats = self.nodes[group, node]
            weight = float(self._weight(stats.grad, stats.hess)) * rate
            split = self.splits.get((group, node))
            left.append(ids[2 * node + 1] if split else -1)
            right.append(ids[2 * node + 2] if split else -1)
            parents.append(_NO_PARENT if node == 0 else ids[(node - 1) // 2])
            columns.append(split[0] if split else 0)
            conditions.append(float(edges[split[0], split[1] - 1]) if split else weight)
            weights.append(weight)
            hessians.append(stats.hess)
            gains.append(stats.gain)
        count = len(order)
        return {
            "base_weights": weights, "categories": [], "categories_nodes": [], "categories_segments": [],
            "categories_sizes": [], "default_left": [0] * count, "id": tree_id, "left_children": left,
            "loss_changes": gains, "parents": parents, "right_children": right, "split_conditions": conditions,
            "split_indices": columns, "split_type": [0] * count, "sum_hessian": hessians,
            "tree_param": {"num_deleted": "0", "num_feature": str(self.shape.num_feature), "num_nodes": str(count),
                           "size_leaf_vector": "1"},
        }


def round_model(grown: GrowingRound, edges: np.ndarray) -> bytes:
    """The round's finished trees as a model of their own (one boosting round), for `append_trees`."""
    document = tree_free_model(grown.shape, grown.settings)
    model = document["learner"]["gradient_booster"]["model"]  # type: ignore[index]
    groups = grown.shape.groups
    model["trees"] = [grown.tree_json(group, edges, group) for group in range(groups)]
    model["tree_info"] = list(range(groups))
    model["iteration_indptr"] = [0, groups]
    model["gbtree_model_param"]["num_trees"] = str(groups)
    return json.dumps(document).encode()


HistogramReplies = Callable[[LevelSplits], Sequence[tuple[str, Sequence[np.ndarray]]]]
"""Ask the round's factories for their histograms at a level: (factory, packed histograms) for each that
answered."""


def _accepted(replies: Sequence[tuple[str, Sequence[np.ndarray]]], splits: LevelSplits, shape: TreeShape,
              bins: int) -> tuple[list[list[np.ndarray]], int]:
    """The replies that pass `read_histograms`, read; and how many were rejected (each logged)."""
    accepted, rejected = [], 0
    for factory, packed in replies:
        try:
            accepted.append(read_histograms(packed, splits, shape, bins))
        except TreesRejected as error:
            log.warning("histograms of factory %s left out: %s", factory, error)
            rejected += 1
    return accepted, rejected


def start_at_mean(ensemble: bytes, edges: np.ndarray, shape: TreeShape, settings: TreeSettings,
                  ask: HistogramReplies, *, needed: int) -> tuple[bytes, dict[str, float]]:
    """A regression federation's ensemble before its first tree: no trees, starting at the mean target of the
    factories' rows (XGBoost's ``base_score``), from their sums at the root at margin 0 (the first level the
    first tree asks for: the gradient sum is minus the targets' sum, the hessian sum the row count). Any
    other ensemble, or a classification, as it is; with fewer than ``needed`` accepted replies, it stays
    empty and the trees start from 0."""
    if ensemble != EMPTY_ENSEMBLE or shape.kind != "regression":
        return ensemble, {}
    splits = GrowingRound(shape, settings).level_splits()
    accepted, rejected = _accepted(ask(splits), splits, shape, edges.shape[1] + 1)
    summary = {"replies": float(len(accepted)), "rejected": float(rejected)}
    grad, hess = sum_histograms(accepted)[0][0, 0].sum(axis=0) if accepted else (0.0, 0.0)
    if len(accepted) < max(needed, 1) or not hess > 0:
        log.warning("root sums of %d factories accepted (%d needed), over %g rows; the trees start from 0",
                    len(accepted), needed, hess)
        return ensemble, summary
    document = tree_free_model(shape, settings, start=float(-grad / hess))
    return json.dumps(document).encode(), summary


def grow_round(ensemble: bytes, edges: np.ndarray, shape: TreeShape, settings: TreeSettings,
               ask: HistogramReplies, *, needed: int) -> tuple[bytes, dict[str, float]]:
    """One boosting round of ``xgb-histogram``, shared by the server and the benchmark's in-process rounds: its
    trees grown level by level on the sums of the factories' histograms (``ask``), each reply read and checked
    first (`read_histograms`; a rejected one is left out and logged), then appended to ``ensemble``. With fewer than
    ``needed`` accepted replies at a level the round is dropped and the ensemble stays as it was. ``replies``:
    the fewest factories whose sums a level used."""
    grown, rejected, bins, replies = GrowingRound(shape, settings), 0, edges.shape[1] + 1, math.inf
    while not grown.done:
        splits = grown.level_splits()
        accepted, refused = _accepted(ask(splits), splits, shape, bins)
        rejected += refused
        if len(accepted) < needed:
            log.warning("%d factories' histograms accepted at level %d, fewer than %d; ensemble unchanged",
                        len(accepted), grown.level, needed)
            return ensemble, {"replies": float(len(accepted)), "rejected": float(rejected), "model-unchanged": 1.0}
        replies = min(replies, len(accepted))
        grown.grow(splits, sum_histograms(accepted))
    return append_trees(ensemble, round_model(grown, edges)), {"replies": float(replies), "rejected": float(rejected)}
