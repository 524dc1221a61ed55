"""What the loopback deployment tests share: the example factory tables, waiting on processes with their
logs shown on failure, the run's metrics, and the SuperNode a `fedmeta client` started."""

from __future__ import annotations

import json
import os
import sysconfig
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import numpy as np
import psutil

FEATURES = ["temperature", "pressure", "speed"]
FEDMETA = str(Path(sysconfig.get_path("scripts")) / "fedmeta")
ENV = {**os.environ, "COLUMNS": "200"}  # one log line per message, unwrapped


def wait_for(condition: Callable[[], object], timeout: float, what: str, logs: list[Path]) -> object:
    """``condition()`` once truthy; after ``timeout`` s fail, showing the processes' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    shown = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{shown}")


def write_table(path: Path, gain: float, seed: int, label_scale: float = 1.0) -> None:
    """A factory's 40 rows, quality = gain * temperature - pressure + noise, times ``label_scale`` (a negative
    scale: a factory poisoning the federation with flipped labels)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 3))
    y = label_scale * (gain * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=40))
    rows = [",".join([*FEATURES, "quality"])]
    rows += [",".join(f"{v:.5f}" for v in (*r, t)) for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join(rows) + "\n")


def metrics(run: Path) -> list[dict]:
    path = run / "fomaml" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def supernode_group(client_pid: int) -> int | None:
    """The process group of the SuperNode a `fedmeta client` started (its child, leading its own group)."""
    with suppress(psutil.NoSuchProcess, ProcessLookupError):  # the client, or that child, ended meanwhile
        for child in psutil.Process(client_pid).children():
            if "fedmeta.client.node.supernode" in child.cmdline():
                return os.getpgid(child.pid)
    return None
