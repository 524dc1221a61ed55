"""Flower's SuperNode (and the warm worker beside it) with this project's timings in place of seven waits
flwr 1.42.0 fixes.

- Between pulls that found no message, the SuperNode sleeps 3 s (``time.sleep(3)`` in
  ``flwr/supernode/start_client_internal.py``): every message then waits 1.5 s on average before a
  factory even sees it. Here: `IDLE_PULL_S`.
- While a ClientApp works, it looks for the reply every 0.5 s (``time.sleep(0.5)``, same file), and a
  reply's upload pays it again. Here: `REPLY_LOOK_S`.
- A node heartbeats every 30 s (``HEARTBEAT_DEFAULT_INTERVAL`` in ``flwr/common/constant.py``, read by
  ``supernode/fleet_http_connection.py`` and ``supercore/heartbeat.py``), and the SuperLink calls a node
  gone after its patience of 2 intervals: a killed factory is noticed after 60 s. Here:
  `HEARTBEAT_INTERVAL_S`, Flower's smallest allowed, so within 20 s.
- The SuperExec, which starts an app process for each task, looks for tasks every second; Flower
  reads the interval from ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (``supercore/superexec/run_superexec.py``).
  Here: `TASK_POLL_S`, set in the environment of the SuperNode and SuperExec (`environment`).
- A heartbeat that fails is retried with a delay doubling up to 20 s (``exponential(max_delay=20)`` in
  ``supercore/heartbeat.py``). After a server restart the node then stays "unavailable" to the new
  SuperLink for up to 20 s although it already pulls work, and the first round's messages to it fail.
  Here: at most `HEARTBEAT_RETRY_S`.
- A request to the SuperLink that fails (the server is down or restarting) is retried with a delay doubling
  up to 20 s, jittered (``exponential(max_delay=MAX_RETRY_DELAY)`` in ``supercore/retry/http_retry.py``): a
  factory found a restarted server (`fedmeta server --resume`) 10 s late on average, 20 s at worst, and a
  resumed run's first round waited for it. Here: at most `CONNECT_RETRY_S`, a refused connection attempt
  (cheap) a second on average while the server is away.
- An app process pulls its message's objects (arrays, records) from the SuperNode one by one, and one
  not there yet is tried again after 1 s, then 2, 4, up to 10 s (``pull_objects`` in
  ``supercore/inflatable/inflatable_utils.py``). The SuperNode hands a message over while it is still
  downloading it (0.1-0.2 s), so every message waited a second. Here: `OBJECT_RETRY_S` at first, at most
  `OBJECT_RETRY_CAP_S`, in the warm worker (`shorten_object_pulls`).

`apply` swaps them in and refuses to, naming what changed, under any other Flower version or when a
wait is no longer where it was. `fedmeta.client.node.supernode`, the factory's SuperNode process, applies
them unless told to keep Flower's.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import time
from collections.abc import Iterator
from types import ModuleType

from fedmeta.common.runtime.flower_pin import FLOWER_VERSION, FlowerInternalsChanged, require_flower

__all__ = ["CONNECT_RETRY_S", "FLOWER_HEARTBEAT_INTERVAL_S", "HEARTBEAT_INTERVAL_S", "HEARTBEAT_PATIENCE",
           "HEARTBEAT_RETRY_S", "IDLE_PULL_S", "OBJECT_RETRY_CAP_S",
           "OBJECT_RETRY_S", "REPLY_LOOK_S", "TASK_POLL_ENV", "TASK_POLL_S", "apply", "environment",
           "shorten_object_pulls"]

# Shorter, not minimal: on a busy 2-core machine, polls a few times faster than these slowed the rounds'
# own work as much as they saved (`fedmeta bench deployment`).
IDLE_PULL_S = 0.5  # an idle factory asks its SuperLink for work twice a second (a small HTTP request)
REPLY_LOOK_S = 0.1  # a local look into the node's own state
HEARTBEAT_INTERVAL_S = 10  # Flower's HEARTBEAT_MIN_INTERVAL; times its patience of 2: gone after 20 s
FLOWER_HEARTBEAT_INTERVAL_S = 30  # flwr 1.42.0's HEARTBEAT_DEFAULT_INTERVAL, which a stock SuperNode keeps
HEARTBEAT_PATIENCE = 2  # flwr 1.42.0's: the SuperLink calls a node gone after this many missed heartbeats
TASK_POLL_ENV, TASK_POLL_S = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", 0.25  # a local look
HEARTBEAT_RETRY_S = 2  # the longest wait before a failed heartbeat is tried again
CONNECT_RETRY_S = 2  # the longest wait before a failed request to the SuperLink is tried again
OBJECT_RETRY_S, OBJECT_RETRY_CAP_S = 0.02, 0.5  # an app's waits for an object its SuperNode is still downloading
_OBJECT_RETRY_DEFAULTS = {"initial_backoff": 1, "backoff_cap": 10}  # flwr 1.42.0's
_RETRY_SOURCE = "exponential(max_delay=20)"
_CONNECT_RETRY_SOURCE = "exponential(max_delay=MAX_RETRY_DELAY)"
_WAITS = {3: IDLE_PULL_S, 0.5: REPLY_LOOK_S}  # Flower's sleep -> ours
_SLEEPS = ("time.sleep(3)", "time.sleep(0.5)")


class _ShorterWaits:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: its fixed sleeps become ours."""

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(_WAITS.get(seconds, seconds))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def _retry_delays(max_delay: int | None = None, **options: float) -> Iterator[float]:
    """Flower's exponential back-off for heartbeats, capped at `HEARTBEAT_RETRY_S`."""
    from flwr.supercore.retry import exponential

    return exponential(max_delay=min(max_delay or HEARTBEAT_RETRY_S, HEARTBEAT_RETRY_S), **options)


def _check(module: ModuleType, problem: str, holds: bool) -> None:
    if not holds:
        raise FlowerInternalsChanged(f"flwr {FLOWER_VERSION}'s {module.__name__} {problem}; the installed flwr "
                                     f"{importlib.metadata.version('flwr')} changed it: update fedmeta/client/"
                                     f"supernode_timings.py or run with Flower's timings (--stock-supernode)")


def apply() -> None:
    """Replace the SuperNode's waits in this process (see the module docstring)."""
    require_flower("the SuperNode's timings")
    from flwr.common import constant
    from flwr.supercore import heartbeat
    from flwr.supercore.retry import http_retry
    from flwr.supercore.superexec import run_superexec
    from flwr.supernode import fleet_http_connection, start_client_internal

    source = inspect.getsource(start_client_internal)
    for sleep in _SLEEPS:
        _check(start_client_internal, f"no longer calls {sleep}", sleep in source)
    _check(start_client_internal, "no longer imports the time module", start_client_internal.time is time)
    for module in (fleet_http_connection, heartbeat):
        _check(module, "no longer reads HEARTBEAT_DEFAULT_INTERVAL", hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"))
    _check(run_superexec, f"no longer reads its task poll interval from {TASK_POLL_ENV}",
           getattr(run_superexec, "_TASK_POLL_INTERVAL_ENV", None) == TASK_POLL_ENV)
    _check(heartbeat, f"no longer retries with {_RETRY_SOURCE}", _RETRY_SOURCE in inspect.getsource(heartbeat))
    _check(constant, f"allows no heartbeat of {HEARTBEAT_INTERVAL_S} s",
           constant.HEARTBEAT_MIN_INTERVAL <= HEARTBEAT_INTERVAL_S <= constant.HEARTBEAT_MAX_INTERVAL)
    _check(constant, f"no longer heartbeats every {FLOWER_HEARTBEAT_INTERVAL_S} s with a patience of "
           f"{HEARTBEAT_PATIENCE}", (constant.HEARTBEAT_DEFAULT_INTERVAL, constant.HEARTBEAT_PATIENCE)
           == (FLOWER_HEARTBEAT_INTERVAL_S, HEARTBEAT_PATIENCE))
    _check(http_retry, f"no longer retries requests with {_CONNECT_RETRY_SOURCE}",
           hasattr(http_retry, "MAX_RETRY_DELAY") and _CONNECT_RETRY_SOURCE in inspect.getsource(http_retry))
    start_client_internal.time = _ShorterWaits()
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_INTERVAL_S
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_INTERVAL_S
    heartbeat.exponential = _retry_delays
    http_retry.MAX_RETRY_DELAY = CONNECT_RETRY_S  # read when the SuperNode makes its connection's retry invoker


def shorten_object_pulls() -> None:
    """An app process's retries of an object not there yet, shortened in this process (the module docstring)."""
    require_flower("the object pulls' timings")
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__ or {}
        _check(inflatable_utils, f"{function.__name__} no longer retries with {_OBJECT_RETRY_DEFAULTS}",
               {key: defaults.get(key) for key in _OBJECT_RETRY_DEFAULTS} == _OBJECT_RETRY_DEFAULTS
               and isinstance(defaults.get("max_tries_per_object"), int))
        # As many more tries as the waits are shorter: an object may still take as long to arrive as in Flower.
        tries = defaults["max_tries_per_object"] * _OBJECT_RETRY_DEFAULTS["backoff_cap"] // OBJECT_RETRY_CAP_S
        defaults.update(initial_backoff=OBJECT_RETRY_S, backoff_cap=OBJECT_RETRY_CAP_S, max_tries_per_object=int(tries))


def environment() -> dict[str, str]:
    """What the SuperNode's and SuperExec's environment needs for this module's timings."""
    return {TASK_POLL_ENV: str(TASK_POLL_S)}
