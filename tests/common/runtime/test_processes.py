"""Child processes are stopped with every helper they started, even in other sessions; a free port for a
process to listen on is one no outgoing connection can take meanwhile."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

from fedmeta.common import ChildProcess, descendants, free_port, still_running
from fedmeta.common.runtime import processes


def test_child_process_stops_helpers_in_other_sessions():
    child = ChildProcess("shell", ["sh", "-c", "setsid sleep 60 & sleep 60"]).start()
    deadline = time.monotonic() + 10
    while len(descendants(child.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = descendants(child.pid)
    child.stop(timeout=5)
    assert not [pid for pid in helpers if still_running([pid])]


def test_a_helper_in_another_session_is_told_to_stop_while_the_child_still_shuts_down(tmp_path):
    """The child takes 3 s over its shutdown (as the SuperLink's graceful one); its helper in a session of its
    own (as the ServerApp) records when SIGTERM reached it, which must be before the child has exited."""
    told, exited = tmp_path / "helper-told", tmp_path / "child-exited"
    helper = f"trap 'date +%s.%N > {told}; exit 0' TERM; while true; do sleep 0.05; done"
    script = f"setsid sh -c \"{helper}\" & trap 'sleep 3; date +%s.%N > {exited}; exit 0' TERM; " \
             "while true; do sleep 0.05; done"
    child = ChildProcess("shell", ["sh", "-c", script]).start()
    deadline = time.monotonic() + 10
    while len(descendants(child.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.stop(timeout=10)
    assert told.exists() and exited.exists()
    assert float(told.read_text()) < float(exited.read_text()) - 2  # told at once, not after the child's 3 s


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
        running = {pid for pid in helpers if still_running([pid])}
    assert not running
    child.stop(timeout=5)


def test_free_port_never_hands_this_process_the_same_port_twice(monkeypatch):
    """Ports are handed out before anything binds them: with the draw fixed, the second call must move on."""
    unbound = []
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            unbound.append(probe.getsockname()[1])
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    monkeypatch.setattr(random, "sample", lambda population, count: unbound[:count])
    assert [free_port(), free_port(), free_port()] == unbound
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    assert free_port(exclude=unbound[:2]) == unbound[2]


def test_a_free_port_is_bindable_and_below_the_range_outgoing_connections_take():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < low for port in ports) and len(ports) > 1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports.pop()))
