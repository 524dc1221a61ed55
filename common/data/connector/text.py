"""Wording shared by the connector's messages: counts and short listings ("did you mean" hints:
`common.validation.suggest`)."""

from __future__ import annotations

from collections.abc import Sequence

# Offending rows (or lines, labels) listed per problem; the rest are counted.
MAX_LISTED = 5
_MAX_LISTED_COLUMNS = 20


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 row"``, ``"3 rows"``; ``many`` for nouns whose plural is not ``noun + "s"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {many or noun + 's'}"


def listing(items: Sequence[str], limit: int = _MAX_LISTED_COLUMNS) -> str:
    """The first ``limit`` items joined by commas, with the total when some are left out."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
