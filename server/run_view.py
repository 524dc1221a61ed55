"""What the central team sees of a run, live and afterwards: each round's metrics as TensorBoard scalars
in the run folder beside ``metrics.jsonl``, and ``status.json``, which `fedmeta status` reads.

``status.json`` is rewritten (atomically) when the run starts, when its connected factories change,
after every round and when it ends: its state (``waiting`` for factories, ``running``, ``finished``,
``stopped`` or ``failed`` with the error), the last finished round, the connected factories and their roles, the last
round's metrics and the server's last warnings (a failed factory, a delta left out and why). The
process's id and host are in it too, so that `fedmeta status` can tell a run that is still going from
one whose process died without saying so.

A resumed run redoes the rounds after its last checkpoint: TensorBoard's ``purge_step`` hides what the
earlier process wrote for them, as `RunDirectory.truncate_metrics_after` drops their metrics lines.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from fedmeta.server.checkpoint import RunDirectory

__all__ = ["MAX_WARNING_CHARS", "RECENT_WARNINGS", "RunView"]

RECENT_WARNINGS = 10  # how many of the server's last warnings status.json keeps
MAX_WARNING_CHARS = 400
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours in Ray's messages


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _RecentWarnings(logging.Handler):
    """The last `RECENT_WARNINGS` warnings and errors the project's loggers emitted, with their times."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, str]] = deque(maxlen=RECENT_WARNINGS)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds"),
                             "message": _brief(record.getMessage())})


def _brief(message: str) -> str:
    """A warning in one line: a failed factory's message may carry a whole remote traceback, whose first
    line says who failed and whose last says why."""
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines() if line.strip()]
    text = lines[0] if len(lines) <= 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= MAX_WARNING_CHARS else text[:MAX_WARNING_CHARS - 3] + "..."


class RunView:
    """TensorBoard scalars and ``status.json`` of one run; a context manager that records how the run ended."""

    def __init__(self, run_dir: RunDirectory, algorithm: str, rounds: int, first_round: int) -> None:
        # TensorBoard loads in about a second: only the server's run process pays for it.
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.writer = SummaryWriter(log_dir=str(run_dir.path), purge_step=first_round if first_round > 1 else None)
        self.warnings = _RecentWarnings()
        self.printer: logging.Handler | None = None
        self.status: dict[str, Any] = {
            "algorithm": algorithm, "state": "waiting", "round": first_round - 1, "rounds": rounds,
            "started": _now(), "updated": _now(), "pid": os.getpid(), "host": socket.gethostname(),
            "factories": [], "last_round": {}, "warnings": [],
        }

    def __enter__(self) -> RunView:
        logger = logging.getLogger("fedmeta")
        # With no handler anywhere, Python prints warnings to stderr by its last-resort handler (what the
        # server's log shows); ours would silence that, so print them as it did.
        self.printer = None if logger.hasHandlers() else logging.StreamHandler()
        for handler in (self.printer, self.warnings):
            if handler is not None:
                handler.setLevel(logging.WARNING)
                logger.addHandler(handler)
        self._write()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
                 ) -> None:
        for handler in (self.printer, self.warnings):
            if handler is not None:
                logging.getLogger("fedmeta").removeHandler(handler)
        self.writer.close()
        if error is None:
            self._write(state="finished")
        elif isinstance(error, KeyboardInterrupt | SystemExit):  # stopped on purpose (SIGTERM, Ctrl-C)
            self._write(state="stopped")
        else:
            self._write(state="failed", error=f"{kind.__name__}: {error}")

    def factories(self, seats: Iterable[tuple[str, str]]) -> None:
        """The connected factories as (name, role) pairs, before a round (written only when they changed)."""
        connected = [{"name": name, "role": role} for name, role in seats]
        if (self.status["state"], self.status["factories"]) != ("running", connected):
            self._write(state="running", factories=connected)

    def round_finished(self, record: Mapping[str, object]) -> None:
        """One round's metrics record (as in ``metrics.jsonl``): scalars at step ``round``, and the status."""
        step = int(record["round"])
        for name, value in record.items():
            if name != "round" and isinstance(value, int | float):
                self.writer.add_scalar(name, value, step, walltime=time.time())
        self.writer.flush()  # a live view: do not wait for the writer's two-minute flush
        self._write(round=step, last_round=dict(record))

    def _write(self, **changes: object) -> None:
        self.status.update(changes, updated=_now(), warnings=list(self.warnings.records))
        self.run_dir.write_status(self.status)
