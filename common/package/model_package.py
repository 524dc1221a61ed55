"""The model package: what a federation hands to every factory, and what a factory adapts and predicts with.

A package is a folder::

    model.json            the manifest: schema, model config, adaptation recipe, input and target scaling,
                          where it came from (run, round, held-out metrics), package versions,
                          the SHA-256 of the weights file and, once adapted, its lineage
    weights.safetensors   the weights (Meta-SGD: its learned step sizes too, under ``inner_lr/``)

or, for a federation's gradient-boosted trees (`common.trees`), ``trees.json`` in place of the weights: the
ensemble as XGBoost's own JSON model, readable by XGBoost in any language; the manifest's ``trees`` says how
a factory continues boosting them (`common.trees.settings.TreePlan`) and ``weights_sha256`` hashes that file.

A package is written to a temporary folder beside its final name and renamed into place, so a
crash never leaves half a package under a final name, and an existing package is never
overwritten. Loading checks the manifest, the weights' hash, names and shapes against the
model config, and that every value is finite; each problem is a `PackageError` naming the
folder. Version differences (the package built with another fedmeta or torch) are reported,
not refused: a factory's machine rarely runs the server's exact versions.

A regression package scaled from a factory's rows predicts the target standardised; only an adapted
package knows the factory's target scale (`Manifest.target_scaling`), so only it predicts in the factory's
units (`package_model`). With no labelled row (K = 0) there is no scale to map back to, and every command
that would show a prediction says so instead of printing a number in no unit.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.federation.app_identity import DISTRIBUTION
from fedmeta.common.federation.rounds import (
    TREE_ALGORITHMS,
    local_algorithm,
    pack_meta_parameters,
    unpack_meta_parameters,
)
from fedmeta.common.meta.losses import TASK_KINDS
from fedmeta.common.meta.models import ModelConfig, build_model
from fedmeta.common.run_settings import ADAPTATION_RECIPES
from fedmeta.common.trees.settings import TreePlan

__all__ = [
    "BOOSTED",
    "CLOSED_FORM",
    "MANIFEST_FILE",
    "PACKAGE_FORMAT",
    "SCALING_RULES",
    "TREES_FILE",
    "WEIGHTS_FILE",
    "AdaptationPlan",
    "Manifest",
    "ModelPackage",
    "PackageError",
    "PackageSchema",
    "installed_versions",
    "load_package",
    "package_model",
    "save_package",
    "save_tree_package",
    "write_package",
]

# 2: a regression package scaled from a factory's rows predicts its target standardised (`target_scaling`).
# 3: an ``r2d2`` head is solved toward the package's own head, each column at its own penalty.
PACKAGE_FORMAT = 3
# An adapted package whose head is solved in closed form on the factory's rows (`client.floor.candidates`):
# updating it solves the head again, with the penalty it records.
CLOSED_FORM = "closed-form"
# An adapted tree package (`client.floor.candidates`): updating it boosts more trees on the new rows, by its plan.
BOOSTED = "boosted"
MANIFEST_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
TREES_FILE = "trees.json"  # a tree package's model, in place of the weights
MAX_TREES_BYTES = 1 << 30  # a tree package's model file at most (a federation's trees take a few MB)
# "factory-rows": each factory standardises its inputs with its own rows (`common.data.scaling`);
# "source": inputs come scaled by the data source (a shared data set's loader, a synthetic
# generator), so a factory's own table cannot be fed to the package.
SCALING_RULES = ("factory-rows", "source")
_VERSIONED = (DISTRIBUTION, "torch")


class PackageError(RuntimeError):
    """A package folder that is missing, corrupt, inconsistent or would be overwritten."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"model package {str(path)!r}: {problem}")
        self.path = path


@dataclass(frozen=True)
class PackageSchema:
    """The input columns in the model's order (a window model: its channels), the target, the task and
    (classification) the class order. A model that reads windows of sensor signals rebuilds them from a
    long-format table, one row per time step: ``group_column`` names the unit or machine a row belongs to
    and ``time_column`` orders its rows (None where the package does not say: a row model, or a package
    from before windows were read from tables; the factory's own schema may name them)."""

    features: tuple[str, ...]
    target: str
    task: str
    classes: tuple[str, ...] | None = None
    group_column: str | None = None
    time_column: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.task not in TASK_KINDS:
            raise ValueError(f"task must be one of {TASK_KINDS}, got {self.task!r}")
        if self.task == "classification" and not self.classes:
            raise ValueError("a classification schema needs its classes")
        roles = {"group_column": self.group_column, "time_column": self.time_column}
        for key, name in roles.items():
            if name is not None and (not isinstance(name, str) or not name or name == self.target):
                raise ValueError(f"{key} must be a column name other than the target, got {name!r}")
        if self.group_column is not None and self.group_column == self.time_column:
            raise ValueError(f"group_column and time_column are both {self.group_column!r}")


@dataclass(frozen=True)
class AdaptationPlan:
    """How a factory adapts the package: the federation's evaluation settings (`EvaluationSettings`), or
    `CLOSED_FORM` where the factory chose a model whose head is solved on its rows, or `BOOSTED` where it chose
    trees boosted on its rows (their steps and step size unused)."""

    algorithm: str
    steps: int
    lr: float
    recipe: str = "fixed"

    def __post_init__(self) -> None:
        if self.algorithm not in (CLOSED_FORM, BOOSTED):
            local_algorithm(self.algorithm)
        if self.recipe not in ADAPTATION_RECIPES:
            raise ValueError(f"recipe must be one of {ADAPTATION_RECIPES}, got {self.recipe!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_mapping_of(value: object, check: Callable[[object], bool]) -> bool:
    return isinstance(value, Mapping) and all(check(v) for v in value.values())


# What a manifest's fields hold, as JSON gives them, before the parts are parsed: how to check one, and what to
# call it in an error.
_PLAIN_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    **{key: (lambda v: isinstance(v, Mapping), "an object") for key in ("schema", "model", "adaptation")},
    **{key: (lambda v: v is None or isinstance(v, Mapping), "an object or null")
       for key in ("scaling", "target_scaling", "trees", "lineage", "decision")},
    "run": (lambda v: isinstance(v, str), "a text"),
    "round": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0"),
    "weights_sha256": (lambda v: isinstance(v, str), "a text"),
    "metrics": (lambda v: _is_mapping_of(v, _is_number), "an object of numbers"),
    "versions": (lambda v: _is_mapping_of(v, lambda version: isinstance(version, str)), "an object of texts"),
    "chosen": (lambda v: v is None or isinstance(v, str), "a text or null"),
}


def _check_decision(decision: Mapping[str, Any], schema: PackageSchema) -> None:
    if schema.task != "classification" or len(schema.classes or ()) != 2:
        raise ValueError("a failure-rate decision applies to two-class models only")
    keys = {"failure_class", "failure_rate", "adapted_rate", "threshold"}
    if set(decision) != keys:
        raise ValueError(f"a decision holds {sorted(keys)}, got {sorted(decision)}")
    if decision["failure_class"] not in (schema.classes or ()):
        raise ValueError(f"the decision's failure class {decision['failure_class']!r} is not one of {schema.classes}")
    numbers = all(_is_number(decision[key]) for key in ("failure_rate", "adapted_rate", "threshold"))
    rates_ok = numbers and 0 < decision["failure_rate"] < 1 and 0 < decision["adapted_rate"] < 1
    if not rates_ok or not 0 <= decision["threshold"] <= 1:
        raise ValueError("a decision needs failure rates in (0, 1) and a threshold in [0, 1]")


@dataclass(frozen=True)
class Manifest:
    """Everything but the weights. ``scaling`` is the factory's own input statistics once adapted
    (None in a federation's package: it holds no factory's statistics); ``lineage`` says which
    package and which rows an adapted package came from."""

    schema: PackageSchema
    model: ModelConfig
    adaptation: AdaptationPlan
    scaling_rule: str
    run: str
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    weights_sha256: str = ""
    scaling: FeatureScaling | None = None
    lineage: dict[str, Any] | None = None
    # Binary classification at a factory's failure rate (`common.package.decision`): failure_class, failure_rate (the
    # factory's), adapted_rate (the failure share of the rows the model was adapted on) and threshold.
    decision: dict[str, Any] | None = None
    # An adapted regression package of a factory's table: the target statistics of the rows it adapted on.
    target_scaling: TargetScaling | None = None
    # An adapted package: which of the factory's candidates it is (`client.floor.candidates`).
    chosen: str | None = None
    # A package of gradient-boosted trees (its model in `TREES_FILE`): how a factory continues boosting them.
    trees: TreePlan | None = None
    format: int = PACKAGE_FORMAT

    def __post_init__(self) -> None:
        if self.scaling_rule not in SCALING_RULES:
            raise ValueError(f"scaling_rule must be one of {SCALING_RULES}, got {self.scaling_rule!r}")
        if self.model.input_shape[0] != len(self.schema.features):
            inputs = "features" if self.window_length is None else "channels"
            raise ValueError(f"the model reads {self.model.input_shape[0]} {inputs} but the schema lists "
                             f"{len(self.schema.features)}")
        if self.decision is not None:
            _check_decision(self.decision, self.schema)
        if self.scaling is not None and self.scaling.mean.numel() != len(self.schema.features):
            raise ValueError(f"the scaling has {self.scaling.mean.numel()} features, the schema "
                             f"{len(self.schema.features)}")
        if self.target_scaling is not None and not self.standardized_target:
            raise ValueError("a target scaling belongs to a regression package scaled from a factory's rows")
        tree_plans = (*TREE_ALGORITHMS, BOOSTED)
        if (self.trees is not None) != (self.adaptation.algorithm in tree_plans):
            raise ValueError(f"a package adapting as {self.adaptation.algorithm!r} needs its tree plan"
                             if self.trees is None else
                             f"a tree package adapts as {', '.join(tree_plans)}, not {self.adaptation.algorithm!r}")

    @property
    def model_file(self) -> str:
        """The file holding the model: the weights, or a tree package's trees."""
        return WEIGHTS_FILE if self.trees is None else TREES_FILE

    @property
    def standardized_target(self) -> bool:
        """Whether the model predicts the target standardised with a factory's own labelled rows."""
        return self.schema.task == "regression" and self.scaling_rule == "factory-rows"

    @property
    def window_length(self) -> int | None:
        """How many consecutive rows of a group one input spans: a window model's length (its config's
        ``input_shape`` is ``(channels, length)``), None for a model that reads one row."""
        return self.model.input_shape[1] if len(self.model.input_shape) == 2 else None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["schema"] = asdict(self.schema)
        data["model"] = asdict(self.model)
        data["adaptation"] = asdict(self.adaptation)
        data["scaling"] = None if self.scaling is None else self.scaling.to_json()
        data["target_scaling"] = None if self.target_scaling is None else self.target_scaling.to_json()
        data["trees"] = None if self.trees is None else self.trees.to_json()
        return json.loads(json.dumps(data))  # tuples to lists: what loading sees

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Parse a manifest; a missing key or a bad value is a ``ValueError`` naming it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"the manifest must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        required = ("schema", "model", "adaptation", "scaling_rule", "run", "round", "weights_sha256")
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"the manifest lacks {', '.join(map(repr, missing))}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"the manifest has unknown keys {unknown}")
        for key, (check, kind) in _PLAIN_FIELDS.items():
            if key in data and not check(data[key]):
                raise ValueError(f"the manifest's {key!r} must be {kind}, got {data[key]!r:.200}")
        values = dict(data)
        try:
            values["schema"] = PackageSchema(**values["schema"])
            values["model"] = ModelConfig.from_mapping(values["model"])
            values["adaptation"] = AdaptationPlan(**values["adaptation"])
            if values.get("scaling") is not None:
                values["scaling"] = FeatureScaling.from_json(values["scaling"])
            if values.get("target_scaling") is not None:
                values["target_scaling"] = TargetScaling.from_json(values["target_scaling"])
            if values.get("trees") is not None:
                values["trees"] = TreePlan.from_json(values["trees"])
        except TypeError as error:  # a sub-object with unknown or missing keys
            raise ValueError(str(error)) from None
        return cls(**values)


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class ModelPackage:
    """Weights and Meta-SGD step sizes (empty otherwise) with their manifest, or a tree package's ``ensemble``
    (XGBoost JSON; its weights empty); ``version_notes`` lists the versions that differ from this machine's
    (filled by `load_package`)."""

    weights: dict[str, Tensor]
    inner_lrs: dict[str, Tensor]
    manifest: Manifest
    version_notes: tuple[str, ...] = ()
    ensemble: bytes = b""


class _InFactoryUnits(nn.Module):
    """A regression model's standardised prediction mapped to the factory's units (float64)."""

    def __init__(self, model: nn.Module, target: TargetScaling) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # what the model reads and writes, as on the model itself
        self.mean, self.std = target.mean, target.std

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).double() * self.std + self.mean


def package_model(package: ModelPackage) -> nn.Module:
    """The package's model with its weights, in eval mode, reading scaled inputs and predicting in the
    factory's units; a ``ValueError`` where it cannot (a standardised target and no labelled row to
    scale it by: K = 0)."""
    manifest = package.manifest
    if manifest.trees is not None:
        from fedmeta.common.package.tree_model import TreeModel  # imports XGBoost: only for a tree package

        model: nn.Module = TreeModel(package.ensemble, manifest.model, manifest.schema.task)
    else:
        model = build_model(manifest.model)
        model.load_state_dict(package.weights)
    model.eval()
    if not manifest.standardized_target:
        return model
    if manifest.target_scaling is None:
        raise ValueError(f"this package predicts {manifest.schema.target!r} relative to a factory's own typical value "
                         "and spread, which only its labelled rows tell: adapt it to 2 or more labelled rows with "
                         "`fedmeta adapt` first")
    return _InFactoryUnits(model, manifest.target_scaling).eval()


def installed_versions() -> dict[str, str]:
    """This machine's fedmeta and torch versions, as a package records them."""
    return {name: importlib.metadata.version(name) for name in _VERSIONED}


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _tensors(weights: Mapping[str, Tensor], inner_lrs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    packed = pack_meta_parameters(weights, inner_lrs)
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in packed.items()}


def _check_tensors(path: Path, manifest: Manifest, weights: Mapping[str, Tensor],
                   inner_lrs: Mapping[str, Tensor]) -> None:
    """Names and shapes the model config builds; Meta-SGD rates for every weight; every value finite."""
    config = manifest.model
    if config.depth > len(weights):  # every layer holds a weight: a damaged depth must not build millions of layers
        raise PackageError(path, f"the weights do not fit the {config.name} model config: {len(weights)} tensors, "
                                 f"fewer than its depth {config.depth}")
    with torch.device("meta"):  # shapes only: a damaged size must not allocate its model
        expected = {n: tuple(p.shape) for n, p in build_model(config).named_parameters()}
    got = {n: tuple(t.shape) for n, t in weights.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(n for n in set(got) & set(expected) if got[n] != expected[n])
        raise PackageError(path, f"the weights do not fit the {config.name} model config: missing {missing}, "
                                 f"unexpected {extra}, wrong shapes {wrong}")
    wants_rates = manifest.adaptation.algorithm == "metasgd"
    if wants_rates and {n: tuple(t.shape) for n, t in inner_lrs.items()} != expected:
        raise PackageError(path, "a Meta-SGD package needs a learned step size of every weight's shape")
    if not wants_rates and inner_lrs:
        raise PackageError(path, f"learned step sizes belong to Meta-SGD, not {manifest.adaptation.algorithm}")
    bad = sorted(n for n, t in {**weights, **inner_lrs}.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise PackageError(path, f"non-finite values in {bad}")


def _extra_files(path: Path, extras: Mapping[str, str]) -> dict[str, bytes]:
    """The files to write beside a package, as bytes; checked before anything is written: a name that is not a
    new plain file name (a path, ``..``, a NUL, one of the package's own files) or text UTF-8 cannot hold."""
    files = {}
    for name, text in extras.items():
        if (not isinstance(name, str) or name in (MANIFEST_FILE, WEIGHTS_FILE, TREES_FILE, "", ".", "..")
                or Path(name).name != name or "\0" in name):
            raise PackageError(path, f"{name!r} cannot be written beside a package's own files")
        try:
            files[name] = text.encode("utf-8")
        except (AttributeError, UnicodeEncodeError):  # not text, or a lone surrogate
            raise PackageError(path, f"{name!r} must be text that UTF-8 can hold, got {text!r:.50}") from None
    return files


def _write_package(path: Path, manifest: Manifest, write_model: Callable[[Path], None],
                   extras: Mapping[str, str] | None) -> Manifest:
    """Write a package into the new folder ``path`` through a staging folder renamed into place (see the module
    docstring): ``write_model`` writes the model file into the folder it is given. The manifest written."""
    if path.exists():
        raise PackageError(path, "already exists; a package is never overwritten (choose another folder)")
    files = _extra_files(path, extras or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_model(staging / manifest.model_file)
        digest = _digest(staging / manifest.model_file)
        if manifest.weights_sha256 and manifest.weights_sha256 != digest:
            raise PackageError(path, f"the {manifest.model_file} hashes to {digest}, the manifest records "
                                     f"{manifest.weights_sha256}: it was changed or damaged on the way")
        manifest = replace(manifest, weights_sha256=digest, versions=manifest.versions or installed_versions())
        with (staging / MANIFEST_FILE).open("w", encoding="utf-8") as handle:
            json.dump(manifest.to_json(), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if path.exists():  # appeared while writing
            raise PackageError(path, "already exists; a package is never overwritten (choose another folder)")
        os.rename(staging, path)
    except OSError as error:  # a name too long for the file system, a full disk
        raise PackageError(path, f"cannot be written: {error.strerror or error}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def save_package(
    directory: str | os.PathLike[str],
    weights: Mapping[str, Tensor],
    inner_lrs: Mapping[str, Tensor],
    manifest: Manifest,
    extras: Mapping[str, str] | None = None,
) -> ModelPackage:
    """Write a package to the new folder ``directory``, with ``extras`` (file name -> text, such as
    an adaptation report) beside it. The manifest's hash is filled in or, where it
    holds one (a package received from the server), checked against the weights; its versions are
    this machine's unless it records the ones it was built with. An existing ``directory`` is
    refused, never overwritten."""
    path = Path(directory)
    if manifest.trees is not None:
        raise PackageError(path, "a tree package holds trees, not weights: save it with save_tree_package")
    tensors = _tensors(weights, inner_lrs)
    plain, rates = unpack_meta_parameters(tensors)
    _check_tensors(path, manifest, plain, rates)
    written = _write_package(path, manifest, lambda file: save_file(tensors, str(file)), extras)
    return ModelPackage(plain, rates, written)


def _check_ensemble(path: Path, manifest: Manifest, ensemble: bytes) -> None:
    """The trees fit the manifest's inputs, task and classes; every leaf is finite; XGBoost reads them."""
    from fedmeta.common.trees.ensemble import TreesRejected, check_trees  # imports XGBoost: tree packages only
    from fedmeta.common.trees.shape import tree_shape

    if not ensemble:
        raise PackageError(path, "a tree package needs at least one tree")
    try:
        check_trees(ensemble, tree_shape(manifest.model, manifest.schema.task), max_rounds=sys.maxsize,
                    max_leaf=math.inf, max_bytes=MAX_TREES_BYTES)
    except TreesRejected as error:
        raise PackageError(path, f"{TREES_FILE}: {error}") from None


def save_tree_package(directory: str | os.PathLike[str], ensemble: bytes, manifest: Manifest,
                      extras: Mapping[str, str] | None = None) -> ModelPackage:
    """`save_package` for a package of trees: ``ensemble`` is the XGBoost JSON model, ``manifest.trees`` says
    how a factory continues it."""
    path = Path(directory)
    if manifest.trees is None:
        raise PackageError(path, "the manifest names no tree plan; a network's package is saved with save_package")
    _check_ensemble(path, manifest, ensemble)
    written = _write_package(path, manifest, lambda file: file.write_bytes(ensemble), extras)
    return ModelPackage({}, {}, written, ensemble=ensemble)


def write_package(directory: str | os.PathLike[str], package: ModelPackage,
                  extras: Mapping[str, str] | None = None) -> ModelPackage:
    """`save_package` or `save_tree_package`, whichever ``package`` is."""
    if package.manifest.trees is not None:
        return save_tree_package(directory, package.ensemble, package.manifest, extras)
    return save_package(directory, package.weights, package.inner_lrs, package.manifest, extras)


def _version_notes(recorded: Mapping[str, str]) -> tuple[str, ...]:
    here = installed_versions()
    return tuple(f"{name}: package built with {recorded.get(name, 'an unrecorded version')}, this machine has "
                 f"{here[name]}" for name in _VERSIONED if recorded.get(name) != here[name])


def load_package(directory: str | os.PathLike[str]) -> ModelPackage:
    """Read and check a package (see the module docstring); every problem is a `PackageError`."""
    path = Path(directory)
    if not path.is_dir():
        raise PackageError(path, "is not a folder" if path.exists() else "does not exist")
    if not (path / MANIFEST_FILE).is_file():
        raise PackageError(path, f"has no {MANIFEST_FILE}")
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackageError(path, f"{MANIFEST_FILE} is not valid JSON ({error})") from None
    if isinstance(data, Mapping) and data.get("format") != PACKAGE_FORMAT:
        raise PackageError(path, f"package format {data.get('format')!r}; this fedmeta reads format {PACKAGE_FORMAT}")
    try:
        manifest = Manifest.from_json(data)
    except ValueError as error:
        raise PackageError(path, f"{MANIFEST_FILE}: {error}") from None
    model_file = path / manifest.model_file
    if not model_file.is_file():
        raise PackageError(path, f"has no {manifest.model_file}")
    ensemble = model_file.read_bytes() if manifest.trees is not None else b""  # read once: hashed, then checked
    digest = hashlib.sha256(ensemble).hexdigest() if ensemble else _digest(model_file)
    if digest != manifest.weights_sha256:
        raise PackageError(path, f"{manifest.model_file} has SHA-256 {digest}, the manifest records "
                                 f"{manifest.weights_sha256}: the file was changed or damaged")
    notes = _version_notes(manifest.versions)
    if manifest.trees is not None:
        _check_ensemble(path, manifest, ensemble)
        return ModelPackage({}, {}, manifest, notes, ensemble)
    try:
        tensors = load_file(str(model_file))
    except SafetensorError as error:
        raise PackageError(path, f"{WEIGHTS_FILE} cannot be read ({error})") from None
    weights, inner_lrs = unpack_meta_parameters(tensors)
    _check_tensors(path, manifest, weights, inner_lrs)
    return ModelPackage(weights, inner_lrs, manifest, notes)
