"""`fedmeta optimize`: process settings recommended by a quality model, within the plant's bounds.

The bounds file (JSON) says which features the plant controls and in what range, the values the
others are held at, and the goal::

    {"controllable": {"temperature": [180, 220], "speed": [1.0, 3.0]},
     "fixed": {"pressure": 1.2},
     "goal": "maximize"}                       # or "minimize"; classification: "class": "scrap"

Every feature of the package is either controllable or fixed, and nothing else may be named. A
regression model's prediction is maximised or minimised; a classification model's probability
of ``class`` is (minimise the probability of a failure class, maximise that of a good one).
The search runs in the model's scaled inputs with L-BFGS-B (scipy) and the model's exact
gradients (torch), from several seeded starts spread over the bounds (Latin hypercube, scipy),
so a model with more than one optimum is not stuck in the first; distinct results are ranked.
Inputs are scaled as the package's adaptation scaled them, so only an adapted package (which
knows the factory's units) can recommend settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmeta.common.package.model_package import ModelPackage, package_model

__all__ = ["GOALS", "Bounds", "Recommendation", "recommend_settings"]

GOALS = ("maximize", "minimize")


@dataclass(frozen=True)
class Bounds:
    controllable: dict[str, tuple[float, float]]
    fixed: dict[str, float]
    goal: str
    target_class: str | None = None

    @classmethod
    def from_json(cls, path: Path, package: ModelPackage) -> Bounds:
        """Read and check a bounds file against the package's schema; every problem in one ``ValueError``."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"bounds file {str(path)!r} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"bounds file {str(path)!r} is not valid JSON ({error})") from None
        return cls.from_mapping(data, package, str(path))

    @classmethod
    def from_mapping(cls, data: object, package: ModelPackage, source: str = "bounds") -> Bounds:
        schema, problems = package.manifest.schema, []
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: must be a JSON object with 'controllable', 'fixed' and 'goal'")
        unknown = sorted(set(data) - {"controllable", "fixed", "goal", "class"})
        if unknown:
            problems.append(f"unknown keys {unknown}")
        controllable: dict[str, tuple[float, float]] = {}
        for name, pair in dict(data.get("controllable") or {}).items():
            if (not isinstance(pair, list | tuple) or len(pair) != 2
                    or not all(isinstance(v, int | float) and math.isfinite(v) for v in pair) or pair[0] >= pair[1]):
                problems.append(f"controllable {name!r} needs a range [low, high] of finite numbers with low < high, "
                                f"got {pair!r}")
            else:
                controllable[name] = (float(pair[0]), float(pair[1]))
        fixed: dict[str, float] = {}
        for name, value in dict(data.get("fixed") or {}).items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                problems.append(f"fixed {name!r} needs a finite number, got {value!r}")
            else:
                fixed[name] = float(value)
        named = [*dict(data.get("controllable") or {}), *dict(data.get("fixed") or {})]
        outside = [n for n in named if n not in schema.features]
        if outside:
            problems.append(f"{outside} are not features of the model (its features: {list(schema.features)})")
        both = sorted(set(dict(data.get("controllable") or {})) & set(dict(data.get("fixed") or {})))
        if both:
            problems.append(f"{both} are both controllable and fixed")
        unset = [f for f in schema.features if f not in named]
        if unset:
            problems.append(f"features {unset} are neither controllable nor fixed")
        if not controllable and not problems:
            problems.append("no feature is controllable")
        goal = data.get("goal")
        if goal not in GOALS:
            problems.append(f"'goal' must be 'maximize' or 'minimize', got {goal!r}")
        target_class = data.get("class")
        if schema.task == "classification":
            if target_class not in (schema.classes or ()):
                problems.append(f"a classification model needs 'class', one of {list(schema.classes or ())}, "
                                f"got {target_class!r}")
        elif target_class is not None:
            problems.append("'class' applies to classification models only")
        if problems:
            raise ValueError(f"{source}: " + "; ".join(problems))
        return cls(controllable, fixed, str(goal), None if target_class is None else str(target_class))


@dataclass(frozen=True)
class Recommendation:
    settings: dict[str, float]  # the controllable features' values
    predicted: float  # the predicted quality, or the class's probability


def recommend_settings(package: ModelPackage, bounds: Bounds, *, starts: int = 20, top: int = 5,
                       seed: int = 0) -> list[Recommendation]:
    """The ``top`` best distinct settings found from ``starts`` L-BFGS-B runs, best first."""
    manifest = package.manifest
    if manifest.scaling is None or manifest.model.name != "mlp":
        raise ValueError("recommending settings needs an adapted tabular package (it knows the factory's units): "
                         "adapt it with `fedmeta adapt` first")
    if manifest.trees is not None:
        raise ValueError("recommending settings follows the model's gradients, and trees have none (their "
                         "prediction is a step function of the settings): adapt with --keep 'least squares' or "
                         "'logistic regression', or keep a network package, to optimise")
    model = package_model(package)
    features = list(manifest.schema.features)
    mean, std = manifest.scaling.mean.double(), manifest.scaling.std.double()
    free = [features.index(name) for name in bounds.controllable]
    base = torch.tensor([bounds.fixed.get(name, 0.0) for name in features], dtype=torch.float64)
    low = np.array([(bounds.controllable[n][0] - mean[i].item()) / std[i].item() for n, i in
                    zip(bounds.controllable, free, strict=True)])
    high = np.array([(bounds.controllable[n][1] - mean[i].item()) / std[i].item() for n, i in
                     zip(bounds.controllable, free, strict=True)])
    sign = -1.0 if bounds.goal == "maximize" else 1.0
    class_index = (manifest.schema.classes or ()).index(bounds.target_class) if bounds.target_class else None

    def outcome(z: torch.Tensor) -> torch.Tensor:
        x = ((base - mean) / std).clone()
        x[free] = z
        out = model(x.float()[None])[0].double()
        return out[0] if class_index is None else torch.softmax(out, dim=-1)[class_index]

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        point = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        value = sign * outcome(point)
        value.backward()
        return float(value.detach()), point.grad.numpy().astype(np.float64)

    # SciPy's optimisers and samplers cost over a second to import: only `fedmeta optimize` pays it, not every
    # factory floor command that imports this module (`common.trees.ensemble._xgboost` says why not lazily).
    from scipy import optimize, stats

    found: list[Recommendation] = []
    sampler = stats.qmc.LatinHypercube(d=len(free), seed=seed)
    for start in stats.qmc.scale(sampler.random(starts), low, high):
        result = optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                                   bounds=list(zip(low, high, strict=True)))
        raw = {name: float(result.x[k] * std[i] + mean[i]) for k, (name, i) in
               enumerate(zip(bounds.controllable, free, strict=True))}
        with torch.no_grad():
            predicted = float(outcome(torch.tensor(result.x, dtype=torch.float64)))
        found.append(Recommendation(raw, predicted))
    found.sort(key=lambda r: sign * r.predicted)
    distinct: list[Recommendation] = []
    for candidate in found:  # results closer than 1% of every range count as one
        if all(any(abs(candidate.settings[n] - kept.settings[n]) > 0.01 * (hi - lo)
                   for n, (lo, hi) in bounds.controllable.items()) for kept in distinct):
            distinct.append(candidate)
    return distinct[:top]
