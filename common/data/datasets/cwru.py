"""CWRU bearing faults: one factory per motor load (0-3 HP), fault diagnosis on raw vibration windows.

The shared copy (``$FEDMETA_DATASETS/cwru``, see its ``SOURCE.md``) holds one ``.npz`` per motor load with
keys ``{class}_DE`` and ``{class}_FE`` (drive-end and fan-end accelerometers, 12 kHz). The nine fault
classes exist at every load; the healthy ``Normal`` record exists at load 0 only and was recorded at
48 kHz, so it is left out (see `load_cwru`'s ``notes``).

Headline task: raw time-domain windows, train on three loads, adapt to the held-out load from K labelled
windows per class, optionally also switching sensor (drive end -> fan end). Log-spectrum features make the
cross-load task nearly trivial (a linear model exceeds 99%); `linear_probe_accuracy` reports that reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedmeta.common.data.datasets.base import FactorySplit
from fedmeta.common.data.datasets.paths import dataset_dir
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.meta.tasks import FactoryData

__all__ = [
    "CWRU_FAULT_CLASSES",
    "CWRU_FAULT_TYPES",
    "CWRU_LOADS",
    "CWRU_SENSORS",
    "linear_probe_accuracy",
    "load_cwru",
    "log_spectrum_features",
    "read_cwru_load",
]

# Motor load (HP) -> nominal shaft speed (rpm); the file of load L is cwru_load{L}_{rpm}rpm.npz.
_LOAD_RPM = {0: 1797, 1: 1772, 2: 1750, 3: 1730}
CWRU_LOADS: tuple[int, ...] = tuple(_LOAD_RPM)
CWRU_SENSORS: tuple[str, ...] = ("DE", "FE")
# Fixed label order shared by every factory (npz key stems; "_at6" = outer race fault at 6:00).
CWRU_FAULT_CLASSES: tuple[str, ...] = (
    "B007",
    "B014",
    "B021",
    "IR007",
    "IR014",
    "IR021",
    "OR007_at6",
    "OR014_at6",
    "OR021_at6",
)
CWRU_FAULT_TYPES: tuple[str, ...] = ("B", "IR", "OR")
_CLASS_MODES = ("faults", "fault-type")
_NORMAL = "Normal"


def _load_file(load: int, root: str | os.PathLike[str] | None) -> os.PathLike[str]:
    if isinstance(load, bool) or not isinstance(load, int | np.integer) or int(load) not in _LOAD_RPM:
        raise ValueError(f"unknown CWRU motor load {load!r}; valid loads (HP): {list(CWRU_LOADS)}")
    folder = dataset_dir("cwru", root)
    path = folder / f"cwru_load{int(load)}_{_LOAD_RPM[int(load)]}rpm.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"CWRU file for load {int(load)} not found: {path} (see {folder / 'SOURCE.md'}; nothing is downloaded)"
        )
    return path


def read_cwru_load(load: int, root: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """All arrays of one motor load as ``{key: 1-D float64 array}``, keys ``{class}_DE`` / ``{class}_FE``.

    Load 0 also has ``Normal_DE`` / ``Normal_FE`` (48 kHz, not 12 kHz). Raises ``ValueError`` for an
    unknown load and ``FileNotFoundError`` when the data-set folder or the load's file is missing.
    """
    path = _load_file(load, root)
    with np.load(path, allow_pickle=False) as archive:
        return {key: np.asarray(archive[key]) for key in archive.files}


def _windows(signal: np.ndarray, window: int, stride: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Windows ``[m, window]`` of ``signal`` (start every ``stride``), at most ``cap`` drawn by ``rng``."""
    count = (signal.shape[0] - window) // stride + 1
    if count < 1:
        raise ValueError(f"record of {signal.shape[0]} samples is shorter than one window ({window})")
    starts = np.arange(count) * stride
    if cap is not None and count > cap:
        starts = np.sort(rng.choice(starts, size=cap, replace=False))
    windows = np.stack([signal[s : s + window] for s in starts])
    mean = windows.mean(axis=1, keepdims=True)
    std = windows.std(axis=1, keepdims=True)
    return (windows - mean) / np.maximum(std, 1e-12)


def _factory(
    load: int,
    arrays: dict[str, np.ndarray],
    sensor: str,
    classes: str,
    window: int,
    stride: int,
    cap: int | None,
    seed: int,
) -> FactoryData:
    xs, ys = [], []
    for index, name in enumerate(CWRU_FAULT_CLASSES):
        key = f"{name}_{sensor}"
        if key not in arrays:
            raise KeyError(f"CWRU load {load}: array {key!r} missing; keys present: {sorted(arrays)}")
        # The window positions depend on (seed, load, class) only, not on the sensor or the held-out load.
        rng = np.random.default_rng([seed, load, index])
        segment = _windows(arrays[key], window, stride, cap, rng)
        label = index if classes == "faults" else CWRU_FAULT_TYPES.index(name.split("0")[0])
        xs.append(segment)
        ys.append(np.full(segment.shape[0], label, dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(np.concatenate(ys))
    return FactoryData(f"load{load}_{sensor}", x, y)


def load_cwru(
    *,
    held_out_load: int = 3,
    sensor: str = "DE",
    held_out_sensor: str | None = None,
    window: int = 1024,
    stride: int = 512,
    max_windows_per_class: int | None = 100,
    classes: str = "faults",
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> FactorySplit:
    """Split CWRU into factories = motor loads; the held-out load never trains.

    Each factory holds raw time-domain windows ``x [n, 1, window]`` (float32, each window normalised to
    zero mean and unit std) of the nine fault records at that load, ``y`` the class id in the fixed order
    `CWRU_FAULT_CLASSES` (``classes="faults"``, 9 classes) or `CWRU_FAULT_TYPES` (``classes="fault-type"``,
    3 classes ball / inner race / outer race, the three diameters merged). Train factories use ``sensor``;
    the held-out factory uses ``held_out_sensor`` (default: ``sensor``), e.g. ``"FE"`` for drive end ->
    fan end. ``max_windows_per_class`` caps the windows per fault record, drawn without replacement,
    deterministically from ``seed`` (``None`` keeps all).
    """
    if isinstance(held_out_load, bool) or held_out_load not in _LOAD_RPM:
        raise ValueError(f"unknown held_out_load {held_out_load!r}; valid loads (HP): {list(CWRU_LOADS)}")
    held_out_sensor = sensor if held_out_sensor is None else held_out_sensor
    for field, value in (("sensor", sensor), ("held_out_sensor", held_out_sensor)):
        if value not in CWRU_SENSORS:
            raise ValueError(f"unknown {field} {value!r}; valid sensors: {list(CWRU_SENSORS)}")
    if classes not in _CLASS_MODES:
        raise ValueError(f"unknown classes {classes!r}; valid: {list(_CLASS_MODES)}")
    for field, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if max_windows_per_class is not None and (
        isinstance(max_windows_per_class, bool)
        or not isinstance(max_windows_per_class, int)
        or max_windows_per_class < 1
    ):
        raise ValueError(f"max_windows_per_class must be a positive int or None, got {max_windows_per_class!r}")

    train, held_out = [], []
    for load in CWRU_LOADS:
        arrays = read_cwru_load(load, root)
        is_held_out = load == held_out_load
        factory = _factory(
            load,
            arrays,
            held_out_sensor if is_held_out else sensor,
            classes,
            window,
            stride,
            max_windows_per_class,
            seed,
        )
        (held_out if is_held_out else train).append(factory)

    labels = CWRU_FAULT_CLASSES if classes == "faults" else CWRU_FAULT_TYPES
    num_classes = len(labels)
    cap = (
        "all windows per fault record"
        if max_windows_per_class is None
        else f"at most {max_windows_per_class} windows per fault record, drawn without replacement with seed {seed}"
    )
    per_label = "" if classes == "faults" else " (3 records per fault type, so up to 3x that per label)"
    notes = (
        f"Factories are motor loads 0-3 HP (1797/1772/1750/1730 rpm); load {held_out_load} is held out and never "
        f"trains. Sensor: train {sensor}, held-out {held_out_sensor}"
        + (" (cross-sensor transfer)" if held_out_sensor != sensor else "")
        + f". Labels ({num_classes}, same order in every factory): {', '.join(labels)}. "
        "Healthy class: EXCLUDED. The Normal record exists at load 0 only and was recorded at 48 kHz (the faults "
        "at 12 kHz); using it (decimated) for every load would leak the load and the sampling pipeline into the "
        "label, so the task is fault diagnosis among the fault classes only, not fault detection. "
        f"Samples: raw time-domain windows of {window} samples (stride {stride}, "
        f"{window / 12000 * 1000:.1f} ms at 12 kHz), each normalised to zero mean and unit std; {cap}{per_label}. "
        "K shots = K windows per class from the held-out factory; with stride < window, neighbouring windows "
        "overlap, so support and query windows of one record can share samples. Reference: a linear model on "
        "log-spectrum features transfers across loads at >99% without adaptation (linear_probe_accuracy, same "
        "sensor; drive end -> fan end it drops to about 27%); raw windows are where adaptation matters."
    )
    hs = "" if held_out_sensor == sensor else f"-{sensor}to{held_out_sensor}"
    return FactorySplit(
        name=f"cwru-{classes}-load{held_out_load}{hs}",
        train=tuple(train),
        held_out=tuple(held_out),
        task_kind="classification",
        model_config=ModelConfig("cnn1d", (1, window), num_classes, hidden=32, depth=3, stem_stride=8),
        num_classes=num_classes,
        notes=notes,
    )


def log_spectrum_features(x: Tensor, bins: int | None = 128, eps: float = 1e-6) -> Tensor:
    """Log magnitude spectrum of windows ``x [n, 1, window]`` (or ``[n, window]``) -> ``[n, bins]``.

    The rFFT magnitude (DC..Nyquist) is averaged into ``bins`` contiguous frequency bands (``None`` keeps
    all ``window // 2 + 1`` bins), then ``log(magnitude + eps)``.
    """
    if x.dim() == 3:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got x of shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 2:
        raise ValueError(f"expected x of shape [n, 1, window] or [n, window], got {tuple(x.shape)}")
    magnitude = torch.fft.rfft(x.float(), dim=-1).abs()
    if bins is not None:
        if bins < 1 or bins > magnitude.shape[-1]:
            raise ValueError(f"bins must be in 1..{magnitude.shape[-1]}, got {bins}")
        magnitude = F.adaptive_avg_pool1d(magnitude.unsqueeze(1), bins).squeeze(1)
    return torch.log(magnitude + eps)


def _stack(factories: FactoryData | Sequence[FactoryData]) -> tuple[Tensor, Tensor]:
    if isinstance(factories, FactoryData):
        factories = (factories,)
    if not factories:
        raise ValueError("need at least one factory")
    return torch.cat([f.x for f in factories]), torch.cat([f.y for f in factories])


def linear_probe_accuracy(
    train: FactoryData | Sequence[FactoryData],
    test: FactoryData | Sequence[FactoryData],
    *,
    bins: int | None = 128,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Accuracy on ``test`` of a multinomial logistic regression fit on ``train``'s log-spectrum features.

    No adaptation: the features are standardised with the training mean/std, the model is trained full-batch
    with Adam on the training factories only and applied unchanged to the test (held-out) factories.
    """
    x_train, y_train = _stack(train)
    x_test, y_test = _stack(test)
    f_train, f_test = log_spectrum_features(x_train, bins), log_spectrum_features(x_test, bins)
    mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(f_train.shape[1], num_classes, generator=generator)).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(f_train @ weight + bias, y_train).backward()
        optimizer.step()
    with torch.no_grad():
        predictions = (f_test @ weight + bias).argmax(1)
    return float((predictions == y_test).float().mean())
