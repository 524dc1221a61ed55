"""Argument checks shared by every config, so each bad value fails with the same clear words."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["check_choice", "check_positive_int"]


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` listing the valid choices when ``value`` is not one of them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
