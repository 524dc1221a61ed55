"""`fedmeta simulate --ray-address` on a running Ray cluster: two nodes (two raylets) on this machine, started
with the commands docs/researcher.md gives. The factories run on both nodes, and the run's records equal those
of the same command on a Ray of its own."""

from __future__ import annotations

import functools
import os
import shlex
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
from tests.support.ray_nodes import RayNode, alive_nodes, answers, ray_port, start_node, stop_node, wait

# Only for two nodes on one machine: one CPU each (one actor each, so both nodes run factories); `start_node` gives
# each node its own temporary folder.
ONE_MACHINE = ["--num-cpus", "1"]
# The smallest run the records can be compared on: a round of 4 factories, one held-out factory's 5-shot figures.
SHORT_RUN = ["--factories", "4", "--held-out", "1", "--rounds", "1", "--no-baseline", "--eval-shots", "5",
             "--eval-tasks", "4"]
TIMINGS = {"seconds", "train/seconds"}  # wall times differ between any two runs


@dataclass(frozen=True)
class Cluster:
    address: str
    node_ids: frozenset[str]
    simulate: list[str]  # the documented `fedmeta simulate` command, its address this cluster's


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The documented head and worker commands, on free ports of this machine."""
    (block,) = example("docs/researcher.md", "bash", marker="run by tests/simulations/test_ray_cluster.py")
    port = ray_port()
    address = f"127.0.0.1:{port}"
    head, worker, simulate = (shlex.split(line.split("#")[0].replace("6379", str(port)).replace("HEAD_IP", "127.0.0.1"))
                              for line in block.strip().splitlines())
    assert head[:3] == ["ray", "start", "--head"] and worker[:3] == ["ray", "start", "--address"], block
    nodes: list[RayNode] = []
    try:
        # The head's dashboard and Ray Client ports, fixed by default, could collide with another Ray here.
        head += ["--include-dashboard=false", "--ray-client-server-port", str(ray_port())]
        for command, ready in ((head, lambda: answers(port)),
                               (worker, lambda: len(alive_nodes(address)) == 2)):
            nodes.append(start_node([*command[2:], *ONE_MACHINE], tmp_path_factory.mktemp("ray")))
            wait(ready, f"{shlex.join(command)}: its node")
        yield Cluster(address, frozenset(alive_nodes(address)), simulate)
    finally:
        for node in reversed(nodes):
            stop_node(node)


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
    code, output = run_fedmeta("simulate", "--ray-address", address.format(port=ray_port()), *SHORT_RUN,
                               "--out", str(tmp_path))
    assert code == 1 and "error:" in output and says in output, output
    assert "Traceback" not in output


def test_ray_address_in_the_environment_is_the_cluster_to_run_on(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", address := f"127.0.0.1:{ray_port()}")
    code, output = run_fedmeta("simulate", *SHORT_RUN, "--out", str(tmp_path))
    assert code == 1 and f"no Ray cluster answers at {address}" in output, output


def test_own_ray_starts_a_ray_of_its_own_whatever_ray_address_says(monkeypatch):
    """What the benches that measure this machine's processes ask for; without it, or an address, ray.init would
    join RAY_ADDRESS's cluster, or the latest one started on this machine."""
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{ray_port()}")  # nothing answers there: never dialled
    init_args = harness._ray_init_args(harness.OWN_RAY)
    assert init_args["address"] == "local" and init_args["num_cpus"] == (os.cpu_count() or 1)
    monkeypatch.delenv("RAY_ADDRESS")
    assert harness._ray_init_args()["address"] == "local"
