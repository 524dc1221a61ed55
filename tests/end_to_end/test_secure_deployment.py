"""Secure aggregation over real processes on loopback (TLS, node authentication): three factories, and one
of them killed in round 2 once it has sent its sealed shares, so in the middle of the secure round. The
round still completes from the shares the other two reveal, the next one runs with the two, and what
reached the server's side of the wire in each round was masked inputs, never a delta. The rounds are
differentially private with the noise added by the factories themselves, and plant-a's policy requires both.
plant-a and plant-c run Flower's default isolation (a `flwr-clientapp` process per message, so a factory's secrets
cross every stage of a secure round in its node's state), plant-b the warm worker (``--isolation process``): each
of a secure round's four messages costs a process that imports torch, which on 2 cores made the rounds' time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmeta.common import ChildProcess, free_port
from tests.support.deployment import ENV, FEATURES, FEDMETA, metrics, supernode_group, wait_for, write_table

FACTORIES = ("plant-a", "plant-b", "plant-c")
# plant-c stays on the default isolation: its SuperNode is killed while the message's process starts, long
# before its masked input is uploaded (a warm worker could be mid-upload then; see the fixture).
ISOLATION = {"plant-a": "subprocess", "plant-b": "process", "plant-c": "subprocess"}
ROUND_TIMEOUT_S = 30  # a round waits this long for the killed factory's answers, then goes on
WORK = ("algorithm='fomaml' local-steps=1 inner-steps=1 meta-batch-size=2 shots=5 query-size=10 min-train-nodes=2 "
        f"timeout={ROUND_TIMEOUT_S} device='cpu' num-server-rounds=3 wait-for-factories=3 secure-aggregation=true "
        "dp-noise-multiplier=0.3 dp-clip-norm=5.0")
POLICY = {"require_secure_aggregation": True, "require_dp": True, "max_epsilon": 1000.0}


@dataclass
class SecureRun:
    run: Path
    server_code: int | None
    server_output: str
    plant_c_log: str


def _count(log: Path, text: str) -> int:
    return log.read_text().count(text) if log.exists() else 0


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory) -> Iterator[SecureRun]:
    root = tmp_path_factory.mktemp("secure-deployment")
    certs = root / "certs"
    subprocess.run([FEDMETA, "certs", "--out", str(certs), "--host", "127.0.0.1",
                    *(f"--factory={name}" for name in FACTORIES)], check=True, timeout=60)
    schema = root / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    port, state = free_port(), root / "server"
    server = ChildProcess("server", [FEDMETA, "server", "--certs", str(certs), "--state", str(state), "--port",
                                     str(port), "--control-port", str(free_port()), "--schema", str(schema),
                                     "--run-config", WORK],
                          log=root / "server.log", env=ENV)
    clients = {}
    for seed, name in enumerate(FACTORIES):
        write_table(root / f"{name}.csv", gain=1.0 + 0.2 * seed, seed=seed)
        command = [FEDMETA, "client", "--server", f"127.0.0.1:{port}", "--data", str(root / f"{name}.csv"),
                   "--schema", str(schema), "--key", str(certs / name), "--ca", str(certs / "ca.crt"), "--device",
                   "cpu", "--runtime-port", str(free_port()), "--state", str(root / f"state-{name}"),
                   "--isolation", ISOLATION[name]]
        if name == "plant-a":
            (root / "policy.json").write_text(json.dumps(POLICY))
            command += ["--policy", str(root / "policy.json")]
        clients[name] = ChildProcess(f"factory {name}", command, log=root / f"{name}.log", env=ENV)
    logs = [server.log, *(client.log for client in clients.values())]
    started: list[ChildProcess] = []
    try:
        for process in (server, *clients.values()):
            started.append(process.start())
        run = state / "run"
        wait_for(lambda: len(metrics(run)) >= 1, 180, "round 1", logs)
        plant_c = clients["plant-c"]
        # Round 2's shares are in and the factories start training: plant-c is in the middle of the secure
        # round, its masked input not yet sent. Kill its SuperNode there. (A factory killed while a reply is
        # being uploaded: tests/simulations/benchmarks/test_soak.py.)
        wait_for(lambda: _count(clients["plant-a"].log, "working on a train message") >= 2, 120,
                 "round 2's training", logs)
        node = wait_for(lambda: supernode_group(plant_c.pid), 10, "plant-c's SuperNode", logs)
        os.killpg(node, signal.SIGKILL)
        wait_for(lambda: server.poll() is not None, 300, "the run to finish", logs)
        yield SecureRun(run, server.poll(), server.log.read_text(), plant_c.log.read_text())
    finally:
        for process in reversed(started):
            process.stop()


def test_three_factories_aggregate_securely_over_tls(secure_run):
    assert secure_run.server_code == 0, secure_run.server_output[-3000:]
    first = metrics(secure_run.run)[0]
    assert (first["train/secagg-participants"], first["train/replies"]) == (3.0, 3.0), first
    assert "train/model-unchanged" not in first


def test_a_factory_killed_mid_round_leaves_the_round_to_the_other_two(secure_run):
    second, third = metrics(secure_run.run)[1:3]
    # plant-c was killed after its shares: its input never came (or came just before), and either way
    # the round was unmasked from the shares the others revealed
    assert second["train/secagg-participants"] == 3.0 and second["train/replies"] in (2.0, 3.0), second
    assert "train/model-unchanged" not in second and "train/model-unchanged" not in third, (second, third)
    assert third["train/replies"] == 2.0


def test_the_factories_noise_makes_each_round_private_within_plant_as_policy(secure_run):
    """plant-a, whose policy requires secure aggregation and DP, joined every round (3 replies in round 1,
    and the killed plant-c's absence left 2 in round 3); each round spent privacy."""
    records = metrics(secure_run.run)
    epsilons = [record["train/dp-epsilon"] for record in records]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2], epsilons
    assert [record["train/replies"] for record in records][::2] == [3.0, 2.0]
