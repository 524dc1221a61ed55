"""The trees' view of a row: window statistics checked by hand, table rows unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmeta.common.trees.features import WINDOW_STATISTICS, window_features


def test_window_features_by_hand():
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])  # one window, one channel
    features = dict(zip(WINDOW_STATISTICS, window_features(x)[0], strict=True))
    std = math.sqrt(1.25)
    rms = math.sqrt(3.5)
    expected = {"mean": 1.5, "std": std, "min": 0.0, "max": 3.0, "last": 3.0, "slope": 1.0, "skewness": 0.0,
                "kurtosis": ((1.5**4 + 0.5**4) * 2 / 4) / std**4, "crest factor": 3.0 / rms, "mean |x|": 1.5}
    for name, value in expected.items():
        assert features[name] == pytest.approx(value, abs=1e-6), name


def test_window_features_per_channel_and_table_rows_unchanged():
    windows = torch.randn(5, 3, 16)
    assert window_features(windows).shape == (5, 3 * len(WINDOW_STATISTICS))
    rows = torch.randn(5, 7)
    np.testing.assert_array_equal(window_features(rows), rows.double().numpy())
    with pytest.raises(ValueError, match=r"\[n, features\] or \[n, channels, length\]"):
        window_features(torch.zeros(2, 2, 2, 2))
