"""CWRU loader on the real shared files (skipped where the data-set folder is absent)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fedmeta.common.data.datasets import (
    CWRU_FAULT_CLASSES,
    CWRU_FAULT_TYPES,
    CWRU_LOADS,
    dataset_dir,
    linear_probe_accuracy,
    load_cwru,
    log_spectrum_features,
    read_cwru_load,
)

try:
    CWRU_DIR = dataset_dir("cwru")
except FileNotFoundError:
    CWRU_DIR = None

pytestmark = pytest.mark.skipif(CWRU_DIR is None, reason="shared CWRU data set not available")

CAP = 20


@pytest.fixture(scope="module")
def arrays() -> dict[int, dict[str, np.ndarray]]:
    return {load: read_cwru_load(load) for load in CWRU_LOADS}


@pytest.fixture(scope="module")
def split():
    return load_cwru(max_windows_per_class=CAP)


@pytest.fixture(scope="module")
def fe_split():
    return load_cwru(max_windows_per_class=CAP, held_out_sensor="FE")


def test_every_load_has_the_nine_fault_classes_and_normal_only_at_load_0(arrays):
    for load, by_key in arrays.items():
        for name in CWRU_FAULT_CLASSES:
            for sensor in ("DE", "FE"):
                key = f"{name}_{sensor}"
                assert by_key[key].ndim == 1 and by_key[key].dtype == np.float64
                assert by_key[key].shape[0] > 120_000
        has_normal = "Normal_DE" in by_key and "Normal_FE" in by_key
        assert has_normal == (load == 0)
        assert len(by_key) == (20 if load == 0 else 18)


def test_factories_are_loads_and_held_out_load_never_trains(split):
    assert [f.name for f in split.train] == ["load0_DE", "load1_DE", "load2_DE"]
    assert [f.name for f in split.held_out] == ["load3_DE"]
    assert split.test == ()
    assert split.task_kind == "classification"
    assert split.num_classes == len(CWRU_FAULT_CLASSES) == 9
    assert split.model_config.input_shape == (1, 1024) and split.model_config.output_dim == 9
    for factory in (*split.train, *split.held_out):
        assert factory.num_samples == 9 * CAP

    other = load_cwru(held_out_load=1, max_windows_per_class=CAP)
    assert [f.name for f in other.train] == ["load0_DE", "load2_DE", "load3_DE"]
    assert [f.name for f in other.held_out] == ["load1_DE"]
    # Window choice depends on (seed, load, class) only, not on which load is held out.
    assert torch.equal(other.held_out[0].x, split.train[1].x)


def test_windows_shape_dtype_and_per_window_normalisation(split):
    for factory in (*split.train, *split.held_out):
        assert factory.x.dtype == torch.float32 and factory.x.shape[1:] == (1, 1024)
        assert factory.y.dtype == torch.int64
        mean = factory.x.mean(dim=-1)
        std = factory.x.double().std(dim=-1, unbiased=False)
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
        assert torch.allclose(std, torch.ones_like(std), atol=1e-4)


def test_windows_are_raw_signal_segments(arrays, split):
    signal = arrays[0]["B007_DE"]
    first = split.train[0].x[0, 0].double().numpy()  # label 0 = B007, windows sorted by start
    starts = range(0, signal.shape[0] - 1024 + 1, 512)
    matches = []
    for s in starts:
        w = signal[s : s + 1024]
        if np.allclose((w - w.mean()) / w.std(), first, atol=1e-5):
            matches.append(s)
    assert len(matches) == 1


def test_label_order_is_fixed_and_shared(split):
    expected = torch.arange(9).repeat_interleave(CAP)
    for factory in (*split.train, *split.held_out):
        assert torch.equal(factory.y, expected)


def test_windows_are_capped_deterministically_by_seed(split):
    again = load_cwru(max_windows_per_class=CAP)
    other_seed = load_cwru(max_windows_per_class=CAP, seed=1)
    assert torch.equal(again.train[0].x, split.train[0].x)
    assert not torch.equal(other_seed.train[0].x, split.train[0].x)


def test_fan_end_held_out_uses_fe_arrays(split, fe_split):
    assert [f.name for f in fe_split.train] == ["load0_DE", "load1_DE", "load2_DE"]
    assert [f.name for f in fe_split.held_out] == ["load3_FE"]
    assert "FE" in fe_split.name
    for de, fe in zip(split.train, fe_split.train, strict=True):
        assert torch.equal(de.x, fe.x)
    de_held, fe_held = split.held_out[0], fe_split.held_out[0]
    assert torch.equal(de_held.y, fe_held.y)
    assert not torch.allclose(de_held.x, fe_held.x, atol=1e-2)
    # Same window positions, other channel: the first FE window equals the normalised FE record segment.
    fe_signal = read_cwru_load(3)["B007_FE"]
    first = fe_held.x[0, 0].double().numpy()
    found = any(
        np.allclose((w - w.mean()) / w.std(), first, atol=1e-5)
        for w in (fe_signal[s : s + 1024] for s in range(0, fe_signal.shape[0] - 1024 + 1, 512))
    )
    assert found


def test_normal_is_excluded_and_notes_say_so(split):
    assert "Normal" not in " ".join(CWRU_FAULT_CLASSES)
    notes = split.notes
    assert "Normal" in notes and "load 0 only" in notes and "48 kHz" in notes and "EXCLUDED" in notes
    assert "K windows per class" in notes


def test_fault_type_grouping():
    grouped = load_cwru(max_windows_per_class=5, classes="fault-type")
    assert grouped.num_classes == len(CWRU_FAULT_TYPES) == 3
    assert grouped.model_config.output_dim == 3
    expected = torch.arange(3).repeat_interleave(3 * 5)
    for factory in (*grouped.train, *grouped.held_out):
        assert torch.equal(factory.y, expected)


def test_log_spectrum_features_shape(split):
    x = split.train[0].x
    assert log_spectrum_features(x).shape == (x.shape[0], 128)
    assert log_spectrum_features(x, bins=None).shape == (x.shape[0], 513)
    assert log_spectrum_features(x[:, 0]).shape == (x.shape[0], 128)
    assert torch.isfinite(log_spectrum_features(x)).all()
    with pytest.raises(ValueError, match="bins"):
        log_spectrum_features(x, bins=1000)


def test_linear_probe_on_log_spectra_transfers_across_loads(split):
    # Reference only: log-spectrum features make cross-load transfer nearly trivial (>99% with 100 windows).
    assert linear_probe_accuracy(split.train, split.held_out) > 0.9


def test_errors_unknown_load_sensor_classes():
    with pytest.raises(ValueError, match="unknown CWRU motor load 4"):
        read_cwru_load(4)
    with pytest.raises(ValueError, match="held_out_load"):
        load_cwru(held_out_load=7)
    with pytest.raises(ValueError, match="sensor"):
        load_cwru(sensor="BA")
    with pytest.raises(ValueError, match="held_out_sensor"):
        load_cwru(held_out_sensor="de")
    with pytest.raises(ValueError, match="classes"):
        load_cwru(classes="all")
    with pytest.raises(ValueError, match="max_windows_per_class"):
        load_cwru(max_windows_per_class=0)


def test_errors_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cwru"):
        read_cwru_load(0, root=tmp_path)
    (tmp_path / "cwru").mkdir()
    for load in (0, 1, 2):
        name = f"cwru_load{load}_{[1797, 1772, 1750][load]}rpm.npz"
        (tmp_path / "cwru" / name).symlink_to(CWRU_DIR / name)
    shutil.copy(CWRU_DIR / "SOURCE.md", tmp_path / "cwru" / "SOURCE.md")
    assert "B007_DE" in read_cwru_load(0, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="load 3"):
        read_cwru_load(3, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="load 3"):
        load_cwru(root=tmp_path, max_windows_per_class=2)
