"""NASA C-MAPSS turbofan engines (FD001-FD004) as factories for remaining-useful-life regression.

Each sub-data-set is a fleet: FD001 (1 operating condition, 1 fault mode), FD002 (6, 1),
FD003 (1, 2), FD004 (6, 2). The headline transfer is to a new fault mode: train on groups of
source engines (FD001 or FD002) and adapt to K engines of the target (FD003 or FD004), then
score on the target's official test split with RMSE and the NASA (PHM08) score.

Preprocessing, the way the RUL literature does it:

* the 7 sensors that carry no information in FD001 are dropped (s1, s5, s10, s16, s18, s19
  are exactly constant there; s6 takes only the two values 21.60/21.61), leaving 14 channels;
* operating condition = the exact cluster of the rounded settings (altitude to an integer,
  Mach to 2 decimals, throttle angle to an integer): 6 conditions in FD002/FD004, 1 in
  FD001/FD003; no k-means;
* z-normalisation per operating condition: training factories with statistics of the source
  training engines, the held-out factory and its test split with the held-out engines' own
  (a new factory's unlabelled sensor readings; a new fault mode moves some sensors 15-20
  source standard deviations, which breaks any model fed source-normalised inputs);
* piecewise-linear RUL target: ``min(cycles to failure, rul_cap)``;
* sliding windows ``[n, channels, window]`` (channels first, for the TCN) labelled with the RUL
  at the window's last cycle; windows are aligned to end at each engine's last cycle.

Data are read through `dataset_dir` and never downloaded or copied.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view

from fedmeta.common.data.datasets.base import CentralSplit, FactorySplit
from fedmeta.common.data.datasets.paths import dataset_dir
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.meta.tasks import FactoryData

__all__ = [
    "COLUMNS",
    "DROPPED_SENSORS",
    "SENSORS",
    "SETTINGS",
    "SPLITS",
    "SUBSETS",
    "TRANSFERS",
    "USED_SENSORS",
    "ConditionNormaliser",
    "add_operating_condition",
    "add_rul",
    "load_cmapss_central",
    "load_cmapss_transfer",
    "make_windows",
    "nasa_score",
    "read_cmapss",
    "read_rul",
    "rmse",
    "rul_scores",
]

SUBSETS: tuple[str, ...] = ("FD001", "FD002", "FD003", "FD004")
SPLITS: tuple[str, ...] = ("train", "test")
SETTINGS: tuple[str, ...] = ("setting1", "setting2", "setting3")
SENSORS: tuple[str, ...] = tuple(f"s{i}" for i in range(1, 22))
COLUMNS: tuple[str, ...] = ("unit", "cycle", *SETTINGS, *SENSORS)
# Constant in FD001 (s6: two values 21.60/21.61); in FD003 s1, s5, s16, s18, s19 are constant
# and s6, s10 nearly so. Dropped from every subset so all subsets share the same 14 channels.
DROPPED_SENSORS: tuple[str, ...] = ("s1", "s5", "s6", "s10", "s16", "s18", "s19")
USED_SENSORS: tuple[str, ...] = tuple(s for s in SENSORS if s not in DROPPED_SENSORS)
# The shared data set names of the C-MAPSS transfers (`load_cmapss_transfer`): source -> target subset.
# FD001 -> FD003: one operating condition, a new fault mode; FD002 -> FD004: the same with six conditions.
TRANSFERS: dict[str, tuple[str, str]] = {"cmapss": ("FD001", "FD003"), "cmapss-fd004": ("FD002", "FD004")}
_DATASET = "cmapss"
_MIN_STD = 1e-8


def _check_subset(subset: str) -> str:
    if not isinstance(subset, str) or subset.upper() not in SUBSETS:
        raise ValueError(f"unknown C-MAPSS subset {subset!r}; valid subsets: {list(SUBSETS)}")
    return subset.upper()


def _file(name: str, root: str | os.PathLike[str] | None) -> Path:
    path = dataset_dir(_DATASET, root) / name
    if not path.is_file():
        raise FileNotFoundError(f"C-MAPSS file {name!r} not found at {path} (the files are never downloaded)")
    return path


@functools.lru_cache(maxsize=16)
def _read_table(path: str, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=r"\s+", header=None)
    if frame.shape[1] != len(columns):
        raise ValueError(f"{path}: expected {len(columns)} columns, got {frame.shape[1]}")
    frame.columns = list(columns)
    if frame.isna().to_numpy().any():
        raise ValueError(f"{path}: contains missing values")
    return frame


def read_cmapss(subset: str, split: str, root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One raw file as a frame with the 26 `COLUMNS`, sorted by unit and cycle (``unit``/``cycle`` int)."""
    subset = _check_subset(subset)
    if split not in SPLITS:
        raise ValueError(f"unknown C-MAPSS split {split!r}; valid splits: {list(SPLITS)}")
    frame = _read_table(str(_file(f"{split}_{subset}.txt.gz", root)), COLUMNS).copy()
    frame[["unit", "cycle"]] = frame[["unit", "cycle"]].astype(np.int64)
    return frame.sort_values(["unit", "cycle"], kind="stable").reset_index(drop=True)


def read_rul(subset: str, root: str | os.PathLike[str] | None = None) -> pd.Series:
    """True RUL after the last cycle of each test engine, indexed by unit (1..N), named ``RUL``."""
    subset = _check_subset(subset)
    values = _read_table(str(_file(f"RUL_{subset}.txt.gz", root)), ("RUL",))["RUL"].to_numpy(np.int64)
    return pd.Series(values, index=pd.RangeIndex(1, len(values) + 1, name="unit"), name="RUL")


def add_operating_condition(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with a ``condition`` column: exact cluster of the rounded settings.

    Code = ``round(setting1) * 10**6 + round(100 * setting2) * 10**3 + round(setting3)``,
    e.g. 42084100 for altitude 42, Mach 0.84, throttle 100.
    """
    out = frame.copy()
    alt = frame["setting1"].round().astype(np.int64)
    mach = (frame["setting2"] * 100).round().astype(np.int64)
    tra = frame["setting3"].round().astype(np.int64)
    out["condition"] = alt * 10**6 + mach * 10**3 + tra
    return out


def add_rul(frame: pd.DataFrame, rul_cap: float = 125, final_rul: pd.Series | None = None) -> pd.DataFrame:
    """A copy with a piecewise-linear ``rul`` column: ``min(rul_cap, cycles left)`` (float32).

    Train engines (``final_rul`` None) fail at their last cycle, so RUL there is 0. For test
    engines pass `read_rul`'s series: RUL = true RUL after the last cycle + cycles left.
    """
    if rul_cap <= 0:
        raise ValueError(f"rul_cap must be > 0, got {rul_cap}")
    out = frame.copy()
    left = frame.groupby("unit")["cycle"].transform("max") - frame["cycle"]
    if final_rul is not None:
        units = pd.Index(frame["unit"].unique())
        missing = units.difference(final_rul.index)
        if len(missing):
            raise ValueError(f"no true RUL for units {missing.tolist()[:10]}")
        left = left + frame["unit"].map(final_rul)
    out["rul"] = np.minimum(left.to_numpy(np.float64), float(rul_cap)).astype(np.float32)
    return out


@dataclass(frozen=True, eq=False)
class ConditionNormaliser:
    """Per-operating-condition z-normalisation of the sensors (statistics from one frame)."""

    sensors: tuple[str, ...]
    mean: pd.DataFrame  # index: condition code, columns: sensors
    std: pd.DataFrame

    @classmethod
    def fit(cls, frame: pd.DataFrame, sensors: Sequence[str] = USED_SENSORS) -> ConditionNormaliser:
        """Statistics of ``frame`` (with a ``condition`` column); a sensor constant in a condition gets std 1."""
        sensors = tuple(sensors)
        grouped = frame.groupby("condition")[list(sensors)]
        std = grouped.std(ddof=0)
        return cls(sensors, grouped.mean(), std.where(std > _MIN_STD, 1.0))

    @property
    def conditions(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.mean.index)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Normalised sensors ``[rows, len(sensors)]`` float32; an unseen condition is an error."""
        unseen = set(frame["condition"].unique()) - set(self.mean.index)
        if unseen:
            raise ValueError(f"operating conditions {sorted(unseen)} not in the normalisation statistics")
        cond = frame["condition"].to_numpy()
        mean = self.mean.loc[cond].to_numpy()
        std = self.std.loc[cond].to_numpy()
        return ((frame[list(self.sensors)].to_numpy() - mean) / std).astype(np.float32)


def make_windows(
    values: np.ndarray,
    units: np.ndarray,
    target: np.ndarray,
    window: int,
    stride: int = 1,
    last_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows ``x [n, channels, window]`` and ``y [n]`` (target at each window's last row).

    ``values [rows, channels]`` must be sorted by unit then cycle. Windows of one engine end at
    its last row, then every ``stride`` rows earlier while a whole window fits; ``last_only``
    keeps the final window only. An engine shorter than ``window`` is padded on the left by
    repeating its first row, giving one window.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    if not (len(values) == len(units) == len(target)):
        raise ValueError("values, units and target must have the same number of rows")
    _, starts = np.unique(units, return_index=True)
    bounds = [*sorted(starts.tolist()), len(units)]
    xs, ys = [], []
    for start, stop in itertools.pairwise(bounds):
        seq, tgt = values[start:stop], target[start:stop]
        if len(seq) < window:
            seq = np.concatenate([np.repeat(seq[:1], window - len(seq), axis=0), seq])
        views = sliding_window_view(seq, window, axis=0)  # [len - window + 1, channels, window]
        ends = np.arange(len(views) - 1, -1, -stride)[::-1]
        if last_only:
            ends = ends[-1:]
        xs.append(views[ends])
        # Window k ends at padded row k + window - 1, i.e. original row k + window - 1 - pad.
        ys.append(tgt[ends + window - 1 - (len(seq) - (stop - start))])
    return np.ascontiguousarray(np.concatenate(xs), dtype=np.float32), np.concatenate(ys).astype(np.float32)


def _factory(
    name: str, frame: pd.DataFrame, norm: ConditionNormaliser, window: int, stride: int, scale: float, **kw
) -> FactoryData:
    units = frame["unit"].to_numpy()
    x, y = make_windows(norm.transform(frame), units, frame["rul"].to_numpy(), window, stride, **kw)
    # Each window's engine: the same windowing with the unit id as a one-channel signal and as the target.
    _, engines = make_windows(units[:, None].astype(np.float32), units, units.astype(np.float32), window, stride, **kw)
    return FactoryData(name, torch.from_numpy(x), torch.from_numpy(y / np.float32(scale)),
                       groups=torch.from_numpy(engines.astype(np.int64)))


def _engines_name(subset: str, units: Sequence[int]) -> str:
    return f"{subset}/engines {','.join(str(u) for u in sorted(units))}"


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def _model_config(window: int) -> ModelConfig:
    """A TCN whose receptive field (61 cycles) covers a 30-cycle window: 4 blocks, kernel 5."""
    return ModelConfig("tcn", (len(USED_SENSORS), window), 1, hidden=32, depth=4, kernel_size=5)


def _test_frame(subset: str, rul_cap: float, root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """The official test split with conditions and the true RUL (capped) of every cycle."""
    frame = read_cmapss(subset, "test", root)
    true_rul = read_rul(subset, root)
    if len(true_rul) != frame["unit"].nunique():
        raise ValueError(f"RUL_{subset} has {len(true_rul)} values for {frame['unit'].nunique()} test engines")
    return add_rul(add_operating_condition(frame), rul_cap, final_rul=true_rul)


def load_cmapss_central(
    subset: str = "FD003",
    *,
    validation_engines: int = 10,
    window: int = 30,
    rul_cap: float = 125,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> CentralSplit:
    """One subset pooled for a full-data reference, as the RUL literature trains it.

    ``validation_engines`` training engines (drawn with ``seed``) are kept apart whole for
    early stopping (neighbouring windows of one engine are near copies, so a split by
    window would leak); every other training engine gives a window at every cycle. Sensors
    are normalised per operating condition with the training engines' statistics. The
    test split is the official one, one window per engine ending at its last cycle, with
    the true RUL capped at ``rul_cap`` (the convention of every C-MAPSS figure here).
    Targets are RUL / ``rul_cap``.
    """
    subset = _check_subset(subset)
    _check_positive(validation_engines=validation_engines, window=window)
    frame = add_rul(add_operating_condition(read_cmapss(subset, "train", root)), rul_cap)
    units = np.unique(frame["unit"].to_numpy())
    if validation_engines >= len(units):
        raise ValueError(f"validation_engines={validation_engines} but {subset} has {len(units)} training engines")
    held = np.random.default_rng([seed, 3]).permutation(units)[:validation_engines]
    train_frame, validation_frame = frame[~frame["unit"].isin(held)], frame[frame["unit"].isin(held)]
    norm = ConditionNormaliser.fit(train_frame)
    scale = float(rul_cap)
    train = _factory(f"{subset}/training engines", train_frame, norm, window, 1, scale)
    validation = _factory(_engines_name(subset, held), validation_frame, norm, window, 1, scale)
    test = _factory(f"{subset}/test", _test_frame(subset, rul_cap, root), norm, window, 1, scale, last_only=True)
    notes = (
        f"C-MAPSS {subset} pooled: {len(units) - validation_engines} training engines (a window at every cycle, "
        f"{train.num_samples} windows), {validation_engines} whole validation engines (named in the validation "
        f"factory) for early stopping, the official test split ({test.num_samples} engines, last window each, "
        f"true RUL capped at {rul_cap}); sensors z-normalised per operating condition with the training engines' "
        f"statistics; y = RUL / {rul_cap}."
    )
    return CentralSplit(f"cmapss-{subset}-central", train, validation, test, _model_config(window), notes,
                        target_scale=scale)


def load_cmapss_transfer(
    source: str = "FD001",
    target: str = "FD003",
    *,
    window: int = 30,
    rul_cap: float = 125,
    engines_per_factory: int = 10,
    target_engines: int = 5,
    stride: int = 5,
    scale_target: bool = True,
    own_statistics: bool = True,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> FactorySplit:
    """Source engines in groups as training factories; K target engines as the held-out factory.

    * ``train``: the source subset's training engines, shuffled (``seed``) and cut into
      factories of ``engines_per_factory`` engines (the last one may be smaller), windows
      every ``stride`` cycles.
    * ``held_out``: one factory of ``target_engines`` (K) engines drawn (``seed``) from the
      target subset's training file, run to failure, windows every ``stride`` cycles.
      If ``target == source`` these engines are removed from the training pool.
    * ``test``: the target's official test split, one window per test engine ending at its
      last cycle, labelled with the true RUL of ``RUL_FD00x`` capped at ``rul_cap``.

    Sensors are normalised per operating condition with statistics of the training-factory
    engines; with ``own_statistics`` the held-out factory and the test split use the held-out
    engines' own statistics instead (sensor readings only, never labels). With ``scale_target``
    the target is RUL / ``rul_cap`` (in [0, 1], so the learning rates of the other data sets
    apply; ``target_scale`` of the result turns predictions back into cycles for `rmse` and
    `nasa_score`), otherwise RUL in cycles. Factory names list their engine ids
    (``"FD001/engines 3,17,..."``).
    """
    source, target = _check_subset(source), _check_subset(target)
    _check_positive(
        window=window, engines_per_factory=engines_per_factory, target_engines=target_engines, stride=stride
    )
    if rul_cap <= 0:
        raise ValueError(f"rul_cap must be > 0, got {rul_cap}")

    src = add_rul(add_operating_condition(read_cmapss(source, "train", root)), rul_cap)
    tgt = src if target == source else add_rul(add_operating_condition(read_cmapss(target, "train", root)), rul_cap)
    tgt_units = np.unique(tgt["unit"].to_numpy())
    pool = len(tgt_units) - (1 if target == source else 0)
    if target_engines > pool:
        raise ValueError(f"target_engines={target_engines} but {target} has {len(tgt_units)} training engines")
    # Separate streams, so K = 1, 5, 10 target engines (nested: the first K of one shuffle)
    # leave the training factories unchanged for a seed.
    held_units = np.sort(np.random.default_rng([seed, 1]).permutation(tgt_units)[:target_engines])

    src_units = np.unique(src["unit"].to_numpy())
    if target == source:
        src_units = np.setdiff1d(src_units, held_units)
    src_units = np.random.default_rng([seed, 2]).permutation(src_units)
    groups = [np.sort(src_units[i : i + engines_per_factory]) for i in range(0, len(src_units), engines_per_factory)]
    src = src[src["unit"].isin(src_units)]
    norm = ConditionNormaliser.fit(src)

    scale = float(rul_cap) if scale_target else 1.0
    held_frame = tgt[tgt["unit"].isin(held_units)]
    held_norm = ConditionNormaliser.fit(held_frame) if own_statistics else norm
    train = tuple(
        _factory(_engines_name(source, g), src[src["unit"].isin(g)], norm, window, stride, scale) for g in groups
    )
    held_out = (
        _factory(_engines_name(target, held_units), held_frame, held_norm, window, stride, scale),
    )

    test_frame = _test_frame(target, rul_cap, root)
    test = (_factory(f"{target}/test", test_frame, held_norm, window, 1, scale, last_only=True),)
    short = int((test_frame.groupby("unit").size() < window).sum())

    scaled = f"; y = RUL / {rul_cap} (multiply by target_scale for cycles)" if scale_target else ""
    notes = (
        f"C-MAPSS {source} -> {target}: {len(train)} training factories of up to {engines_per_factory} {source} "
        f"training engines each ({len(src_units)} engines); held-out factory = K = {target_engines} engines "
        f"of the {target} training file (K counts engines, not windows: {held_out[0].num_samples} windows, "
        f"engines {held_units.tolist()}), run to failure. Inputs [n, {len(USED_SENSORS)}, {window}]: "
        f"sensors {list(USED_SENSORS)} (dropped {list(DROPPED_SENSORS)}, constant or two-valued in FD001), "
        f"z-normalised per operating condition (rounded settings; {len(norm.conditions)} in {source}) with "
        f"statistics of the training-factory engines"
        + (f" (the held-out factory and the test split: with the held-out {target} engines' own sensor statistics, "
           "no labels; source statistics put a new fault mode's sensors 15-20 standard deviations out)"
           if own_statistics else ", for every factory and the test split")
        + f"; settings are not inputs. Target: piecewise-linear "
        f"RUL capped at {rul_cap} at the window's last cycle; train/held-out windows every {stride} cycles, "
        f"aligned to end at each engine's failure{scaled}. Test: official {target} test split, one window per test "
        f"engine ({test[0].num_samples}) ending at its last cycle, y = true RUL from RUL_{target} capped at "
        f"{rul_cap}; {short} test engines shorter than {window} cycles are padded on the left by repeating "
        f"their first row. Score with rmse and nasa_score."
    )
    return FactorySplit(
        name=f"cmapss-{source}-to-{target}",
        train=train,
        held_out=held_out,
        task_kind="regression",
        model_config=_model_config(window),
        num_classes=None,
        notes=notes,
        test=test,
        target_scale=scale,
    )


def _as_array(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _diff(pred: object, true: object) -> np.ndarray:
    p, t = _as_array(pred), _as_array(true)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} values but true has {t.size}")
    return p - t


def rul_scores(pred: object, true: object, rul_cap: float = 125) -> dict[str, float]:
    """``rmse`` and ``nasa_score`` in cycles of predictions clipped to [0, ``rul_cap``], the range of
    capped RUL; NaN for both when a prediction is not finite (a diverged model)."""
    p = _as_array(pred)
    if not np.isfinite(p).all():
        return {"rmse": float("nan"), "nasa": float("nan")}
    p = np.clip(p, 0.0, rul_cap)
    return {"rmse": rmse(p, true), "nasa": nasa_score(p, true)}


def rmse(pred: object, true: object) -> float:
    """Root mean squared error (arrays or tensors, flattened)."""
    d = _diff(pred, true)
    return float(np.sqrt(np.mean(d**2)))


def nasa_score(pred: object, true: object) -> float:
    """PHM08 score, d = pred - true: sum(exp(-d/13) - 1) for d < 0 plus sum(exp(d/10) - 1) for d >= 0.

    Late predictions (d > 0) cost more than early ones; lower is better, 0 is perfect.
    """
    d = _diff(pred, true)
    return float(np.sum(np.where(d < 0, np.expm1(-d / 13.0), np.expm1(d / 10.0))))
