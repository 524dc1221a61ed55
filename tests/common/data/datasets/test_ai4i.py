"""AI4I 2020 loader on the real shared file: factories, no leakage, train-only scaling, labels, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedmeta.common import ClassificationTaskSampler
from fedmeta.common.data.datasets import (
    AI4I_FILE,
    BASE_FEATURES,
    FAILURE_MODES,
    FAILURE_TYPE_CLASSES,
    dataset_dir,
    load_ai4i,
)

try:
    _FILE = dataset_dir("ai4i2020") / AI4I_FILE
except FileNotFoundError:  # pragma: no cover - only where the shared data sets are absent
    _FILE = None
pytestmark = pytest.mark.skipif(_FILE is None or not _FILE.is_file(), reason="shared AI4I 2020 file not present")


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_csv(_FILE, encoding="utf-8-sig")


@pytest.fixture(scope="module")
def failure():
    return load_ai4i("failure")


@pytest.fixture(scope="module")
def failure_type():
    return load_ai4i("failure-type")


def test_factories_names_and_sizes(failure, raw):
    assert [f.name for f in failure.train] == ["L", "M"]
    assert [f.name for f in failure.held_out] == ["H"]
    sizes = {f.name: f.num_samples for f in failure.train + failure.held_out}
    assert sizes == {"L": 6000, "M": 2997, "H": 1003}
    assert sizes == raw["Type"].value_counts().to_dict()
    assert failure.task_kind == "classification" and failure.num_classes == 2
    for f in failure.train + failure.held_out:
        assert f.x.dtype == torch.float32 and f.y.dtype == torch.int64


@pytest.mark.parametrize("held", ["L", "M", ("M", "H")])
def test_held_out_variants_never_train(held):
    split = load_ai4i("failure", held_out=held)
    held_names = {held} if isinstance(held, str) else set(held)
    assert {f.name for f in split.held_out} == held_names
    assert not held_names & {f.name for f in split.train}
    assert {f.name for f in split.train} | held_names == {"L", "M", "H"}


def test_bad_held_out_and_task():
    with pytest.raises(ValueError, match="unknown held-out"):
        load_ai4i(held_out="X")
    with pytest.raises(ValueError, match="no factory to train"):
        load_ai4i(held_out=("L", "M", "H"))
    with pytest.raises(ValueError, match="unknown task"):
        load_ai4i("failure-mode")


def test_no_leakage_features(failure, raw):
    # 5 readings + power + temperature difference; nothing else (no UDI, Product ID, Type or flags).
    assert failure.model_config.name == "mlp"
    assert failure.model_config.input_shape == (7,)
    assert failure.model_config.output_dim == 2
    assert failure.train[0].feature_shape == (7,)
    assert load_ai4i(derived_features=False).model_config.input_shape == (len(BASE_FEATURES),)
    for leak in ("UDI", "Product ID", "Machine failure", *FAILURE_MODES):
        assert leak in failure.notes
    # The features are exactly the standardised readings: recompute them from the raw columns.
    x = raw[list(BASE_FEATURES)].to_numpy(np.float64)
    x = np.column_stack([x, x[:, 3] * x[:, 2] * 2 * np.pi / 60, x[:, 1] - x[:, 0]])
    train = np.isin(raw["Type"], ["L", "M"])
    mean, std = x[train].mean(0), x[train].std(0)
    h = ((x[raw["Type"] == "H"] - mean) / std).astype(np.float32)
    np.testing.assert_allclose(failure.held_out[0].x.numpy(), h, rtol=1e-5, atol=1e-5)


def test_standardisation_uses_train_only(failure):
    train_x = torch.cat([f.x for f in failure.train]).double()
    assert train_x.mean(0).abs().max() < 1e-5
    assert (train_x.std(0, unbiased=False) - 1).abs().max() < 1e-4
    held_mean = failure.held_out[0].x.double().mean(0)
    assert held_mean.abs().max() > 0.01  # statistics of L+M, not of H
    # Changing the held-out variant changes the statistics the features are scaled with.
    other = load_ai4i("failure", held_out="L")
    h_train = {f.name: f for f in other.train}["H"]
    assert not torch.allclose(h_train.x, failure.held_out[0].x)


def test_class_counts(failure, failure_type):
    counts = {f.name: torch.bincount(f.y, minlength=2).tolist() for f in failure.train + failure.held_out}
    assert counts == {"L": [5765, 235], "M": [2914, 83], "H": [982, 21]}
    assert "H (1003 rows): no failure 982, failure 21" in failure.notes
    assert "K shots are counted per class" in failure.notes
    assert failure_type.num_classes == len(FAILURE_TYPE_CLASSES) == 6
    assert failure_type.model_config.output_dim == 6
    by_type = {f.name: torch.bincount(f.y, minlength=6).tolist() for f in failure_type.train + failure_type.held_out}
    assert by_type["H"] == [979, 7, 8, 4, 1, 4]
    assert sum(by_type["L"]) == 6000 and sum(by_type["M"]) == 2997
    assert "H (1003 rows): none 979, TWF 7, HDF 8, PWF 4, OSF 1, RNF 4" in failure_type.notes


def test_failure_type_labelling_rule(failure_type, raw):
    factories = {f.name: f for f in failure_type.train + failure_type.held_out}
    flags = raw[list(FAILURE_MODES)].to_numpy() != 0
    for variant, factory in factories.items():
        rows = (raw["Type"] == variant).to_numpy()
        f, y = flags[rows], factory.y.numpy()
        mf = raw.loc[rows, "Machine failure"].to_numpy()
        assert (y[~f.any(1)] == 0).all()  # no flag -> none, including failures with no flag
        single = f.sum(1) == 1
        assert (y[single] == f[single].argmax(1) + 1).all()
        many = f.sum(1) > 1  # several flags -> first in TWF > HDF > PWF > OSF > RNF
        assert (y[many] == f[many].argmax(1) + 1).all()
        rnf_only = f[:, 4] & (f.sum(1) == 1)
        assert (y[rnf_only] == 5).all()
        assert ((mf == 1) & ~f.any(1) & (y != 0)).sum() == 0
    # Concrete cases from the file: the H row with TWF+PWF+OSF is TWF; PWF+OSF rows are PWF.
    combos = raw[flags.sum(1) > 1]
    assert len(combos) == 24
    h_rows = (raw["Type"] == "H").to_numpy()
    triple = (flags[:, 0] & flags[:, 2] & flags[:, 3])[h_rows]
    assert triple.sum() == 1 and factories["H"].y[torch.from_numpy(triple)].item() == 1
    assert "RNF-only rows are RNF" in failure_type.notes


def test_two_way_five_shot_on_h(failure):
    h = failure.held_out[0]
    sampler = ClassificationTaskSampler([h], ways=2, shots=5, query_shots=10, seed=0, shuffle_labels=False)
    batch = sampler.sample(8)
    assert batch.support_x.shape == (8, 10, 7) and batch.query_x.shape == (8, 20, 7)
    assert (batch.support_y.sum(1) == 5).all() and (batch.query_y.sum(1) == 10).all()
    # Without label shuffling label 1 is the failure class: every such support row is a real H failure.
    failures = h.x[h.y == 1]
    for task_x, task_y in zip(batch.support_x, batch.support_y, strict=True):
        for row in task_x[task_y == 1]:
            assert (failures == row).all(1).any()
    # 21 failures: K + query_shots may not exceed 21.
    with pytest.raises(ValueError, match="with >= 22 samples"):
        ClassificationTaskSampler([h], ways=2, shots=5, query_shots=17, seed=0)


def test_missing_file_and_column(tmp_path, raw):
    with pytest.raises(FileNotFoundError, match="ai4i2020"):
        load_ai4i(root=tmp_path)
    folder = tmp_path / "ai4i2020"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=AI4I_FILE):
        load_ai4i(root=tmp_path)
    raw.head(30).drop(columns=["Torque [Nm]"]).to_csv(folder / AI4I_FILE, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Torque \[Nm\]'\]"):
        load_ai4i(root=tmp_path)
    raw.head(30).drop(columns=["RNF"]).to_csv(folder / AI4I_FILE, index=False)
    with pytest.raises(ValueError, match="RNF"):
        load_ai4i(root=tmp_path)
    small = pd.concat([raw[raw["Type"] == t].head(10) for t in ("L", "M", "H")])
    small.to_csv(folder / AI4I_FILE, index=False)
    assert [f.num_samples for f in load_ai4i(root=tmp_path).train] == [10, 10]
