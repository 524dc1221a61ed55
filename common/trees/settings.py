"""How a federation boosts its trees and how a factory continues them: plain settings, kept apart from
XGBoost so that reading a round's settings never imports it (about a second of every process's start)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TreeRecipe", "TreeSettings"]


@dataclass(frozen=True)
class TreeSettings:
    """How the federation boosts: each factory's trees a round, their depth, rate and row sample."""

    depth: int = 6
    rate: float = 0.1
    subsample: float = 0.8
    local_trees: int = 1
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0

    def __post_init__(self) -> None:
        if self.depth < 1 or self.local_trees < 1:
            raise ValueError(f"tree depth and local trees must be >= 1, got {self.depth} and {self.local_trees}")
        if not (0 < self.rate <= 1 and 0 < self.subsample <= 1):
            raise ValueError(f"tree rate and subsample must be in (0, 1], got {self.rate} and {self.subsample}")

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
