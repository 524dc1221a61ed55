"""How every bench states an aim's outcome, so a reader scans one word across commands."""

from __future__ import annotations

__all__ = ["verdict"]


def verdict(met: bool) -> str:
    """PASS or FAIL, in rich markup (plain text where the console has no colours)."""
    return "[green]PASS[/green]" if met else "[red]FAIL[/red]"
