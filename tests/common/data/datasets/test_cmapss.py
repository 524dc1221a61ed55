"""Tests for `common.data.datasets.cmapss` on the real C-MAPSS files (skipped when they are absent)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmeta.common import build_model
from fedmeta.common.data.datasets import (
    COLUMNS,
    DROPPED_SENSORS,
    SENSORS,
    USED_SENSORS,
    ConditionNormaliser,
    FactorySplit,
    add_operating_condition,
    add_rul,
    load_cmapss_central,
    load_cmapss_transfer,
    make_windows,
    nasa_score,
    read_cmapss,
    read_rul,
    rmse,
    rul_scores,
)
from tests.support.shared_data import needs_dataset

needs_data = needs_dataset("cmapss")

WINDOW, STRIDE = 20, 10


@pytest.fixture(scope="module")
def fd001_split() -> FactorySplit:
    return load_cmapss_transfer(
        "FD001", "FD003", window=WINDOW, stride=STRIDE, engines_per_factory=25, target_engines=5, seed=1
    )


@needs_data
def test_read_columns_and_engine_counts() -> None:
    train, test, rul = read_cmapss("FD001", "train"), read_cmapss("FD001", "test"), read_rul("FD001")
    assert list(train.columns) == list(COLUMNS) and len(COLUMNS) == 26
    assert train.shape == (20631, 26) and test.shape == (13096, 26)
    assert train["unit"].nunique() == 100 and test["unit"].nunique() == 100
    assert len(rul) == 100 and list(rul.index) == list(range(1, 101))
    assert rul.min() == 7 and rul.max() == 145
    assert not train.isna().to_numpy().any()
    # Lower-case subset names are accepted.
    assert read_cmapss("fd003", "train")["unit"].nunique() == 100


@needs_data
def test_dropped_sensors_are_uninformative_in_fd001_and_fd003() -> None:
    fd001, fd003 = read_cmapss("FD001", "train"), read_cmapss("FD003", "train")
    exactly_constant_fd001 = {s for s in SENSORS if fd001[s].nunique() == 1}
    assert exactly_constant_fd001 == {"s1", "s5", "s10", "s16", "s18", "s19"}
    assert fd001["s6"].nunique() == 2  # the 7th usual one: 21.60 / 21.61
    assert {s for s in SENSORS if fd003[s].nunique() == 1} == {"s1", "s5", "s16", "s18", "s19"}
    assert set(DROPPED_SENSORS) == exactly_constant_fd001 | {"s6"}
    assert len(USED_SENSORS) == 14 and not set(USED_SENSORS) & set(DROPPED_SENSORS)


@needs_data
def test_operating_conditions() -> None:
    for subset, count in (("FD001", 1), ("FD003", 1), ("FD002", 6)):
        assert add_operating_condition(read_cmapss(subset, "train"))["condition"].nunique() == count
    fd002 = add_operating_condition(read_cmapss("FD002", "train"))
    assert fd002["condition"].value_counts().max() == 13458  # (42, 0.84, 100), as in SOURCE.md
    assert 42084100 in set(fd002["condition"])


@needs_data
def test_per_condition_normalisation_fd002() -> None:
    fd002 = add_operating_condition(read_cmapss("FD002", "train"))
    norm = ConditionNormaliser.fit(fd002)
    assert len(norm.conditions) == 6
    values = norm.transform(fd002)
    assert values.shape == (len(fd002), 14) and values.dtype == np.float32
    cond = fd002["condition"].to_numpy()
    for c in norm.conditions:
        part = values[cond == c]
        np.testing.assert_allclose(part.mean(axis=0), 0.0, atol=1e-4)
        std = part.std(axis=0)
        # A sensor constant within a condition stays at 0 (std 1 stands in); the rest have unit std.
        assert np.all((np.abs(std - 1.0) < 1e-3) | (std < 1e-6))
    # A condition the statistics never saw is an error, not a silent NaN.
    unseen = fd002.head(3).assign(condition=1)
    with pytest.raises(ValueError, match="not in the normalisation"):
        norm.transform(unseen)


@needs_data
def test_piecewise_linear_rul() -> None:
    frame = add_rul(read_cmapss("FD001", "train"), rul_cap=125)
    assert frame["rul"].max() == 125 and frame["rul"].min() == 0
    last = frame.groupby("unit").tail(1)
    assert (last["rul"] == 0).all()
    engine = frame[frame["unit"] == 1]  # 192 cycles
    expected = np.minimum(192 - engine["cycle"].to_numpy(), 125)
    np.testing.assert_array_equal(engine["rul"].to_numpy(), expected)
    assert add_rul(read_cmapss("FD001", "train"), rul_cap=60)["rul"].max() == 60


def test_make_windows_alignment_and_padding() -> None:
    values = np.arange(14, dtype=np.float64).reshape(7, 2)  # unit 1: 5 rows, unit 2: 2 rows
    units = np.array([1, 1, 1, 1, 1, 2, 2])
    target = np.array([4, 3, 2, 1, 0, 1, 0], dtype=np.float64)
    x, y = make_windows(values, units, target, window=3, stride=2)
    assert x.shape == (3, 2, 3)  # unit 1: windows ending at rows 2 and 4; unit 2: one padded window
    np.testing.assert_array_equal(y, [2, 0, 0])
    np.testing.assert_array_equal(x[1], values[2:5].T)
    np.testing.assert_array_equal(x[2], values[[5, 5, 6]].T)  # left-padded with the first row
    x_last, y_last = make_windows(values, units, target, window=3, last_only=True)
    np.testing.assert_array_equal(y_last, [0, 0])
    np.testing.assert_array_equal(x_last[0], values[2:5].T)


@needs_data
def test_transfer_split_shapes_and_engines(fd001_split: FactorySplit) -> None:
    split = fd001_split
    assert split.task_kind == "regression" and split.num_classes is None
    assert split.model_config.name == "tcn" and split.model_config.input_shape == (14, WINDOW)
    assert split.model_config.output_dim == 1
    assert len(split.train) == 4 and len(split.held_out) == 1 and len(split.test) == 1
    for f in (*split.train, *split.held_out, *split.test):
        assert f.x.shape[1:] == (14, WINDOW) and f.x.dtype == torch.float32 and f.y.dtype == torch.float32
        assert float(f.y.max()) <= 1 and float(f.y.min()) >= 0  # RUL / cap
    assert split.target_scale == 125
    train_engines = [set(f.name.split(" ")[1].split(",")) for f in split.train]
    assert all(f.name.startswith("FD001/engines ") for f in split.train)
    assert sum(len(e) for e in train_engines) == 100 and len(set().union(*train_engines)) == 100
    held = split.held_out[0]
    assert held.name.startswith("FD003/engines ") and len(held.name.split(" ")[1].split(",")) == 5
    assert "K = 5 engines" in split.notes
    # Training windows end at failure, so each training engine contributes a RUL-0 window.
    assert int((torch.cat([f.y for f in split.train]) == 0).sum()) == 100
    assert int((held.y == 0).sum()) == 5
    out = build_model(split.model_config)(split.train[0].x[:3])
    assert out.shape == (3, 1)


@needs_data
def test_test_split_one_window_per_engine(fd001_split: FactorySplit) -> None:
    test = fd001_split.test[0]
    assert test.name == "FD003/test" and test.num_samples == 100
    true = read_rul("FD003").to_numpy()
    np.testing.assert_allclose(test.y.numpy() * fd001_split.target_scale, np.minimum(true, 125), rtol=1e-6)


@needs_data
def test_unscaled_target_is_rul_in_cycles() -> None:
    split = load_cmapss_transfer("FD001", "FD003", window=10, stride=50, scale_target=False)
    assert split.target_scale == 1.0
    assert float(split.train[0].y.max()) == 125 and "y = RUL /" not in split.notes


@needs_data
def test_same_subset_holds_engines_out_of_training() -> None:
    split = load_cmapss_transfer("FD001", "FD001", window=10, stride=50, engines_per_factory=50, target_engines=10)
    held = set(split.held_out[0].name.split(" ")[1].split(","))
    train = set().union(*(set(f.name.split(" ")[1].split(",")) for f in split.train))
    assert len(held) == 10 and len(train) == 90 and not held & train


@needs_data
def test_fd004_test_engines_shorter_than_window_are_padded() -> None:
    split = load_cmapss_transfer("FD002", "FD004", window=30, stride=100, engines_per_factory=100, target_engines=1)
    assert len(split.train) == 3 and split.held_out[0].x.shape[1:] == (14, 30)
    assert split.test[0].num_samples == 248  # RUL_FD004 has 248 rows (the readme's 249 is a typo)
    assert "padded on the left" in split.notes and "6 in FD002" in split.notes


def test_rmse_and_nasa_score_hand_computed() -> None:
    pred, true = [10.0, 20.0, 30.0], [13.0, 20.0, 20.0]  # d = -3, 0, 10
    assert rmse(pred, true) == pytest.approx(math.sqrt((9 + 0 + 100) / 3))
    assert nasa_score(pred, true) == pytest.approx((math.exp(3 / 13) - 1) + 0.0 + (math.exp(1) - 1))
    assert nasa_score(torch.tensor([0.0]), torch.tensor([13.0])) == pytest.approx(math.e - 1)
    assert rmse(torch.tensor([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    with pytest.raises(ValueError):
        rmse([1.0, 2.0], [1.0])


@needs_data
def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown C-MAPSS subset"):
        read_cmapss("FD005", "train")
    with pytest.raises(ValueError, match="unknown C-MAPSS split"):
        read_cmapss("FD001", "valid")
    with pytest.raises(ValueError, match="unknown C-MAPSS subset"):
        load_cmapss_transfer("FD001", "FD009")
    with pytest.raises(ValueError, match="target_engines"):
        load_cmapss_transfer("FD001", "FD003", target_engines=101)
    with pytest.raises(ValueError, match="stride"):
        load_cmapss_transfer(stride=0)


def test_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cmapss"):
        read_cmapss("FD001", "train", root=tmp_path)
    (tmp_path / "cmapss").mkdir()
    with pytest.raises(FileNotFoundError, match="train_FD002"):
        read_cmapss("FD002", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="RUL_FD001"):
        read_rul("FD001", root=tmp_path)


@needs_data
def test_held_out_engines_are_normalised_with_their_own_statistics() -> None:
    """FD003's fan fault moves some sensors 15-20 FD001 standard deviations; its own statistics keep them near 0."""
    own = load_cmapss_transfer("FD001", "FD003", window=10, stride=10)
    source = load_cmapss_transfer("FD001", "FD003", window=10, stride=10, own_statistics=False)
    assert float(source.held_out[0].x.abs().max()) > 10
    assert float(own.held_out[0].x.abs().max()) < 8 and float(own.test[0].x.abs().max()) < 8
    torch.testing.assert_close(own.train[0].x, source.train[0].x)  # training factories: source statistics
    assert "own sensor statistics" in own.notes and "own sensor statistics" not in source.notes


@needs_data
def test_more_target_engines_keep_the_training_factories_and_nest() -> None:
    one, five = (load_cmapss_transfer("FD001", "FD003", window=10, stride=20, target_engines=k) for k in (1, 5))
    assert [f.name for f in one.train] == [f.name for f in five.train]
    held = [set(s.held_out[0].name.split(" ")[1].split(",")) for s in (one, five)]
    assert len(held[0]) == 1 and held[0] <= held[1]


@needs_data
def test_central_split_keeps_whole_validation_engines_apart_and_windows_every_cycle() -> None:
    split = load_cmapss_central("FD003", validation_engines=10, window=30, seed=4)
    held = {int(unit) for unit in split.validation.name.split(" ")[1].split(",")}
    cycles = read_cmapss("FD003", "train").groupby("unit").size()
    windows = (cycles - 30 + 1).clip(lower=1)
    assert len(held) == 10
    assert split.validation.num_samples == int(windows[sorted(held)].sum())
    assert split.train.num_samples == int(windows.drop(sorted(held)).sum())
    assert split.test.num_samples == 100 and split.target_scale == 125
    np.testing.assert_allclose(split.test.y.numpy() * 125, np.minimum(read_rul("FD003").to_numpy(), 125), rtol=1e-6)
    assert load_cmapss_central("FD003", validation_engines=10, seed=5).validation.name != split.validation.name
    with pytest.raises(ValueError, match="validation_engines=100"):
        load_cmapss_central("FD003", validation_engines=100)


def test_rul_scores_clip_predictions_to_the_capped_range_and_flag_divergence() -> None:
    true = np.array([0.0, 125.0, 60.0])
    clipped = rul_scores(np.array([-10.0, 140.0, 70.0]), true)
    assert clipped == {"rmse": rmse([0.0, 125.0, 70.0], true), "nasa": nasa_score([0.0, 125.0, 70.0], true)}
    assert all(math.isnan(v) for v in rul_scores(np.array([np.inf, 1.0, 2.0]), true).values())


def test_every_window_knows_its_engine(fd001_split: FactorySplit) -> None:
    """`FactoryData.groups`: the engine of each window, so cross-validation can hold out whole engines."""
    for factory in (*fd001_split.train, *fd001_split.held_out):
        named = {int(unit) for unit in factory.name.split(" ")[1].split(",")}
        engines = factory.groups
        assert engines is not None and set(engines.tolist()) == named
        # Training windows end at failure: the last window of each engine has RUL 0.
        last = torch.cat([torch.nonzero(engines == unit).flatten()[-1:] for unit in sorted(named)])
        assert bool((factory.y[last] == 0).all())
        assert bool((engines[1:] >= engines[:-1]).all())  # windows come engine by engine
