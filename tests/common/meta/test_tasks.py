"""Tests for `common.meta.tasks`: task shapes, disjointness, determinism and validation.

Test factories encode provenance in the features: column 0 is the factory id and
column 1 the row id, so every sampled row can be traced back to its source.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmeta.common import (
    ClassificationTaskSampler,
    FactoryData,
    RegressionTaskSampler,
    TaskBatch,
    TaskSampler,
)


def traced_factory(
    factory_id: int, n: int, *, labels: torch.Tensor | None = None, extra: int = 2
) -> FactoryData:
    """Factory whose x row is ``[factory_id, row_id, noise...]``; y is given or regression."""
    rows = torch.arange(n, dtype=torch.float32)
    noise = torch.randn(n, extra, generator=torch.Generator().manual_seed(factory_id))
    x = torch.cat([torch.full((n, 1), float(factory_id)), rows[:, None], noise], dim=1)
    y = rows * 0.5 + factory_id if labels is None else labels
    return FactoryData(f"plant-{factory_id}", x, y)


def labelled_factory(factory_id: int, class_counts: dict[int, int]) -> FactoryData:
    labels = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in class_counts.items()])
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(factory_id))
    return traced_factory(factory_id, labels.numel(), labels=labels[perm])


def provenance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(factory ids, row ids) of rows in a ``[..., features]`` tensor."""
    return x[..., 0].long(), x[..., 1].long()


def assert_one_factory_disjoint(batch: TaskBatch) -> None:
    for t in range(batch.num_tasks):
        s_fac, s_row = provenance(batch.support_x[t])
        q_fac, q_row = provenance(batch.query_x[t])
        factories = torch.cat([s_fac, q_fac]).unique()
        assert factories.numel() == 1, f"task {t} mixes factories {factories.tolist()}"
        rows = torch.cat([s_row, q_row])
        assert rows.unique().numel() == rows.numel(), f"task {t} repeats a row"


def assert_same_batch(a: TaskBatch, b: TaskBatch) -> None:
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --------------------------------------------------------------------------- FactoryData


def test_factory_data_reports_num_samples_and_feature_shape():
    f = FactoryData("p", torch.zeros(7, 3, 5), torch.zeros(7))
    assert f.num_samples == 7
    assert f.feature_shape == (3, 5)


def test_factory_data_is_immutable():
    f = FactoryData("p", torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.name = "q"  # type: ignore[misc]


def test_factory_data_rejects_nan_in_x_naming_count_row_and_column():
    x = torch.zeros(6, 4)
    x[3, 2] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"'plant-1'.*2 non-finite values.*row 3, column 2: nan"):
        FactoryData("plant-1", x, torch.zeros(6))


def test_factory_data_rejects_non_finite_in_multidim_x_with_feature_index():
    x = torch.zeros(4, 2, 3)
    x[1, 1, 2] = float("-inf")
    with pytest.raises(
        ValueError, match=r"'p'.*1 non-finite value .*row 1, feature index \(1, 2\)"
    ):
        FactoryData("p", x, torch.zeros(4))


def test_factory_data_rejects_nan_in_floating_y():
    y = torch.zeros(5)
    y[4] = float("nan")
    with pytest.raises(ValueError, match=r"'p'.*y has 1 non-finite value .*row 4"):
        FactoryData("p", torch.zeros(5, 2), y)


def test_factory_data_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"'p'.*x has 5 rows but y has 4"):
        FactoryData("p", torch.zeros(5, 2), torch.zeros(4))


def test_factory_data_rejects_empty_data():
    with pytest.raises(ValueError, match=r"'p' has no samples"):
        FactoryData("p", torch.zeros(0, 2), torch.zeros(0))


def test_factory_data_rejects_non_1d_y():
    with pytest.raises(ValueError, match=r"'p'.*y must be 1-D.*\(5, 1\)"):
        FactoryData("p", torch.zeros(5, 2), torch.zeros(5, 1))


def test_factory_data_rejects_integer_x():
    with pytest.raises(ValueError, match=r"'p'.*x must have a floating dtype.*int64"):
        FactoryData("p", torch.zeros(5, 2, dtype=torch.int64), torch.zeros(5))


def test_factory_data_rejects_bool_y():
    with pytest.raises(ValueError, match=r"'p'.*y must be floating .* or integer"):
        FactoryData("p", torch.zeros(5, 2), torch.zeros(5, dtype=torch.bool))


# ----------------------------------------------------------------------------- TaskBatch


def make_batch(t: int = 3, s: int = 2, q: int = 4) -> TaskBatch:
    return TaskBatch(
        torch.arange(t)[:, None, None].expand(t, s, 5).float(),
        torch.zeros(t, s),
        torch.arange(t)[:, None, None].expand(t, q, 5).float(),
        torch.zeros(t, q),
    )


def test_task_batch_counts_tasks_and_examples():
    batch = make_batch(t=3, s=2, q=4)
    assert batch.num_tasks == 3
    assert batch.num_examples == 3 * (2 + 4)


def test_task_batch_task_keeps_leading_dim_and_selects_task():
    batch = make_batch()
    for i, expected in ((0, 0), (2, 2), (-1, 2)):
        one = batch.task(i)
        assert one.num_tasks == 1
        assert one.support_x.shape == (1, 2, 5)
        assert one.query_y.shape == (1, 4)
        assert (one.support_x == expected).all() and (one.query_x == expected).all()
    with pytest.raises(IndexError):
        batch.task(3)


def test_task_batch_parts_are_its_tasks_in_order_at_most_so_many_each():
    batch = make_batch(t=5)
    parts = batch.parts(2)
    assert [part.num_tasks for part in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([part.support_x for part in parts]), batch.support_x)
    assert torch.equal(torch.cat([part.query_x for part in parts]), batch.query_x)
    assert batch.parts(0) == [batch] and batch.parts(5) == [batch] and batch.parts(9) == [batch]


def test_task_batch_to_moves_every_tensor():
    assert_same_batch(make_batch().to("cpu"), make_batch())
    moved = make_batch().to("meta")
    assert isinstance(moved, TaskBatch)
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert getattr(moved, name).device.type == "meta", name


def test_task_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        TaskBatch(torch.zeros(2, 3, 4), torch.zeros(2, 2), torch.zeros(2, 1, 4), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="disagree"):
        TaskBatch(torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 1, 5), torch.zeros(2, 1))


# ------------------------------------------------------------------ RegressionTaskSampler


def regression_factories() -> list[FactoryData]:
    return [traced_factory(i, n) for i, n in enumerate((15, 40, 3000))]


def test_regression_batch_shapes():
    sampler = RegressionTaskSampler(regression_factories(), shots=5, query_size=10, seed=0)
    batch = sampler.sample(8)
    assert batch.support_x.shape == (8, 5, 4)
    assert batch.support_y.shape == (8, 5)
    assert batch.query_x.shape == (8, 10, 4)
    assert batch.query_y.shape == (8, 10)
    assert batch.support_y.dtype == torch.float32


def test_regression_support_and_query_disjoint_from_one_factory_with_matching_targets():
    factories = regression_factories()
    sampler = RegressionTaskSampler(factories, shots=5, query_size=10, seed=1)
    batch = sampler.sample(64)
    assert_one_factory_disjoint(batch)
    # Targets travel with their rows.
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        fac, row = provenance(x)
        assert torch.equal(y, row.float() * 0.5 + fac.float())
    # Every factory gets picked, including the large one that takes the rejection path.
    assert provenance(batch.support_x)[0].unique().tolist() == [0, 1, 2]


def test_regression_uses_every_row_of_an_exactly_sized_factory():
    sampler = RegressionTaskSampler([traced_factory(0, 15)], shots=5, query_size=10, seed=0)
    batch = sampler.sample(4)
    rows = torch.cat([provenance(batch.support_x)[1], provenance(batch.query_x)[1]], dim=1)
    assert (rows.sort(dim=1).values == torch.arange(15)).all()


def test_regression_same_seed_same_batches_and_different_seed_differs():
    factories = regression_factories()
    a = RegressionTaskSampler(factories, shots=5, query_size=10, seed=7)
    b = RegressionTaskSampler(factories, shots=5, query_size=10, seed=7)
    c = RegressionTaskSampler(factories, shots=5, query_size=10, seed=8)
    first_a, second_a = a.sample(4), a.sample(4)
    assert_same_batch(first_a, b.sample(4))
    assert_same_batch(second_a, b.sample(4))
    assert not torch.equal(first_a.support_x, second_a.support_x)
    assert not torch.equal(first_a.support_x, c.sample(4).support_x)


def test_regression_rejects_factory_too_small_naming_it_and_its_sample_count():
    factories = [traced_factory(1, 40), FactoryData("plant-3", torch.zeros(7, 4), torch.zeros(7))]
    msg = r"factory 'plant-3' has 7 samples; a 5-shot task with 10 query samples needs 15"
    with pytest.raises(ValueError, match=msg):
        RegressionTaskSampler(factories, shots=5, query_size=10, seed=0)


@pytest.mark.parametrize(
    ("shots", "query_size", "match"),
    [(0, 10, "shots must be >= 1, got 0"), (5, 0, "query_size must be >= 1, got 0")],
)
def test_regression_rejects_non_positive_sizes(shots, query_size, match):
    with pytest.raises(ValueError, match=match):
        RegressionTaskSampler(regression_factories(), shots=shots, query_size=query_size, seed=0)


def test_regression_rejects_no_factories():
    with pytest.raises(ValueError, match="at least one factory"):
        RegressionTaskSampler([], shots=1, query_size=1, seed=0)


def test_regression_rejects_mismatched_feature_shapes_naming_both_factories():
    factories = [traced_factory(0, 30), traced_factory(1, 30, extra=3)]
    with pytest.raises(
        ValueError, match=r"'plant-1' has feature shape \(5,\).*'plant-0' has \(4,\)"
    ):
        RegressionTaskSampler(factories, shots=2, query_size=2, seed=0)


def test_regression_rejects_integer_targets():
    factory = FactoryData("plant-9", torch.zeros(30, 2), torch.zeros(30, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"'plant-9'.*floating targets"):
        RegressionTaskSampler([factory], shots=2, query_size=2, seed=0)


def test_sample_rejects_zero_tasks():
    sampler = RegressionTaskSampler(regression_factories(), shots=1, query_size=1, seed=0)
    with pytest.raises(ValueError, match="num_tasks must be >= 1, got 0"):
        sampler.sample(0)


# -------------------------------------------------------------- ClassificationTaskSampler


def classification_factories() -> list[FactoryData]:
    return [
        labelled_factory(0, {0: 12, 1: 9, 2: 30, 3: 8}),
        labelled_factory(1, {0: 3, 1: 20, 2: 15, 3: 7, 5: 10}),
        labelled_factory(2, {1: 9, 4: 9, 7: 9}),
    ]


def test_classification_batch_shapes_and_label_dtype():
    sampler = ClassificationTaskSampler(
        classification_factories(), ways=3, shots=5, query_shots=2, seed=0
    )
    batch = sampler.sample(6)
    assert batch.support_x.shape == (6, 15, 4)
    assert batch.support_y.shape == (6, 15)
    assert batch.query_x.shape == (6, 6, 4)
    assert batch.query_y.shape == (6, 6)
    assert batch.support_y.dtype == torch.int64


def test_classification_support_and_query_disjoint_from_one_factory():
    sampler = ClassificationTaskSampler(
        classification_factories(), ways=3, shots=5, query_shots=2, seed=1
    )
    batch = sampler.sample(64)
    assert_one_factory_disjoint(batch)
    assert provenance(batch.support_x)[0].unique().tolist() == [0, 1, 2]


def test_classification_labels_balanced_and_consistent_with_original_classes():
    factories = classification_factories()
    ways, shots, query_shots = 3, 5, 2
    sampler = ClassificationTaskSampler(factories, ways, shots, query_shots, seed=2)
    batch = sampler.sample(64)
    for t in range(batch.num_tasks):
        sy, qy = batch.support_y[t], batch.query_y[t]
        assert torch.equal(sy.bincount(minlength=ways), torch.full((ways,), shots))
        assert torch.equal(qy.bincount(minlength=ways), torch.full((ways,), query_shots))
        fac, s_rows = provenance(batch.support_x[t])
        _, q_rows = provenance(batch.query_x[t])
        original = factories[int(fac[0])].y
        mapping: dict[int, int] = {}
        for label, cls in zip(
            torch.cat([sy, qy]).tolist(),
            original[torch.cat([s_rows, q_rows])].tolist(),
            strict=True,
        ):
            assert mapping.setdefault(label, cls) == cls, f"task {t}: label {label} mixes classes"
        assert len(set(mapping.values())) == ways
        # Only classes with >= shots + query_shots rows are eligible (class 3 of plant-1 has 7,
        # fine; class 0 of plant-1 has 3, not).
        assert not (int(fac[0]) == 1 and 0 in mapping.values())


def test_classification_support_and_query_order_does_not_reveal_labels():
    sampler = ClassificationTaskSampler(
        classification_factories(), ways=3, shots=5, query_shots=2, seed=3
    )
    batch = sampler.sample(32)
    sorted_support = (batch.support_y.diff(dim=1) >= 0).all(dim=1)
    sorted_query = (batch.query_y.diff(dim=1) >= 0).all(dim=1)
    assert not sorted_support.all()
    assert not sorted_query.all()


def test_classification_shuffle_labels_randomises_mapping():
    factory = labelled_factory(0, {0: 10, 1: 10, 2: 10})
    sampler = ClassificationTaskSampler([factory], ways=3, shots=2, query_shots=2, seed=4)
    batch = sampler.sample(32)
    _, rows = provenance(batch.support_x)
    agrees = (factory.y[rows] == batch.support_y).all(dim=1)
    assert not agrees.all()


def test_classification_without_shuffle_keeps_sorted_class_order():
    factory = labelled_factory(0, {10: 10, 20: 10, 30: 10, 40: 10})
    # ways == number of classes: labels are exactly the sorted class ranks.
    full = ClassificationTaskSampler(
        [factory], ways=4, shots=2, query_shots=3, seed=5, shuffle_labels=False
    )
    batch = full.sample(16)
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        original = factory.y[provenance(x)[1]]
        assert torch.equal(y, original // 10 - 1)
    # ways < number of classes: label order follows original-class order within each task.
    partial = ClassificationTaskSampler(
        [factory], ways=2, shots=2, query_shots=1, seed=5, shuffle_labels=False
    )
    batch = partial.sample(32)
    original = factory.y[provenance(batch.support_x)[1]]
    for t in range(batch.num_tasks):
        low = original[t][batch.support_y[t] == 0].unique()
        high = original[t][batch.support_y[t] == 1].unique()
        assert low.numel() == high.numel() == 1 and low.item() < high.item()


def test_classification_same_seed_same_batches_and_different_seed_differs():
    factories = classification_factories()
    a = ClassificationTaskSampler(factories, ways=3, shots=2, query_shots=2, seed=9)
    b = ClassificationTaskSampler(factories, ways=3, shots=2, query_shots=2, seed=9)
    c = ClassificationTaskSampler(factories, ways=3, shots=2, query_shots=2, seed=10)
    first_a, second_a = a.sample(4), a.sample(4)
    assert_same_batch(first_a, b.sample(4))
    assert_same_batch(second_a, b.sample(4))
    assert not torch.equal(first_a.support_x, second_a.support_x)
    assert not torch.equal(first_a.support_x, c.sample(4).support_x)


def test_classification_rejects_too_few_eligible_classes_listing_class_counts():
    factories = [
        labelled_factory(0, {0: 20, 1: 20, 2: 20}),
        FactoryData(
            "line-2",
            torch.zeros(52, 4),
            torch.tensor([0] * 40 + [1] * 9 + [2] * 3),
        ),
    ]
    msg = (
        r"factory 'line-2' has only 2 classes with >= 6 samples "
        r"\(class counts: \{0: 40, 1: 9, 2: 3\}\); "
        r"a 3-way 5-shot task with 1 query shot per class needs 3"
    )
    with pytest.raises(ValueError, match=msg):
        ClassificationTaskSampler(factories, ways=3, shots=5, query_shots=1, seed=0)


def test_classification_rejects_single_class_factory():
    factory = FactoryData("line-1", torch.zeros(30, 2), torch.zeros(30, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"'line-1' has only 1 class .*\{0: 30\}"):
        ClassificationTaskSampler([factory], ways=2, shots=1, query_shots=1, seed=0)


def test_classification_rejects_floating_labels():
    factory = FactoryData("line-4", torch.zeros(30, 2), torch.zeros(30))
    with pytest.raises(ValueError, match=r"'line-4'.*integer class ids"):
        ClassificationTaskSampler([factory], ways=2, shots=1, query_shots=1, seed=0)


@pytest.mark.parametrize(
    ("ways", "shots", "query_shots", "match"),
    [
        (1, 5, 1, "ways must be >= 2, got 1"),
        (2, 0, 1, "shots must be >= 1, got 0"),
        (2, 5, 0, "query_shots must be >= 1, got 0"),
    ],
)
def test_classification_rejects_invalid_sizes(ways, shots, query_shots, match):
    with pytest.raises(ValueError, match=match):
        ClassificationTaskSampler(classification_factories(), ways, shots, query_shots, seed=0)


def test_classification_rejects_no_factories():
    with pytest.raises(ValueError, match="at least one factory"):
        ClassificationTaskSampler([], ways=2, shots=1, query_shots=1, seed=0)


def test_classification_rejects_mismatched_feature_shapes():
    factories = [
        labelled_factory(0, {0: 5, 1: 5}),
        FactoryData("line-7", torch.zeros(10, 9), torch.arange(10) % 2),
    ]
    with pytest.raises(ValueError, match=r"'line-7' has feature shape \(9,\)"):
        ClassificationTaskSampler(factories, ways=2, shots=1, query_shots=1, seed=0)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_sampling_ignores_and_does_not_advance_global_rng(kind):
    def build() -> TaskSampler:
        if kind == "regression":
            return RegressionTaskSampler(regression_factories(), shots=5, query_size=10, seed=3)
        return ClassificationTaskSampler(
            classification_factories(), ways=3, shots=2, query_shots=2, seed=3
        )

    torch.manual_seed(0)
    sampler = build()
    first = sampler.sample(4)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)  # sampling drew nothing from the global RNG
    torch.rand(100)
    assert_same_batch(first, build().sample(4))  # and the global RNG state does not matter


def test_both_samplers_satisfy_task_sampler_protocol():
    regression = RegressionTaskSampler(regression_factories(), shots=1, query_size=1, seed=0)
    classification = ClassificationTaskSampler(
        classification_factories(), ways=2, shots=1, query_shots=1, seed=0
    )
    for sampler in (regression, classification):
        assert isinstance(sampler, TaskSampler)


def test_regression_tasks_carry_the_units_of_their_support_rows():
    x = torch.arange(12, dtype=torch.float32)[:, None]
    factory = FactoryData("grouped", x, x[:, 0] * 2, groups=torch.arange(12) // 3)
    batch = RegressionTaskSampler([factory], shots=4, query_size=2, seed=0).sample(3)
    assert batch.support_groups is not None and batch.support_groups.shape == (3, 4)
    assert torch.equal(batch.support_groups, (batch.support_x[..., 0] // 3).long())
    assert torch.equal(batch.task(1).support_groups, batch.support_groups[1:2])
    assert RegressionTaskSampler([traced_factory(0, 12)], 4, 2, seed=0).sample(2).support_groups is None


def test_groups_of_the_wrong_shape_or_type_are_refused():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="groups must hold one integer unit id per row"):
        FactoryData("f", x, torch.zeros(4), groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups must hold one integer unit id per row"):
        FactoryData("f", x, torch.zeros(4), groups=torch.zeros(4))
    with pytest.raises(ValueError, match="support_groups must be"):
        TaskBatch(torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1),
                  torch.zeros(1, 3, dtype=torch.long))
