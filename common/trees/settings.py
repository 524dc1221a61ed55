"""How a federation boosts its trees and how a factory continues them: plain settings, kept apart from
XGBoost so that reading a round's settings never imports it (about a second of every process's start)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_RECIPE", "MAX_BINS", "ROWS_ALONE_TREES", "TreePlan", "TreeRecipe", "TreeSettings"]


MAX_BINS = 256  # the most bins a factory sums over: bounds what a server can ask it to compute and send


@dataclass(frozen=True)
class TreeSettings:
    """How the federation boosts: each factory's trees a round, their depth, rate and row sample."""

    depth: int = 6
    rate: float = 0.1
    subsample: float = 0.8
    local_trees: int = 1
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    bins: int = 64  # xgb-histogram: the bins a column's values fall in (XGBoost's hist: 256)

    def __post_init__(self) -> None:
        if self.depth < 1 or self.local_trees < 1:
            raise ValueError(f"tree depth and local trees must be >= 1, got {self.depth} and {self.local_trees}")
        if not (0 < self.rate <= 1 and 0 < self.subsample <= 1):
            raise ValueError(f"tree rate and subsample must be in (0, 1], got {self.rate} and {self.subsample}")
        if not 2 <= self.bins <= MAX_BINS:
            raise ValueError(f"tree bins must be in 2..{MAX_BINS}, got {self.bins}")
        if not (self.min_child_weight >= 0 and self.reg_lambda >= 0):
            raise ValueError(f"tree min child weight and lambda must be >= 0, got {self.min_child_weight} and "
                             f"{self.reg_lambda}")

    def round_rate(self, factories: int) -> float:
        """Each factory's rate in a bagging round of ``factories``: their average then steps at ``rate``."""
        return self.rate / max(1, factories)


@dataclass(frozen=True)
class TreeRecipe:
    """``trees`` more trees boosted at ``rate`` on the factory's K rows (0 trees: the ensemble as it is)."""

    trees: int
    rate: float

    @property
    def name(self) -> str:
        return "none" if self.trees == 0 else f"{self.trees}x{self.rate:g}"

    @classmethod
    def parse(cls, name: str) -> TreeRecipe:
        """The recipe `name` spells, e.g. ``20x0.1`` or ``none``."""
        if name == "none":
            return cls(0, 0.0)
        try:
            trees, rate = name.split("x")
            recipe = cls(int(trees), float(rate))
        except ValueError:
            raise ValueError(f"a tree recipe is 'none' or TREESxRATE (e.g. 20x0.1), got {name!r}") from None
        if recipe.trees < 1 or not 0 < recipe.rate <= 1:
            raise ValueError(f"a tree recipe boosts >= 1 trees at a rate in (0, 1], got {name!r}")
        return recipe


DEFAULT_RECIPE = TreeRecipe(20, 0.1)  # where the federation chose none: a common continuation of boosted trees


@dataclass(frozen=True)
class TreePlan:
    """How a factory adapts a federation's trees, as a model package carries it: how they were boosted
    (depth, row share and the rest of ``settings``; the recipe sets the count and the rate) and the recipe the
    federation chose for each K."""

    settings: TreeSettings = field(default_factory=TreeSettings)
    recipes: Mapping[int, TreeRecipe] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipes", {int(k): recipe for k, recipe in sorted(self.recipes.items())})

    def recipe_for(self, k: int) -> TreeRecipe:
        """The recipe for K labelled rows: the one chosen for the nearest K (ties: the smaller), else
        `DEFAULT_RECIPE`."""
        if not self.recipes:
            return DEFAULT_RECIPE
        return self.recipes[min(self.recipes, key=lambda chosen: (abs(chosen - k), chosen))]

    def to_json(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "recipes": {str(k): r.name for k, r in self.recipes.items()}}

    @classmethod
    def from_json(cls, data: object) -> TreePlan:
        """Parse a plan; a missing key or a bad value is a ``ValueError`` naming it."""
        if not isinstance(data, Mapping) or set(data) != {"settings", "recipes"}:
            raise ValueError(f"a tree plan holds 'settings' and 'recipes', got {data!r:.200}")
        settings, recipes = data["settings"], data["recipes"]
        if not isinstance(settings, Mapping) or not isinstance(recipes, Mapping):
            raise ValueError("a tree plan's settings and recipes are JSON objects")
        if not all(isinstance(k, str) and k.isdigit() and isinstance(r, str) for k, r in recipes.items()):
            raise ValueError(f"a tree plan's recipes map K to a recipe name, got {dict(recipes)!r:.200}")
        try:
            return cls(TreeSettings(**settings), {int(k): TreeRecipe.parse(r) for k, r in recipes.items()})
        except TypeError as error:  # unknown or missing settings
            raise ValueError(f"tree settings: {error}") from None


# Trees a factory boosts on its K rows alone, the other model it could build itself: shallow (a few rows), at a
# rate that fits them in 20 trees. `fedmeta adapt`, the federation's evaluation and the benchmark share it.
ROWS_ALONE_TREES = TreePlan(TreeSettings(depth=3, subsample=1.0), {1: TreeRecipe(20, 0.3)})
