"""Child processes are stopped with every helper they started, even in other sessions."""

from __future__ import annotations

import time

import psutil

from fedmeta.common import ChildProcess, descendants


def test_child_process_stops_helpers_in_other_sessions():
    child = ChildProcess("shell", ["sh", "-c", "setsid sleep 60 & sleep 60"]).start()
    deadline = time.monotonic() + 10
    while len(descendants(child.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = descendants(child.pid)
    child.stop(timeout=5)
    assert not [pid for pid in helpers if _running(pid)]


def test_helpers_end_when_the_child_exits_by_itself():
    child = ChildProcess("shell", ["sh", "-c", "setsid sleep 60 & sleep 1"]).start()
    deadline = time.monotonic() + 10
    while not descendants(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = descendants(child.pid)
    assert child.wait(10) == 0
    deadline = time.monotonic() + 10
    running = helpers
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = {pid for pid in helpers if _running(pid)}
    assert not running
    child.stop(timeout=5)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie exited and only awaits reaping)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
