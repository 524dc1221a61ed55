"""`fedmeta status`: a summary of the runs under a server's state folder or a simulation's run folder,
read from the ``status.json`` each run keeps up to date (`server.run_view`); works while a run goes and
after it ended."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

__all__ = ["describe_run", "find_runs", "read_status"]

STATUS_FILE = "status.json"
_LIVE = ("waiting", "running")
# The last round's metrics worth a line, in order, with their labels; every eval/ metric follows.
_ROUND_METRICS = (("train/replies", "replies"), ("train/rejected", "rejected"), ("train/left-out", "left out"),
                  ("train/query-loss", "query loss"), ("train/dp-epsilon", "epsilon"),
                  ("train/bytes-received", "bytes received"), ("seconds", "seconds"))


def find_runs(folder: Path) -> list[Path]:
    """Every run folder under ``folder`` (itself included) that holds a ``status.json``."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    runs = sorted(path.parent for path in folder.rglob(STATUS_FILE))
    if not runs:
        raise ValueError(f"no run under {folder}: no {STATUS_FILE} (a run writes it when it starts)")
    return runs


def read_status(run: Path) -> dict[str, Any]:
    """A run's ``status.json``; a file that is not a status is an error naming it."""
    path = run / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(status, dict) or not {"state", "round", "rounds"} <= status.keys():
        raise ValueError(f"{path} is not a run status (it needs state, round and rounds)")
    return status


def _state(status: Mapping[str, Any]) -> str:
    """The recorded state, unless the process that records it is gone without saying how it ended."""
    state = str(status["state"])
    if state in _LIVE and status.get("host") == socket.gethostname() and not psutil.pid_exists(int(status["pid"])):
        return f"ended without finishing (its process {status['pid']} is gone; last state {state})"
    if state in _LIVE and status.get("host") != socket.gethostname():
        return f"{state} on {status.get('host')}"
    return state + (f": {status['error']}" if status.get("error") else "")


def _age(stamp: str, now: datetime) -> str:
    seconds = max(0, round((now - datetime.fromisoformat(stamp)).total_seconds()))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


def _figure(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not float(value).is_integer() else f"{float(value):g}"


def describe_run(name: str, status: Mapping[str, Any], now: datetime | None = None) -> list[str]:
    """The lines `fedmeta status` prints for one run."""
    now = now or datetime.now(UTC)
    lines = [f"{name}: {_state(status)}, round {status['round']} of {status['rounds']}, "
             f"updated {_age(str(status['updated']), now)} ago"]
    factories = status.get("factories") or []
    training = [f["name"] for f in factories if f["role"] == "train"]
    evaluating = [f["name"] for f in factories if f["role"] != "train"]
    lines.append(f"  factories connected: {len(training)} training ({', '.join(training) or 'none'}), "
                 f"{len(evaluating)} evaluating ({', '.join(evaluating) or 'none'})")
    last = status.get("last_round") or {}
    if last:
        shown = [(label, last[key]) for key, label in _ROUND_METRICS if key in last]
        shown += [(key, value) for key, value in last.items()
                  if key.startswith("eval/") and key not in ("eval/num-examples", "eval/replies")]
        lines.append(f"  round {last['round']}: " + ", ".join(f"{label} {_figure(value)}" for label, value in shown
                                                             if isinstance(value, int | float)))
    warnings = status.get("warnings") or []
    if warnings:
        lines.append(f"  last {len(warnings)} warnings:")
        lines += [f"    {w['time']}  {w['message']}" for w in warnings]
    return lines
