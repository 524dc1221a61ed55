"""Argument checks shared by every config, so each bad value fails with the same clear words."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = ["check_choice", "check_positive_int", "suggest"]


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` listing the valid choices when ``value`` is not one of them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def suggest(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The candidate ``name`` was most likely meant as: same name in another case, else the closest."""
    for candidate in candidates:
        if candidate.lower() == name.lower():
            return candidate
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[close[0]] if close else None
