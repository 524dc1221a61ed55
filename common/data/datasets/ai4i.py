"""AI4I 2020 predictive maintenance (UCI 601) split into factories by product quality variant L/M/H.

The data set (``$FEDMETA_DATASETS/ai4i2020/ai4i2020.csv``, see its ``SOURCE.md``) is synthetic: 10,000
milling records with five process readings, a binary "Machine failure" label and five failure-mode flags
(TWF, HDF, PWF, OSF, RNF). The only natural partition is the product quality ``Type``, so the factories are
L (6000 rows), M (2997) and H (1003). The failure-mode flags are labels, never inputs: they determine
"Machine failure" almost exactly and would leak it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from fedmeta.common.data.datasets.base import FactorySplit
from fedmeta.common.data.datasets.paths import dataset_dir
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.meta.tasks import FactoryData

__all__ = [
    "AI4I_FILE",
    "BASE_FEATURES",
    "DERIVED_FEATURES",
    "FAILURE_MODES",
    "FAILURE_TYPE_CLASSES",
    "TASKS",
    "VARIANTS",
    "load_ai4i",
]

AI4I_FILE = "ai4i2020.csv"
VARIANTS: tuple[str, ...] = ("L", "M", "H")
TASKS: tuple[str, ...] = ("failure", "failure-type")
BASE_FEATURES: tuple[str, ...] = (
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
)
# Derived features, computed from the base ones: mechanical power in W (torque * angular speed in rad/s)
# and process minus air temperature in K. HDF and PWF are thresholds on exactly these quantities.
DERIVED_FEATURES: tuple[str, ...] = ("Power [W]", "Temperature difference [K]")
# Failure-mode flags in priority order: a row with several flags gets the first one set.
FAILURE_MODES: tuple[str, ...] = ("TWF", "HDF", "PWF", "OSF", "RNF")
FAILURE_TYPE_CLASSES: tuple[str, ...] = ("none", *FAILURE_MODES)
_TYPE = "Type"
_FAILURE = "Machine failure"
_REQUIRED = (_TYPE, *BASE_FEATURES, _FAILURE, *FAILURE_MODES)


def _read_table(root: str | os.PathLike[str] | None) -> pd.DataFrame:
    path = dataset_dir("ai4i2020", root=root) / AI4I_FILE
    if not path.is_file():
        raise FileNotFoundError(f"AI4I 2020 file {AI4I_FILE!r} not found at {path} (the files are never downloaded)")
    df = pd.read_csv(path, encoding="utf-8-sig")
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    unknown = sorted(set(df[_TYPE].astype(str)) - set(VARIANTS))
    if unknown:
        raise ValueError(f"{path}: column {_TYPE!r} has unknown product variant(s) {unknown}; expected {VARIANTS}")
    for column in _REQUIRED[1:]:
        values = pd.to_numeric(df[column], errors="coerce")
        if values.isna().any():
            row = int(values.isna().to_numpy().nonzero()[0][0])
            raise ValueError(f"{path}: column {column!r} has missing or non-numeric values (first at data row {row})")
        df[column] = values
    return df


def _features(df: pd.DataFrame, derived: bool) -> np.ndarray:
    x = df[list(BASE_FEATURES)].to_numpy(dtype=np.float64)
    if derived:
        air, process, speed, torque = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
        power = torque * speed * (2.0 * np.pi / 60.0)
        x = np.column_stack([x, power, process - air])
    return x


def _labels(df: pd.DataFrame, task: str) -> np.ndarray:
    if task == "failure":
        return df[_FAILURE].to_numpy(dtype=np.int64)
    flags = df[list(FAILURE_MODES)].to_numpy(dtype=np.int64) != 0
    # Class 0 = no flag; otherwise 1 + index of the first flag set (priority TWF > HDF > PWF > OSF > RNF).
    return np.where(flags.any(axis=1), flags.argmax(axis=1) + 1, 0).astype(np.int64)


def _held_out_variants(held_out: str | Sequence[str]) -> tuple[str, ...]:
    chosen = (held_out,) if isinstance(held_out, str) else tuple(held_out)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown held-out variant(s) {unknown}; choose from {VARIANTS}")
    if not chosen:
        raise ValueError(f"held_out must name at least one variant of {VARIANTS}")
    if set(chosen) == set(VARIANTS):
        raise ValueError(f"held_out {chosen} leaves no factory to train on")
    return tuple(v for v in VARIANTS if v in chosen)


def _counts_text(names: Sequence[str], ys: Sequence[np.ndarray], classes: Sequence[str]) -> str:
    parts = []
    for name, y in zip(names, ys, strict=True):
        counts = np.bincount(y, minlength=len(classes))
        per_class = ", ".join(f"{c} {int(n)}" for c, n in zip(classes, counts, strict=True))
        parts.append(f"{name} ({y.size} rows): {per_class}")
    return "; ".join(parts)


def load_ai4i(
    task: str = "failure",
    *,
    held_out: str | Sequence[str] = "H",
    root: str | os.PathLike[str] | None = None,
    derived_features: bool = True,
) -> FactorySplit:
    """AI4I 2020 as factories L/M/H; the ``held_out`` variant(s) never train.

    ``task``: ``"failure"`` (binary "Machine failure", classes no/yes) or ``"failure-type"`` (6 classes,
    ``FAILURE_TYPE_CLASSES``: none, TWF, HDF, PWF, OSF, RNF, labelled from the flags; see ``notes``).
    Features: the five process readings, plus power and temperature difference when ``derived_features``,
    standardised with the mean and standard deviation of the training factories' rows only.
    ``root`` is the data sets folder (default: `dataset_dir`'s).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    held = _held_out_variants(held_out)
    train_names = tuple(v for v in VARIANTS if v not in held)
    df = _read_table(root)
    x_all, y_all = _features(df, derived_features), _labels(df, task)
    variant = df[_TYPE].astype(str).to_numpy()
    masks = {v: variant == v for v in VARIANTS}
    for v, mask in masks.items():
        if not mask.any():
            raise ValueError(f"AI4I 2020 file has no rows of product variant {v!r}")

    train_x = x_all[np.any([masks[v] for v in train_names], axis=0)]
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def factory(v: str) -> FactoryData:
        x = torch.from_numpy(((x_all[masks[v]] - mean) / std).astype(np.float32))
        return FactoryData(v, x, torch.from_numpy(y_all[masks[v]]))

    classes = ("no failure", "failure") if task == "failure" else FAILURE_TYPE_CLASSES
    feature_names = BASE_FEATURES + (DERIVED_FEATURES if derived_features else ())
    names = (*train_names, *held)
    counts = _counts_text(names, [y_all[masks[v]] for v in names], classes)
    capacity = []
    for v in held:
        failure_counts = np.bincount(y_all[masks[v]], minlength=len(classes))[1:]
        listed = ", ".join(f"{c} {int(n)}" for c, n in zip(classes[1:], failure_counts, strict=True))
        usable = [c for c, n in zip(classes[1:], failure_counts, strict=True) if n >= 6]
        capacity.append(f"{v} has {listed} (classes usable at K=5 with >= 1 query row: {usable or 'none'})")
    labelling = (
        "Label: 'Machine failure' (1 = failed). "
        if task == "failure"
        else (
            "Label: from the failure-mode flags, class 0 'none' = no flag set, else the first flag set in the "
            "priority order TWF > HDF > PWF > OSF > RNF (24 rows have several flags, e.g. PWF+OSF -> PWF, "
            "TWF+RNF -> TWF). RNF-only rows are RNF even though 18 of the 19 RNF rows have 'Machine failure' 0, "
            "and the 9 rows with 'Machine failure' 1 but no flag are 'none', so this task disagrees with "
            "'failure' on 27 rows. "
        )
    )
    if task == "failure-type":
        capacity.append(
            "a 6-way failure-type task cannot be drawn on a held-out variant whose rarest mode has fewer than "
            "K + query_shots rows; use fewer ways (e.g. none vs. the usable modes) or the binary task"
        )
    notes = (
        f"AI4I 2020 (synthetic, UCI 601), task {task!r}, factories = product quality variants; train "
        f"{list(train_names)}, held out {list(held)} (never trained on). {labelling}"
        f"Features ({len(feature_names)}): {', '.join(feature_names)}"
        f"{' (power = torque * speed in rad/s; temperature difference = process - air)' if derived_features else ''}"
        f"; standardised with the mean/std of the training factories' rows only, so held-out features are not "
        f"exactly zero-mean. Never inputs: UDI, Product ID, Type, 'Machine failure' and the failure flags "
        f"{'/'.join(FAILURE_MODES)} (they leak the label). "
        f"Class counts per factory: {counts}. "
        f"K shots are counted per class: a K-shot task holds K labelled rows of each of its classes (a 2-way "
        f"5-shot failure task = 5 failures + 5 non-failures), not K random rows, which in H (21 failures in 1003 "
        f"rows) would usually contain no failure. A class can only be sampled where a factory has at least "
        f"K + query_shots rows of it (ClassificationTaskSampler drops rarer classes), so K + query_shots is capped by "
        f"the rarest class used: held-out {'; '.join(capacity)}. Support sets are "
        f"therefore class-balanced, unlike the ~2-4% failure rate; judge adapted models with F1 and AUROC "
        f"(the benchmark's field metrics) on the held-out rows not used as support, never with accuracy."
    )
    return FactorySplit(
        name=f"ai4i2020-{task}",
        train=tuple(factory(v) for v in train_names),
        held_out=tuple(factory(v) for v in held),
        task_kind="classification",
        model_config=ModelConfig("mlp", (len(feature_names),), len(classes)),
        num_classes=len(classes),
        notes=notes,
    )
