"""What a tree sees of a row: a table row as it is, a window ``[channels, length]`` (a sensor sequence or
a vibration segment) as ten classic statistics per channel, the hand-made features gradient boosting is
usually given in RUL and bearing-fault work. One function, so the federation's trees, their adaptation at
a factory, its predictions and the benchmark's pooled references all see the same columns."""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["STATISTICS_EPS", "WINDOW_STATISTICS", "window_features"]

WINDOW_STATISTICS = (
    "mean", "std", "min", "max", "last", "slope", "skewness", "kurtosis", "crest factor", "mean |x|"
)
STATISTICS_EPS = 1e-8  # keeps the ratios of a flat window finite (the ONNX export adds the same)


def window_features(x: Tensor | np.ndarray) -> np.ndarray:
    """``[n, features]`` rows as they are; ``[n, channels, length]`` windows -> `WINDOW_STATISTICS` per channel."""
    values = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if values.ndim == 2:
        return values
    if values.ndim != 3:
        raise ValueError(f"expected [n, features] or [n, channels, length] inputs, got shape {tuple(values.shape)}")
    mean = values.mean(axis=-1)
    centred = values - mean[..., None]
    std = values.std(axis=-1)
    time = np.arange(values.shape[-1]) - (values.shape[-1] - 1) / 2
    slope = (centred * time).sum(axis=-1) / (time**2).sum()
    scale = std + STATISTICS_EPS
    skewness = (centred**3).mean(axis=-1) / scale**3
    kurtosis = (centred**4).mean(axis=-1) / scale**4
    rms = np.sqrt((values**2).mean(axis=-1))
    crest = np.abs(values).max(axis=-1) / (rms + STATISTICS_EPS)
    stats = [mean, std, values.min(axis=-1), values.max(axis=-1), values[..., -1], slope, skewness, kurtosis, crest,
             np.abs(values).mean(axis=-1)]
    return np.concatenate(stats, axis=-1)
