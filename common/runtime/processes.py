"""Child processes that are always stopped, with everything they started.

Flower's SuperLink and SuperNode start helpers (a SuperExec, which starts one app process
per run or message), and the SuperLink detaches its SuperExec into a session of its own,
so a process group does not hold them all. A `ChildProcess` therefore leads its own group
*and* keeps track of every process descended from it (found with psutil, not only on Linux).
Stopping it sends SIGTERM to the group and waits, then ends every tracked descendant
(SIGTERM, then SIGKILL): no orphan survives a Ctrl-C. When the child exits by itself,
its helpers are ended too (they would only keep retrying to reach it).

Output goes to a log file, or to a pipe the caller reads line by line. Start children
from the thread that outlives them (the main thread): on Linux a child gets SIGTERM when
its starting thread ends, so a ``fedmeta`` command killed outright leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

import psutil

__all__ = [
    "ChildProcess",
    "ProcessError",
    "descendants",
    "flower_env",
    "free_port",
    "port_in_use",
    "sigterm_as_interrupt",
    "still_running",
    "stop_all",
    "wait_until_listening",
]

STOP_TIMEOUT_S = 15.0
WATCH_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _end_with_parent() -> None:
    """Linux: the child gets SIGTERM when the thread that started it dies, even by SIGKILL."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def descendants(pid: int) -> set[int]:
    """Every process descended from ``pid`` now (children, their children, ...); none once ``pid`` is gone."""
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _members(pids: Iterable[int], group: int) -> list[psutil.Process]:
    """``pids`` and the members of ``group`` that exist now (one scan of the process table, for the group)."""
    wanted, found = set(pids), []
    for process in psutil.process_iter():
        with suppress(psutil.Error, OSError):  # it ended while being read (or is not ours to read)
            if process.pid in wanted or os.getpgid(process.pid) == group:
                found.append(process)
    return found


def _signal(pids: Iterable[int], group: int, signum: int) -> None:
    for send, target in [(os.killpg, group), *((os.kill, pid) for pid in pids)]:
        # Already gone (and a reused pid that is not ours is not ours to signal).
        with suppress(ProcessLookupError, PermissionError):
            send(target, signum)


def _end(pids: set[int], group: int, timeout: float) -> None:
    """SIGTERM ``pids`` and ``group``; SIGKILL whatever still runs after ``timeout`` s (`psutil.wait_procs`)."""
    members = _members(pids, group)
    _signal(pids, group, signal.SIGTERM)
    _, left = psutil.wait_procs(members, timeout=timeout)
    if left:
        _signal({process.pid for process in left}, group, signal.SIGKILL)


class ProcessError(RuntimeError):
    """A child process could not start or stopped early; the message says which and why."""


class ChildProcess:
    """One command in its own process group; output to ``log`` (a file) or, without one, to a pipe."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log = log
        self._env = None if env is None else dict(env)
        self._cwd = cwd
        self._process: subprocess.Popen[str] | None = None
        self._tree: set[int] = set()  # every descendant seen so far

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> ChildProcess:
        """Start the command; a missing executable is a `ProcessError` naming it."""
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            output = self.log.open("a", encoding="utf-8")
        else:
            output = subprocess.PIPE
        try:
            self._process = subprocess.Popen(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                text=True,
                bufsize=1,
                start_new_session=True,
                preexec_fn=_end_with_parent,
            )
        except FileNotFoundError as error:
            raise ProcessError(f"cannot start the {self.name}: {self.command[0]} was not found ({error})") from error
        finally:
            if self.log is not None:
                output.close()
        threading.Thread(target=self._watch, name=f"{self.name} watcher", daemon=True).start()
        return self

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise ProcessError(f"the {self.name} was not started")
        return self._process

    def _watch(self) -> None:
        """Track descendants while the process runs; once it exits, end them (they outlive it otherwise)."""
        process = self._started()
        while process.poll() is None:
            self._tree |= descendants(process.pid)
            time.sleep(WATCH_INTERVAL_S)
        _end(self._tree, process.pid, STOP_TIMEOUT_S)

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self._started().poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; `subprocess.TimeoutExpired` after ``timeout`` seconds."""
        return self._started().wait(timeout)

    def lines(self) -> Iterator[str]:
        """Output lines as they come (pipe mode), until the process and its helpers are gone."""
        stream = self._started().stdout
        if stream is None:
            raise ProcessError(f"the {self.name} writes to {self.log}, not to a pipe")
        for line in stream:
            yield line.rstrip("\n")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log file (empty in pipe mode or before any output)."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the process group (nothing happens when none of it is left)."""
        _signal((), self.pid, signum)

    def signal_tree(self, signum: int) -> None:
        """Send ``signum`` to the group and every descendant at once: SIGKILL is a crash that says no goodbye,
        SIGSTOP freezes the whole tree (SIGCONT thaws it)."""
        self._tree |= descendants(self.pid)
        _signal(self._tree, self.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the group and every descendant at once, SIGKILL the group after ``timeout`` s, then end every
        descendant; the exit code. A descendant in a session of its own (the ServerApp Flower's SuperExec starts)
        is told at once too: told only after the group's graceful shutdown, it went on working meanwhile (a
        server stopped after round 2 finished and saved round 3 first)."""
        if self._process is None:
            return None
        self._tree |= descendants(self._process.pid)
        _signal(self._tree, self._process.pid, signal.SIGTERM)
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            code = self._process.wait()
        _end(self._tree, self._process.pid, timeout)
        if self._process.stdout is not None:
            self._process.stdout.close()
        return code

    def __enter__(self) -> ChildProcess:
        """Start (unless started already); leaving the block stops the process and its descendants."""
        return self if self._process is not None else self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def still_running(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that still run, sorted (a zombie, ended but not yet reaped, does not)."""
    running = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):  # it ended meanwhile
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
    return sorted(running)


def stop_all(started: Sequence[ChildProcess]) -> list[int]:
    """Stop the ``started`` processes, last first; the processes of their trees still running after."""
    tree = {pid for process in started for pid in (process.pid, *descendants(process.pid))}
    for process in reversed(started):
        process.stop()
    return still_running(tree)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower's command-line tools: a private ``FLWR_HOME``, no run-time
    dependency installs, and this installation's scripts first on ``PATH`` (Flower starts
    its helpers by name)."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, ``kill``) unwinds like Ctrl-C, so ``finally`` blocks stop the children."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_LOWEST_FREE_PORT = 10_000  # below: ports that well-known services listen on
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _first_ephemeral_port() -> int:
    """The lowest port the OS gives an outgoing connection (Linux's default range starts at 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()  # ports `free_port` gave this process: not yet bound, maybe, but taken


def free_port(host: str = "127.0.0.1", exclude: Collection[int] = ()) -> int:
    """A port on ``host`` that nothing listens on now, below the OS's range for outgoing connections: a port
    from that range (what binding port 0 gives) can be taken by any connection another process opens before
    the process it is meant for binds it, as a factory's local app API once was while four others connected.
    Never one it gave this process before: ports are handed out before anything binds them, and a factory
    given the server's port for its own local app API once dialled itself. Nor one of ``exclude`` (ports
    meant for something else, not bound yet)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        upper = _first_ephemeral_port()
        for port in random.sample(range(_LOWEST_FREE_PORT, upper), min(200, max(0, upper - _LOWEST_FREE_PORT))):
            if port in _HANDED_OUT or port in exclude:
                continue
            try:
                probe.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
        probe.bind((host, 0))  # no such port free: the OS's choice
        return int(probe.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something already listens there.

    ``SO_REUSEADDR``, as servers set it: connections of a stopped server that linger in
    TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def wait_until_listening(child: ChildProcess, host: str, port: int, timeout: float) -> None:
    """Block until ``host:port`` accepts connections; `ProcessError` if ``child`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            tail = child.log_tail()
            ending = f"; its log ends with:\n{tail}" if tail else ""
            raise ProcessError(f"the {child.name} exited with code {code} before listening on {host}:{port}{ending}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise ProcessError(f"the {child.name} did not listen on {host}:{port} within {timeout:.0f} s")
