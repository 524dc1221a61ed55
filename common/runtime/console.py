"""What every ``fedmeta`` command prints the same way: progress lines and one-line errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["Report", "elapsed_log", "exit_on_errors"]

# Where a long-running command reports what it does, one plain line at a time.
Report = Callable[[str], None]


def elapsed_log(console: Console) -> Report:
    """A ``log(message)`` that prints ``<seconds> s  message``; the message is never read as markup."""
    started = time.perf_counter()
    return lambda message: console.print(f"[dim]{time.perf_counter() - started:6.1f} s[/dim]  {escape(message)}")


@contextmanager
def exit_on_errors(console: Console, *errors: type[Exception], stopped: str | None = None) -> Iterator[None]:
    """Turn the errors a user can fix into one red line and exit code 1, never a traceback.

    With ``stopped``, Ctrl-C (or SIGTERM through `sigterm_as_interrupt`) prints it and exits
    130, as shells report an interrupted command.
    """
    try:
        yield
    except errors as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        if stopped is None:
            raise
        console.print(stopped)
        raise typer.Exit(130) from None
