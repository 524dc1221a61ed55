"""A factory's part in histogram-aggregated federated boosting (``xgb-histogram``): what it computes from its
own rows for the server to grow trees on the federation's rows together, without any row leaving it.

Per run, once: a quantile sketch of each column (`column_sketch`); the server merges them into the bin
edges every factory shares. Per level of each boosting round's trees: the gradient and hessian sums of the
factory's rows in every bin of every column of the nodes the server asks for (`level_histograms`): below the
root, one child of each split, the one with fewer rows; the server has the other as its parent's sums less
its sibling's, as XGBoost's ``hist`` method does, so a level costs half the bytes. Summed over factories
they are the sums pooled rows would give, so the trees the server grows are those of boosting on the pooled
rows with these bins, as XGBoost's ``hist`` method grows them (no subsampling: identical for any split of the
rows among factories).

The sums reveal more than bagging's trees do: a bin holding one row gives away that row's gradient, and with
the ensemble its label. README's threat model says so; a factory's policy can refuse tree rounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmeta.common.trees.ensemble import balanced_weights
from fedmeta.common.trees.settings import MAX_BINS
from fedmeta.common.trees.shape import TreeShape

__all__ = [
    "HESSIAN_FLOOR",
    "LevelSplits",
    "bin_columns",
    "check_edges",
    "column_sketch",
    "gradients",
    "level_histograms",
    "level_nodes",
    "open_nodes",
    "route_rows",
    "summed_nodes",
    "weighted_quantiles",
]

HESSIAN_FLOOR = 1e-16  # XGBoost's floor of a logistic or softmax hessian


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``[columns, levels]``: for each column of ``values [n, columns]``, the smallest value whose share of the
    rows' ``weights`` at or below it reaches each level."""
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    shares = np.cumsum(weights[order], axis=0) / weights.sum()
    picked = [np.minimum(np.searchsorted(shares[:, column], levels), len(values) - 1)
              for column in range(values.shape[1])]
    return np.stack([ordered[rows, column] for column, rows in enumerate(picked)])


def column_sketch(x: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``[columns, bins - 1]``: each column's quantiles at ``1/bins .. (bins-1)/bins`` (float32, the precision
    XGBoost compares splits in), the rows weighted as the factory boosts on them (``weights``: classes balanced),
    as XGBoost's own sketch weighs them: rare failures get bins of their own, not a sliver of one."""
    if not np.isfinite(x).all():
        raise ValueError("the rows hold NaN or infinite values; the trees' bins need finite ones")
    row_weights = np.ones(len(x)) if weights is None else weights
    return weighted_quantiles(x.astype(np.float32), row_weights, np.arange(1, bins) / bins).astype(np.float32)


def check_edges(edges: np.ndarray, shape: TreeShape) -> None:
    """Raise ``ValueError`` unless ``edges`` are bin edges of this federation's columns: float32 ``[columns, bins -
    1]`` with at most `MAX_BINS` bins, each row's finite edges ascending, then +inf padding (what a factory checks
    before it bins its rows on edges the server sent)."""
    if edges.dtype != np.float32 or edges.ndim != 2 or edges.shape[0] != shape.num_feature or \
            not 1 <= edges.shape[1] < MAX_BINS:
        raise ValueError(f"bin edges must be float32 [{shape.num_feature}, 1..{MAX_BINS - 1}], got {edges.dtype} "
                         f"{list(edges.shape)}")
    finite = np.isfinite(edges)
    padded = np.isposinf(edges)
    prefix = np.cumprod(finite, axis=1).astype(bool)
    ascending = np.where(finite[:, 1:] & finite[:, :-1], np.diff(np.where(finite, edges, 0), axis=1) > 0, True)
    if not (np.array_equal(prefix, finite) and (finite | padded).all() and ascending.all()):
        raise ValueError("bin edges must ascend in each column, then pad with +inf")


def bin_columns(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[n, columns]`` bin of each value: how many of its column's edges are at most it (``edges [columns,
    bins - 1]``, ascending, padded with +inf). Bin < t is XGBoost's ``x < edges[t - 1]``, in float32."""
    values = x.astype(np.float32)
    if values.ndim != 2 or values.shape[1] != edges.shape[0]:
        raise ValueError(f"rows of {values.shape[1:]} columns for bin edges of {edges.shape[0]} columns")
    return np.stack([np.searchsorted(edges[c], values[:, c], side="right") for c in range(edges.shape[0])], axis=1)


@dataclass(frozen=True)
class LevelSplits:
    """The splits a boosting round's trees hold so far, as the server sends them: ``(group, node) -> (column,
    bin)``, nodes numbered as a heap (node i's children are 2i + 1 and 2i + 2); a row goes left where its bin in
    that column is below the split's bin. ``level``: the depth whose open nodes the factories sum; ``summed``:
    ``(group, parent) -> child``, the one child of each split at the level above that they sum (None: every
    open node)."""

    level: int
    splits: Mapping[tuple[int, int], tuple[int, int]]
    summed: Mapping[tuple[int, int], int] | None = None

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "level": self.level, "splits": [[g, n, c, b] for (g, n), (c, b) in sorted(self.splits.items())]}
        if self.summed is not None:
            document["summed"] = [[g, parent, child] for (g, parent), child in sorted(self.summed.items())]
        return document

    @classmethod
    def from_json(cls, data: object, shape: TreeShape, bins: int, max_depth: int) -> LevelSplits:
        """Parse and bound what the server sent: a bad value is a ``ValueError`` naming it."""
        try:
            level = int(data["level"])  # type: ignore[index]
            splits = {(int(g), int(n)): (int(c), int(b)) for g, n, c, b in data["splits"]}  # type: ignore[index]
            listed = data.get("summed")  # type: ignore[union-attr]
            summed = None if listed is None else {(int(g), int(parent)): int(child) for g, parent, child in listed}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"histogram splits must be {{level, splits: [[group, node, column, bin]], summed: "
                             f"[[group, parent, child]]}}: {type(error).__name__}: {error}") from None
        if not 0 <= level < max_depth:
            raise ValueError(f"histogram level {level} outside 0..{max_depth - 1}")
        for (group, node), (column, bin_) in splits.items():
            if not (0 <= group < shape.groups and 0 <= node < 2**level - 1 and 0 <= column < shape.num_feature
                    and 1 <= bin_ < bins):
                raise ValueError(f"split {(group, node, column, bin_)} outside this federation's trees")
        above = level_nodes(level - 1) if level else range(0)
        for (group, parent), child in (summed or {}).items():
            if parent not in above or (group, parent) not in splits or child not in (2 * parent + 1, 2 * parent + 2):
                raise ValueError(f"summed child {(group, parent, child)} is not a child of a split above level {level}")
        return cls(level, splits, summed)


def level_nodes(level: int) -> range:
    """The heap numbers of a tree's nodes at depth ``level`` (the root's is 0)."""
    return range(2**level - 1, 2 ** (level + 1) - 1)


def open_nodes(splits: LevelSplits, group: int) -> list[int]:
    """The heap numbers of ``group``'s nodes at ``splits.level`` whose parent split (the root at level 0)."""
    if splits.level == 0:
        return [0]
    parents = [node for node in level_nodes(splits.level - 1) if (group, node) in splits.splits]
    return [child for parent in parents for child in (2 * parent + 1, 2 * parent + 2)]


def summed_nodes(splits: LevelSplits, group: int) -> list[int]:
    """The heap numbers, ascending, of ``group``'s nodes at ``splits.level`` whose sums the factories send."""
    if splits.level == 0 or splits.summed is None:
        return open_nodes(splits, group)
    return sorted(child for (summed_group, _), child in splits.summed.items() if summed_group == group)


def route_rows(bins: np.ndarray, splits: LevelSplits, group: int) -> np.ndarray:
    """``[n]`` each row's node at ``splits.level`` in ``group``'s tree, or -1 where its path ended in a leaf."""
    node = np.zeros(len(bins), dtype=np.int64)
    for _ in range(splits.level):
        column, threshold = np.full(len(bins), -1), np.zeros(len(bins), dtype=np.int64)
        for (split_group, split_node), (split_column, split_bin) in splits.splits.items():
            at = (node == split_node) if split_group == group else np.zeros(len(bins), dtype=bool)
            column[at], threshold[at] = split_column, split_bin
        splitting = column >= 0
        goes_left = bins[np.arange(len(bins)), np.maximum(column, 0)] < threshold
        node = np.where(splitting, 2 * node + np.where(goes_left, 1, 2), -1)
    return node


def gradients(margin: np.ndarray, y: np.ndarray, shape: TreeShape) -> tuple[np.ndarray, np.ndarray]:
    """``[n, groups]`` gradients and hessians of XGBoost's objective at ``margin``, classes weighted to balance
    (`balanced_weights`), as a factory's own boosting weighs them."""
    if shape.objective == "reg:squarederror":
        grad, hess = margin - y[:, None], np.ones_like(margin)
    elif shape.objective == "binary:logistic":
        p = 1.0 / (1.0 + np.exp(-margin))
        grad, hess = p - y[:, None], np.maximum(p * (1 - p), HESSIAN_FLOOR)
    else:
        shifted = np.exp(margin - margin.max(axis=1, keepdims=True))
        p = shifted / shifted.sum(axis=1, keepdims=True)
        grad = p - np.eye(shape.groups)[y.astype(np.int64)]
        hess = np.maximum(2 * p * (1 - p), HESSIAN_FLOOR)
    weights = balanced_weights(y, shape.kind)
    if weights is not None:
        grad, hess = grad * weights[:, None], hess * weights[:, None]
    return grad, hess


def level_histograms(bins: np.ndarray, grad: np.ndarray, hess: np.ndarray, splits: LevelSplits,
                     num_bins: int) -> list[np.ndarray]:
    """For each group, ``[summed nodes, columns, bins, 2]``: the sums of the gradients and hessians of the rows
    in each node the server asks for (`summed_nodes`' order) falling in each bin of each column."""
    columns = bins.shape[1]
    out = []
    for group in range(grad.shape[1]):
        nodes = summed_nodes(splits, group)  # ascending
        node = route_rows(bins, splits, group)
        rows = np.flatnonzero(np.isin(node, nodes))
        slot = np.searchsorted(nodes, node[rows])
        index = ((slot[:, None] * columns + np.arange(columns)) * num_bins + bins[rows]).ravel()
        size = len(nodes) * columns * num_bins
        sums = [np.bincount(index, np.repeat(values[rows, group], columns), minlength=size)
                for values in (grad, hess)]
        out.append(np.stack(sums, axis=-1).reshape(len(nodes), columns, num_bins, 2))
    return out
