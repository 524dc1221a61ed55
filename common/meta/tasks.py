"""Few-shot tasks drawn from factories' private data.

Meta-learning trains on *tasks* rather than on single examples: each task is a small
labelled support set to adapt on and a query set to judge the adapted model by, both
drawn from one factory, which mirrors deployment (a new line or plant brings 5-20
labelled samples). Sampling runs every meta-step, so the samplers precompute what they
can at construction, index with tensors, and loop in Python only over tasks and ways,
never over rows. Every sampler owns a private ``torch.Generator`` so that a seed
reproduces the run without touching (or being disturbed by) the global RNG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "ClassificationTaskSampler",
    "FactoryData",
    "RegressionTaskSampler",
    "TaskBatch",
    "TaskSampler",
    "target_spread",
]

# Below this many rows ``randperm`` is as cheap as rejection sampling; see `_sample_distinct`.
_REJECTION_MIN_ROWS = 2048
_REJECTION_MAX_TRIES = 8
# Class-count listings in error messages are cut after this many classes.
_MAX_LISTED_CLASSES = 20


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def _non_finite_problem(name: str, field: str, values: Tensor) -> str | None:
    """Describe non-finite entries of ``values`` (row first) or return None if all finite.

    Runs once per factory at construction, so the extra reductions that locate the first
    bad entry are affordable and save the user a search through the data.
    """
    bad = ~torch.isfinite(values)
    count = int(bad.sum())
    if count == 0:
        return None
    flat = bad.reshape(values.shape[0], -1)
    row = int(flat.any(dim=1).nonzero()[0])
    col = int(flat[row].nonzero()[0])
    value = values[row].reshape(-1)[col].item()
    if values.dim() == 1:
        where = f"row {row}"
    elif values.dim() == 2:
        where = f"row {row}, column {col}"
    else:
        feature_index = tuple(
            int(i) for i in torch.unravel_index(torch.tensor(col), values.shape[1:])
        )
        where = f"row {row}, feature index {feature_index}"
    return (
        f"factory {name!r}: {field} has {_plural(count, 'non-finite value')} "
        f"(first at {where}: {value})"
    )


@dataclass(frozen=True, eq=False)  # eq=False: `==` on tensors is elementwise, not a bool
class FactoryData:
    """One factory's labelled samples, validated once so that samplers can trust them.

    ``x`` has shape ``[n, *feature_shape]`` and a floating dtype; ``y`` has shape ``[n]``,
    floating for regression and integer (int64) class ids for classification. Bad rows
    (NaN sensor readings, misaligned labels) are rejected here, naming the factory,
    because they would otherwise surface as a NaN meta-loss far from their cause.
    """

    name: str
    x: Tensor
    y: Tensor
    # The unit each row comes from ([n] integers), where rows of one unit are near copies (C-MAPSS:
    # overlapping windows of one engine); cross-validation then holds out whole units. None: independent rows.
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise TypeError(f"factory {name!r}: x and y must be torch.Tensor")
        if self.x.dim() < 1:
            raise ValueError(
                f"factory {name!r}: x must have a leading sample dimension, got a scalar"
            )
        if self.y.dim() != 1:
            raise ValueError(
                f"factory {name!r}: y must be 1-D with one target per row, "
                f"got shape {tuple(self.y.shape)}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"factory {name!r}: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}"
            )
        if self.x.shape[0] == 0:
            raise ValueError(f"factory {name!r} has no samples")
        if not self.x.is_floating_point():
            raise ValueError(f"factory {name!r}: x must have a floating dtype, got {self.x.dtype}")
        if self.y.dtype == torch.bool or self.y.is_complex():
            raise ValueError(
                f"factory {name!r}: y must be floating (regression) or integer (classification), "
                f"got {self.y.dtype}"
            )
        groups = self.groups
        if groups is not None and (groups.shape != self.y.shape or groups.is_floating_point() or groups.is_complex()):
            raise ValueError(
                f"factory {name!r}: groups must hold one integer unit id per row, got shape "
                f"{tuple(groups.shape)} and dtype {groups.dtype} for {self.y.shape[0]} rows"
            )
        problem = _non_finite_problem(name, "x", self.x)
        if problem is None and self.y.is_floating_point():
            problem = _non_finite_problem(name, "y", self.y)
        if problem is not None:
            raise ValueError(problem)

    @property
    def num_samples(self) -> int:
        return self.x.shape[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """A meta-batch of ``T`` tasks of equal size, stacked so models can run them at once.

    Shapes: ``support_x [T, S, *feat]``, ``support_y [T, S]``, ``query_x [T, Q, *feat]``,
    ``query_y [T, Q]``. Shapes are checked on construction (cheap) so a mis-stacked batch
    fails here rather than as a broadcasting surprise inside the inner loop.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    support_groups: Tensor | None = None  # [T, S] unit of each support row (`FactoryData.groups`)
    # [T] each: where regression targets are standardised per task (`standardized`), the mean and standard
    # deviation that map them back to the factory's units (None: the targets are in those units).
    target_mean: Tensor | None = None
    target_std: Tensor | None = None

    def __post_init__(self) -> None:
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        groups = self.support_groups
        if (self.target_mean is None) != (self.target_std is None):
            raise ValueError("target_mean and target_std come together")
        if self.target_std is not None and self.target_std.shape != sy.shape[:1]:
            raise ValueError(f"target_std must be [T] for {sy.shape[0]} tasks, got {tuple(self.target_std.shape)}")
        if groups is not None and groups.shape != sy.shape:
            raise ValueError(f"support_groups must be [T, S] like support_y {tuple(sy.shape)}, "
                             f"got {tuple(groups.shape)}")
        if sy.dim() != 2 or qy.dim() != 2:
            raise ValueError(
                f"support_y and query_y must be [T, S] and [T, Q], got {tuple(sy.shape)} "
                f"and {tuple(qy.shape)}"
            )
        if sx.shape[:2] != sy.shape or qx.shape[:2] != qy.shape:
            raise ValueError(
                f"x and y disagree: support_x {tuple(sx.shape)} vs support_y {tuple(sy.shape)}, "
                f"query_x {tuple(qx.shape)} vs query_y {tuple(qy.shape)}"
            )
        if sx.shape[0] != qx.shape[0] or sx.shape[2:] != qx.shape[2:]:
            raise ValueError(
                f"support and query disagree in task count or feature shape: "
                f"support_x {tuple(sx.shape)}, query_x {tuple(qx.shape)}"
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def num_examples(self) -> int:
        """Rows in the batch, ``T * (S + Q)``: the unit for throughput figures."""
        return self.num_tasks * (self.support_x.shape[1] + self.query_x.shape[1])

    @property
    def standardized(self) -> bool:
        """Whether the targets are each task's standardised ones (`standardize_targets`)."""
        return self.target_std is not None

    def _map(self, transform: Callable[[Tensor], Tensor]) -> TaskBatch:
        """Every tensor of the batch through ``transform`` (a device move, a slice of tasks)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return TaskBatch(**{name: None if value is None else transform(value) for name, value in values.items()})

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TaskBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def in_factory_units(self) -> TaskBatch:
        """The batch with its targets back in the factory's units (itself where they never left them): for
        models that fit the factory's own values (a tree on pooled rows, a model trained from scratch)."""
        mean, std = self.target_mean, self.target_std
        if mean is None or std is None:
            return self

        def raw(y: Tensor) -> Tensor:
            return y.double() * std[:, None] + mean[:, None]

        return dataclasses.replace(self, support_y=raw(self.support_y), query_y=raw(self.query_y), target_mean=None,
                                   target_std=None)

    def standardize_targets(self) -> TaskBatch:
        """Regression targets standardised per task with its support rows' mean and standard deviation
        (`target_spread`), support and query alike, in float64 before the cast to float32 (a target near
        1e6 varies below float32's resolution there). A factory knows only its support rows' labels, so
        that is all the scale may come from; the batch keeps the statistics to report errors in the
        factory's units."""
        if self.standardized:
            raise ValueError("the targets are standardised already")
        support = self.support_y.double()
        mean = support.mean(dim=1)
        std = target_spread(support)

        def standard(y: Tensor) -> Tensor:
            return ((y.double() - mean[:, None]) / std[:, None]).float()

        return dataclasses.replace(self, support_y=standard(self.support_y), query_y=standard(self.query_y),
                                   target_mean=mean, target_std=std)

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, as a batch with ``T == 1`` (views, no copy).

        Keeping the task dimension lets per-task code (evaluation, debugging) reuse the
        task-batched models unchanged.
        """
        t = self.num_tasks
        if not -t <= i < t:
            raise IndexError(f"task index {i} out of range for {t} tasks")
        i %= t
        return self._map(lambda tensor: tensor[i : i + 1])

    def parts(self, tasks: int) -> list[TaskBatch]:
        """The batch cut into consecutive parts of at most ``tasks`` tasks (0 or more than it holds: itself)."""
        if tasks <= 0 or tasks >= self.num_tasks:
            return [self]
        return [self._map(lambda tensor, start=start: tensor[start : start + tasks])
                for start in range(0, self.num_tasks, tasks)]


@runtime_checkable
class TaskSampler(Protocol):
    """Anything that yields meta-batches; the meta-learners depend only on this."""

    def sample(self, num_tasks: int) -> TaskBatch: ...


def target_spread(y: Tensor) -> Tensor:
    """The standard deviation (n - 1) of each row of targets ``y [T, S]``, in float64; where it is zero or
    below float32's resolution at the targets' size (one row, or equal targets) the targets' own size
    instead (their mean's magnitude, 1 for zero), so a standardised target stays in proportion to
    the factory's units."""
    y = y.double()
    mean = y.mean(dim=1)
    std = y.std(dim=1) if y.shape[1] > 1 else torch.zeros_like(mean)
    size = torch.where(mean.abs() > 0, mean.abs(), 1.0)
    return torch.where(std > 1e-6 * size, std, size)


def _sample_distinct(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct indices from ``range(n)``, uniformly random and in random order.

    ``randperm`` is O(n) (about 1 ms at n = 100k), paid per task per meta-step. When k is
    small against n, drawing k indices with replacement and redrawing on a collision is
    O(k); conditioned on no collision it is exactly uniform over ordered k-subsets. With
    ``4 k^2 <= n`` a collision has probability <= 1/8, so retries are rare; after a few
    the exact O(n) path takes over.
    """
    if n >= _REJECTION_MIN_ROWS and 4 * k * k <= n:
        for _ in range(_REJECTION_MAX_TRIES):
            idx = torch.randint(n, (k,), generator=generator)
            if torch.unique(idx).numel() == k:
                return idx
    return torch.randperm(n, generator=generator)[:k]


def _check_factories(factories: Sequence[FactoryData]) -> tuple[FactoryData, ...]:
    """Freeze the factory list and check the factories can be stacked into one batch."""
    factories = tuple(factories)
    if not factories:
        raise ValueError("need at least one factory")
    first = factories[0]
    for f in factories[1:]:
        if f.feature_shape != first.feature_shape:
            raise ValueError(
                f"factory {f.name!r} has feature shape {f.feature_shape} but factory "
                f"{first.name!r} has {first.feature_shape}; all factories must share one"
            )
        for what, a, b in (
            ("x dtype", f.x.dtype, first.x.dtype),
            ("y dtype", f.y.dtype, first.y.dtype),
            ("device", f.x.device, first.x.device),
        ):
            if a != b:
                raise ValueError(
                    f"factory {f.name!r} has {what} {a} but factory {first.name!r} has {b}; "
                    f"all factories must share one so their tasks can be stacked"
                )
    return factories


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


class RegressionTaskSampler:
    """K-shot regression tasks: ``shots`` support and ``query_size`` query rows per task.

    Each task picks a factory uniformly at random (so small factories weigh as much as
    large ones, as in federated averaging over clients) and then ``shots + query_size``
    distinct rows of it; the first ``shots`` form the support set. Support and query never
    share a row, so the query loss measures generalisation, not memorisation. With
    ``standardize_targets`` every task's targets come standardised by its support rows
    (`TaskBatch.standardize_targets`), as a factory standardises the few rows it labels.
    """

    def __init__(
        self, factories: Sequence[FactoryData], shots: int, query_size: int, seed: int,
        standardize_targets: bool = False,
    ) -> None:
        _check_positive(shots=shots, query_size=query_size)
        self.factories = _check_factories(factories)
        self.shots = shots
        self.query_size = query_size
        self.standardize_targets = standardize_targets
        needed = shots + query_size
        for f in self.factories:
            if not f.y.is_floating_point():
                raise ValueError(
                    f"factory {f.name!r} has y of dtype {f.y.dtype}; regression needs "
                    f"floating targets"
                )
            if f.num_samples < needed:
                raise ValueError(
                    f"factory {f.name!r} has {_plural(f.num_samples, 'sample')}; a {shots}-shot "
                    f"task with {_plural(query_size, 'query sample')} needs {needed}"
                )
        self._generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> TaskBatch:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        g = self._generator
        needed = self.shots + self.query_size
        picks = torch.randint(len(self.factories), (num_tasks,), generator=g).tolist()
        xs, ys, groups = [], [], []
        for p in picks:
            f = self.factories[p]
            rows = _sample_distinct(f.num_samples, needed, g)
            xs.append(f.x[rows])
            ys.append(f.y[rows])
            groups.append(None if f.groups is None else f.groups[rows[: self.shots]])
        x, y = torch.stack(xs), torch.stack(ys)
        s = self.shots
        support_groups = None if any(group is None for group in groups) else torch.stack(groups)
        batch = TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], support_groups)
        return batch.standardize_targets() if self.standardize_targets else batch


class ClassificationTaskSampler:
    """N-way K-shot classification tasks with labels relabelled to ``0..ways-1``.

    Each task picks a factory uniformly at random, then ``ways`` distinct classes among
    those with at least ``shots + query_shots`` rows, then ``shots`` support and
    ``query_shots`` query rows per class (disjoint). With ``shuffle_labels`` the class to
    label mapping is random per task, which stops the initialisation from memorising
    "label 2 means bearing fault" and forces it to learn to adapt; without it, label ``j``
    is the ``j``-th smallest chosen original class, so with ``ways`` equal to the number
    of classes the labels keep their meaning (useful for evaluation). Support and query
    rows are each shuffled so that position does not reveal the label.
    """

    def __init__(
        self,
        factories: Sequence[FactoryData],
        ways: int,
        shots: int,
        query_shots: int,
        seed: int,
        shuffle_labels: bool = True,
    ) -> None:
        if ways < 2:
            raise ValueError(f"ways must be >= 2, got {ways}")
        _check_positive(shots=shots, query_shots=query_shots)
        self.factories = _check_factories(factories)
        self.ways = ways
        self.shots = shots
        self.query_shots = query_shots
        self.shuffle_labels = shuffle_labels
        needed = shots + query_shots
        # Per factory: row indices of each eligible class, in ascending original-class order.
        self._class_rows: list[list[Tensor]] = []
        for f in self.factories:
            if f.y.is_floating_point():
                raise ValueError(
                    f"factory {f.name!r} has y of dtype {f.y.dtype}; classification needs "
                    f"integer class ids"
                )
            y = f.y.cpu()
            classes, counts = torch.unique(y, sorted=True, return_counts=True)
            rows_by_class = torch.argsort(y, stable=True).split(counts.tolist())
            eligible = [
                r for r, c in zip(rows_by_class, counts.tolist(), strict=True) if c >= needed
            ]
            if len(eligible) < ways:
                listing = dict(zip(classes.tolist(), counts.tolist(), strict=True))
                shown = ", ".join(
                    f"{k}: {v}" for k, v in list(listing.items())[:_MAX_LISTED_CLASSES]
                )
                if len(listing) > _MAX_LISTED_CLASSES:
                    shown += f", ... ({len(listing)} classes)"
                raise ValueError(
                    f"factory {f.name!r} has only {_plural(len(eligible), 'class', 'classes')} "
                    f"with >= {needed} samples "
                    f"(class counts: {{{shown}}}); a {ways}-way {shots}-shot task with "
                    f"{_plural(query_shots, 'query shot')} per class needs {ways}"
                )
            self._class_rows.append(eligible)
        self._generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> TaskBatch:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        g = self._generator
        ways, shots, needed = self.ways, self.shots, self.shots + self.query_shots
        # Labels per way, laid out [ways, shots] / [ways, query_shots] before shuffling.
        support_labels = torch.arange(ways).repeat_interleave(shots)
        query_labels = torch.arange(ways).repeat_interleave(self.query_shots)
        picks = torch.randint(len(self.factories), (num_tasks,), generator=g).tolist()
        sx, sy, qx, qy = [], [], [], []
        for p in picks:
            f, class_rows = self.factories[p], self._class_rows[p]
            chosen = _sample_distinct(len(class_rows), ways, g)
            if not self.shuffle_labels:
                chosen = chosen.sort().values
            rows = torch.stack(
                [
                    class_rows[c][_sample_distinct(len(class_rows[c]), needed, g)]
                    for c in chosen.tolist()
                ]
            )  # [ways, shots + query_shots]
            s_perm = torch.randperm(support_labels.numel(), generator=g)
            q_perm = torch.randperm(query_labels.numel(), generator=g)
            s_rows = rows[:, :shots].reshape(-1)[s_perm]
            q_rows = rows[:, shots:].reshape(-1)[q_perm]
            sx.append(f.x[s_rows])
            qx.append(f.x[q_rows])
            sy.append(support_labels[s_perm])
            qy.append(query_labels[q_perm])
        device = self.factories[0].y.device
        return TaskBatch(
            torch.stack(sx), torch.stack(sy).to(device), torch.stack(qx), torch.stack(qy).to(device)
        )
