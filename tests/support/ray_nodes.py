"""Ray nodes started by tests with `ray start --block` (each in a session of its own, so that stopping one
stops exactly its processes), as docs/researcher.md starts them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sysconfig.get_path("scripts")) / "ray")


def ray_port() -> int:
    """A free port from the OS's range for outgoing connections: outside Ray's own worker ports (10002-19999),
    which Ray refuses to share with the head's ports."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    """Whether something accepts connections on loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Until ``condition()`` holds; a `TimeoutError` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.5)


@dataclass
class RayNode:
    """A node started by `start_node`: its ``ray start --block`` process and its temporary folder."""

    process: subprocess.Popen
    temp_dir: Path


def start_node(arguments: Sequence[str], log_folder: Path) -> RayNode:
    """``ray start ARGUMENTS --block``, its output in ``log_folder``, RAY_ADDRESS unset. Its temporary folder is
    a short one of its own: Ray's socket paths inside it must fit AF_UNIX's 107 bytes, which a pytest folder
    (``/tmp/pytest-of-USER/pytest-N/popen-gwN/...``) does not leave room for."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    with (log_folder / "ray-start.log").open("w") as log:
        process = subprocess.Popen([RAY, "start", *arguments, "--block", "--temp-dir", str(temp_dir)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return RayNode(process, temp_dir)


def stop_node(node: RayNode) -> None:
    """SIGTERM to `ray start --block` stops its node's processes; their session's group is killed if not. Its
    temporary folder goes with it."""
    node.process.terminate()
    try:
        node.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait()
    shutil.rmtree(node.temp_dir)


def alive_nodes(address: str) -> list[str]:
    """The ids of the live nodes of the Ray cluster at ``address`` (joined and left by this process)."""
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        return [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()
