"""The SuperNode's timings: Flower's fixed 3 s idle poll, 0.5 s reply look, 30 s heartbeat, 20 s heartbeat
retry and 20 s request retry are replaced in the SuperNode's process, and a Flower whose internals moved is
refused with a message saying what changed (`client.node.supernode_timings`, pinned to flwr 1.42.0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedmeta.client.node import supernode_timings
from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged


def test_the_supernode_polls_and_heartbeats_at_our_intervals():
    # In a fresh process, as `fedmeta client` starts it: apply() changes Flower's modules for good.
    code = """
import time
from fedmeta.client.node import supernode_timings
supernode_timings.apply()
from flwr.supercore import heartbeat
from flwr.supernode import fleet_http_connection, start_client_internal
started = time.perf_counter()
start_client_internal.time.sleep(3)
idle = time.perf_counter() - started
started = time.perf_counter()
start_client_internal.time.sleep(0.5)
reply = time.perf_counter() - started
delays = heartbeat.HeartbeatSender(lambda: True)._retry_invoker.wait_gen_factory()
retry = max(next(delays) for _ in range(10))
from flwr.supercore.retry import http_retry
requests = http_retry.make_simple_http_retry_invoker().wait_gen_factory()
request_retry = max(next(requests) for _ in range(10))
supernode_timings.shorten_object_pulls()  # what the warm worker does
from flwr.supercore.inflatable import inflatable_utils
pulls = inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__
print(idle, reply, fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL, heartbeat.HEARTBEAT_DEFAULT_INTERVAL,
      start_client_internal.time.monotonic() > 0, retry, pulls["initial_backoff"], pulls["backoff_cap"],
      pulls["max_tries_per_object"], request_retry)
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    idle, reply, connection, sender, clock, retry, first_pull, pull_cap, pull_tries, request_retry = \
        output.stdout.split()
    assert supernode_timings.IDLE_PULL_S <= float(idle) < 1.5  # not Flower's 3 s
    assert supernode_timings.REPLY_LOOK_S <= float(reply) < 0.4  # not Flower's 0.5 s
    assert int(connection) == int(sender) == supernode_timings.HEARTBEAT_INTERVAL_S == 10
    assert clock == "True"  # the rest of the time module is the real one
    assert float(retry) == supernode_timings.HEARTBEAT_RETRY_S  # a failed heartbeat is retried soon: not 20 s
    # a request to a restarted server too: a resumed run's first round does not wait 10-20 s for its factories
    assert float(request_retry) <= supernode_timings.CONNECT_RETRY_S
    # An object the SuperNode is still downloading is looked for again at once (Flower: after 1 s, up to 10 s),
    # and as patiently as Flower in all: 20 times the tries at a twentieth of the longest wait.
    assert float(first_pull) == supernode_timings.OBJECT_RETRY_S
    assert float(pull_cap) == supernode_timings.OBJECT_RETRY_CAP_S
    assert int(pull_tries) == 500 * 20


def test_the_superexec_looks_for_tasks_at_our_interval(monkeypatch):
    from flwr.supercore.superexec import run_superexec

    for name, value in supernode_timings.environment().items():
        monkeypatch.setenv(name, value)
    assert run_superexec._get_task_poll_interval() == supernode_timings.TASK_POLL_S < 1  # Flower's: 1 s


def test_another_flower_version_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(supernode_timings.importlib.metadata, "version", lambda name: "1.43.0")
    wanted = r"timings: written for flwr 1\.42\.0's internals, but flwr 1\.43\.0 is installed"
    with pytest.raises(FlowerInternalsChanged, match=wanted):
        supernode_timings.apply()


def test_a_moved_wait_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(supernode_timings.inspect, "getsource", lambda module: "while True:\n    time.sleep(0.5)\n")
    with pytest.raises(FlowerInternalsChanged, match=r"start_client_internal no longer calls time\.sleep\(3\)"):
        supernode_timings.apply()


def test_moved_object_pull_retries_are_refused_by_name(monkeypatch):
    from flwr.supercore.inflatable import inflatable_utils

    moved = {**inflatable_utils.pull_objects.__kwdefaults__, "initial_backoff": 2}
    monkeypatch.setattr(inflatable_utils.pull_objects, "__kwdefaults__", moved)
    with pytest.raises(FlowerInternalsChanged, match=r"inflatable_utils pull_objects no longer retries with"):
        supernode_timings.shorten_object_pulls()
