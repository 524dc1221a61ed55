"""`fedmeta simulate --ray-address` on a running Ray cluster: two nodes (two raylets) on this machine, started
with the commands docs/researcher.md gives. The factories run on both nodes, and the run's records equal those
of the same command on a Ray of its own."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from fedmeta.server import RunDirectory
from fedmeta.simulations import harness
from tests.support.cli import run_fedmeta
from tests.support.docs import example

RAY = str(Path(sysconfig.get_path("scripts")) / "ray")
# Only for two nodes on one machine: one CPU each (one actor each, so both nodes run factories), each node's own
# temporary folder (added below), and --block so that stopping the command stops exactly that node's processes.
ONE_MACHINE = ["--num-cpus", "1", "--block"]
# The smallest run the records can be compared on: a round of 4 factories, one held-out factory's 5-shot figures.
SHORT_RUN = ["--factories", "4", "--held-out", "1", "--rounds", "1", "--no-baseline", "--eval-shots", "5",
             "--eval-tasks", "4"]
TIMINGS = {"seconds", "train/seconds"}  # wall times differ between any two runs


@dataclass(frozen=True)
class Cluster:
    address: str
    node_ids: frozenset[str]
    simulate: list[str]  # the documented `fedmeta simulate` command, its address this cluster's


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.5)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive_nodes(address: str) -> list[str]:
    ray.init(address=address, log_to_driver=False)
    try:
        return [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()


def _stop(node: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` stops its node's processes; their group (this test's own) is killed if not."""
    node.terminate()
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The documented head and worker commands, on free ports of this machine."""
    (block,) = example("docs/researcher.md", "bash", marker="run by tests/simulations/test_ray_cluster.py")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head, worker, simulate = (shlex.split(line.split("#")[0].replace("6379", str(port)).replace("HEAD_IP", "127.0.0.1"))
                              for line in block.strip().splitlines())
    assert head[:3] == ["ray", "start", "--head"] and worker[:3] == ["ray", "start", "--address"], block
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    nodes: list[subprocess.Popen] = []
    try:
        # The head's dashboard and Ray Client ports, fixed by default, could collide with another Ray here.
        head += ["--include-dashboard=false", "--ray-client-server-port", str(_free_port())]
        for command, ready in ((head, lambda: _answers(port)),
                               (worker, lambda: len(_alive_nodes(address)) == 2)):
            folder = tmp_path_factory.mktemp("ray")
            with (folder / "ray-start.log").open("w") as log:
                nodes.append(subprocess.Popen([RAY, *command[1:], *ONE_MACHINE, "--temp-dir", str(folder)], env=env,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            _wait(ready, f"{shlex.join(command)}: its node")
        yield Cluster(address, frozenset(_alive_nodes(address)), simulate)
    finally:
        for node in reversed(nodes):
            _stop(node)


def _node_recorder(path: Path):
    """A client mod that writes down which Ray node served each factory's message (test-side, never sent)."""

    def record(msg, context, call_next):
        reply = call_next(msg, context)
        with path.open("a") as lines:
            lines.write(f"{context.node_config['partition-id']} {msg.metadata.message_type} "
                        f"{ray.get_runtime_context().get_node_id()}\n")
        return reply

    return record


def _records(run: Path) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMINGS}
            for record in RunDirectory(run / "maml").read_metrics()]


def test_a_two_node_cluster_runs_factories_on_both_and_matches_a_one_node_run(cluster, tmp_path, monkeypatch):
    assert cluster.simulate[:3] == ["fedmeta", "simulate", "--ray-address"], cluster.simulate
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the one-node run starts a Ray of its own
    served = tmp_path / "served.txt"
    monkeypatch.setattr(harness, "run_federated_simulation",
                        functools.partial(harness.run_federated_simulation, mods=[_node_recorder(served)]))
    code, output = run_fedmeta(*cluster.simulate[1:], *SHORT_RUN, "--out", str(tmp_path / "cluster"))
    assert code == 0, output[-3000:]
    lines = [line.split() for line in served.read_text().splitlines()]
    assert {node for _, _, node in lines} == cluster.node_ids, lines  # both nodes ran factories
    assert {int(factory) for factory, kind, _ in lines if kind == "train"} == {0, 1, 2, 3}

    code, output = run_fedmeta("simulate", *SHORT_RUN, "--out", str(tmp_path / "one"))
    assert code == 0, output[-3000:]
    cluster_records, one_node_records = _records(tmp_path / "cluster"), _records(tmp_path / "one")
    assert "eval/loss-k5" in cluster_records[-1]
    assert cluster_records == one_node_records  # exactly: the same seed, whichever node ran each factory
    cluster_model, one_node_model = (RunDirectory(tmp_path / run / "maml").load_checkpoint(1).params
                                     for run in ("cluster", "one"))
    assert all(torch.equal(cluster_model[name], one_node_model[name]) for name in one_node_model)


@pytest.mark.parametrize(("address", "says"), [("127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:"),
                                               ("head-node", "HOST:PORT")])
def test_an_address_without_a_ray_cluster_is_an_error_by_name(address, says, tmp_path):
    code, output = run_fedmeta("simulate", "--ray-address", address.format(port=_free_port()), *SHORT_RUN,
                               "--out", str(tmp_path))
    assert code == 1 and "error:" in output and says in output, output
    assert "Traceback" not in output


def test_ray_address_in_the_environment_is_the_cluster_to_run_on(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", address := f"127.0.0.1:{_free_port()}")
    code, output = run_fedmeta("simulate", *SHORT_RUN, "--out", str(tmp_path))
    assert code == 1 and f"no Ray cluster answers at {address}" in output, output
