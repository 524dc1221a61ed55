"""Progress lines stamped with the seconds since a command started, shared by the CLI commands."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

__all__ = ["Report", "elapsed_log"]

# Where a long-running command reports what it does, one plain line at a time.
Report = Callable[[str], None]


def elapsed_log(console: Console) -> Report:
    """A ``log(message)`` that prints ``<seconds> s  message``; the message is never read as markup."""
    started = time.perf_counter()
    return lambda message: console.print(f"[dim]{time.perf_counter() - started:6.1f} s[/dim]  {escape(message)}")
