"""`fedmeta update`: the factory's feedback loop. New labelled rows from production update the adapted model;
every version is kept; a drift in the prediction error is detected and reported.

A model store is a folder::

    versions/0001/       the adapted package the store started from (never changed)
    versions/0002/ ...   one package per update, each with its lineage (the version before it, the rows' hash)
    CURRENT              the version in use (text); `--rollback N` points it at an existing version
    errors.jsonl         per update: the version that predicted the new rows and each row's error

Each update first predicts the new rows with the current version (the errors a factory would
have seen in production), then adapts the current version to them with the package's recipe,
starting from its weights and keeping its input and target scaling (a model whose head `fedmeta adapt`
solved in closed form solves it again on the new rows; trees get more trees boosted on the new rows, as many and
at the rate their plan gives for that many rows). The errors since the store began are
replayed through a Page-Hinkley test
(`river.drift.PageHinkley`, increases only), each row's error divided by the adapted model's
cross-validated error from its adaptation report so the test's threshold means the same on every
scale: a lasting rise of the error is reported with the row where it was detected and the advice
to re-adapt on recent rows. Replaying the stored errors keeps no detector state besides them.

A window model learns from the windows the new rows complete (`common.data.connector.windows`): the window
ending at each row that has ``length - 1`` rows before it in its group in the update's table,
labelled with that row's target; its errors and the drift test count windows. The store keeps no
rows, so an update's table should start each group with the ``length - 1`` rows before its first
new labelled row: they complete no window of their own, so nothing is learned twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedmeta.client.floor.adapt import labelled_examples, rows_as_task, rows_digest
from fedmeta.client.floor.candidates import Fitted, boosted_trees, package_adaptation
from fedmeta.common import TaskBatch, build_model
from fedmeta.common.data.connector.windows import Windows
from fedmeta.common.meta.closed_form_head import solve_head
from fedmeta.common.meta.models import PENALTY
from fedmeta.common.package.model_package import (
    CLOSED_FORM,
    ModelPackage,
    PackageError,
    load_package,
    package_model,
    write_package,
)

__all__ = ["DRIFT_THRESHOLD", "DriftReport", "ModelStore", "UpdateResult"]

DRIFT_THRESHOLD = 50.0  # Page-Hinkley's: accumulated error above its running mean, in units of the reference error
DRIFT_MIN_ROWS = 30  # rows before the test may fire
_VERSION = re.compile(r"\d{4,}")


@dataclass(frozen=True)
class DriftReport:
    """Where the error rose (the row, counted over the store's whole stream), or None."""

    rows_seen: int
    detected_at_row: int | None
    reference_error: float

    @property
    def detected(self) -> bool:
        return self.detected_at_row is not None


@dataclass(frozen=True)
class UpdateResult:
    version: int
    rows: int  # new labelled examples: rows, or for a window model windows (``examples``)
    mean_error_before: float  # of the version in use, on the new examples, before the update
    drift: DriftReport
    examples: str = "rows"


class ModelStore:
    """A folder of model versions (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.versions_dir = self.path / "versions"
        self.current_file = self.path / "CURRENT"
        self.errors_file = self.path / "errors.jsonl"

    # --- versions ---------------------------------------------------------------
    def create(self, package_dir: Path) -> int:
        """Start the store from an adapted package (copied as version 1); an existing store is refused."""
        if self.path.exists():
            raise PackageError(self.path, "already exists; a model store is started once (use it with --store)")
        package = load_package(package_dir)
        if package.manifest.scaling is None:
            raise PackageError(package_dir, "holds no factory scaling: adapt it with `fedmeta adapt` first")
        self.versions_dir.mkdir(parents=True)
        shutil.copytree(package_dir, self.version_dir(1))
        self._point_at(1)
        return 1

    def version_dir(self, version: int) -> Path:
        return self.versions_dir / f"{version:04d}"

    def versions(self) -> list[int]:
        if not self.versions_dir.is_dir():
            raise PackageError(self.path, "is not a model store (no versions/); start one with --from PACKAGE")
        return sorted(int(p.name) for p in self.versions_dir.iterdir() if _VERSION.fullmatch(p.name))

    def current(self) -> int:
        versions = self.versions()
        try:
            version = int(self.current_file.read_text().strip())
        except (OSError, ValueError):
            raise PackageError(self.path, "has no readable CURRENT version file") from None
        if version not in versions:
            raise PackageError(self.path, f"CURRENT names version {version}, which does not exist")
        return version

    def rollback(self, version: int) -> None:
        """Use ``version`` again; nothing is deleted, later versions stay available."""
        versions = self.versions()
        if version not in versions:
            raise PackageError(self.path, f"has no version {version}; it has versions {versions}")
        self._point_at(version)

    def _point_at(self, version: int) -> None:
        handle, name = tempfile.mkstemp(prefix=".CURRENT.", dir=self.path)
        with os.fdopen(handle, "w") as file:
            file.write(f"{version}\n")
        os.replace(name, self.current_file)

    # --- updates ----------------------------------------------------------------
    def current_package(self) -> tuple[int, ModelPackage]:
        """The version in use and its package."""
        version = self.current()
        return version, load_package(self.version_dir(version))

    def update(self, version: int, package: ModelPackage, x: Tensor, y: Tensor,
               windows: Windows | None = None) -> UpdateResult:
        """Predict the new rows ``x`` (raw, as in the table), ``y`` with ``package`` (`current_package`),
        then adapt it to them into a new version; the drift test runs over every error recorded so far.
        A window model learns from ``windows`` of those rows instead
        (`common.data.connector.windows.read_window_table`)."""
        scaling = package.manifest.scaling
        if scaling is None:
            raise PackageError(self.version_dir(version), "holds no factory scaling")
        if (windows is None) != (package.manifest.window_length is None):
            raise ValueError("a window model updates on the windows of a table, a row model on its rows")
        kind = package.manifest.schema.task
        examples, targets, units = labelled_examples(scaling.apply(x), y, kind, windows)
        errors = _row_errors(package, examples, targets)
        target = package.manifest.target_scaling  # kept: the versions of a store predict on one scale
        learned = targets if target is None else target.apply(targets)
        updated = _updated(package, rows_as_task(examples, learned, units))
        new_version = self.versions()[-1] + 1
        raw, _, _ = labelled_examples(x, y, kind, windows)
        lineage = {"previous_version": version, "previous_sha256": package.manifest.weights_sha256,
                   "rows": len(targets), "rows_sha256": rows_digest(raw, targets)}
        manifest = dataclasses.replace(package.manifest, lineage={**(package.manifest.lineage or {}), **lineage},
                                       weights_sha256="", versions={})
        write_package(self.version_dir(new_version), dataclasses.replace(updated, manifest=manifest))
        with self.errors_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"version": version, "errors": errors.tolist()}) + "\n")
        self._point_at(new_version)
        return UpdateResult(new_version, len(targets), float(errors.mean()), self.drift(package),
                            "rows" if windows is None else "windows")

    def recorded_errors(self) -> np.ndarray:
        if not self.errors_file.exists():
            return np.zeros(0)
        lines = self.errors_file.read_text(encoding="utf-8").splitlines()
        return np.concatenate([np.asarray(json.loads(line)["errors"], dtype=np.float64) for line in lines] or
                              [np.zeros(0)])

    def drift(self, package: ModelPackage) -> DriftReport:
        """Replay every recorded error through the Page-Hinkley test (see the module docstring)."""
        # river (with pandas and SciPy) costs most of a second to import: only a process that updates pays it, not
        # every `fedmeta adapt`, `predict` or `export` (`common.trees.ensemble._xgboost` says why not lazily).
        from river import drift

        reference = _reference_error(package)
        errors = self.recorded_errors()
        detector = drift.PageHinkley(min_instances=DRIFT_MIN_ROWS, threshold=DRIFT_THRESHOLD, mode="up")
        for row, error in enumerate(errors, start=1):
            detector.update(float(error) / reference)
            if detector.drift_detected:
                return DriftReport(len(errors), row, reference)
        return DriftReport(len(errors), None, reference)


def _updated(package: ModelPackage, batch: TaskBatch) -> ModelPackage:
    """The package after its recipe on the new rows ``batch`` (one task): gradient steps from its weights; for a
    head solved in closed form, the head solved again with the penalty it records; for trees, more trees boosted
    by the recipe their plan gives for the rows' count (`client.floor.candidates.boosted_trees`)."""
    manifest = package.manifest
    if manifest.trees is not None:
        recipe = manifest.trees.recipe_for(batch.support_y.shape[1])
        fitted = boosted_trees(package.ensemble, manifest.trees, recipe, manifest.model, manifest.schema.task, batch,
                               seed=0)
        return dataclasses.replace(package, ensemble=fitted.ensembles[0])
    if manifest.adaptation.algorithm == CLOSED_FORM:
        model = build_model(package.manifest.model)
        with torch.no_grad():
            params = solve_head(model, package.weights, batch, package.manifest.schema.task,
                                package.weights[PENALTY].double().exp())
    else:
        adaptation = package_adaptation(package)
        model, params = adaptation.model, adaptation.adapt(batch, package.manifest.adaptation.steps)
    return dataclasses.replace(package, weights=Fitted(model, params).task_weights(0))


def _row_errors(package: ModelPackage, scaled: Tensor, y: Tensor) -> np.ndarray:
    """Each example's error: absolute error in the factory's units (regression) or 1 for a wrong class
    (classification)."""
    with torch.no_grad():
        out = package_model(package)(scaled)
    if package.manifest.schema.task == "classification":
        return (out.argmax(dim=1) != y).double().numpy()
    return (out[:, 0].double() - y.double()).abs().numpy()


def _reference_error(package: ModelPackage) -> float:
    """The error scale drift is measured in: the adapted model's cross-validated error on its own rows
    (RMSE, or the error rate with a floor of 5%: a perfect fold score would make every mistake a drift)."""
    metrics = package.manifest.metrics
    if package.manifest.schema.task == "classification":
        accuracy = metrics.get("adapted/accuracy")
        return max(0.05, 1.0 - accuracy) if accuracy is not None else 0.05
    rmse = metrics.get("adapted/rmse")
    if rmse is None or not rmse > 0:
        raise ValueError("the model has no adaptation report to scale the drift test by; adapt it with "
                         "`fedmeta adapt` first")
    return float(rmse)
