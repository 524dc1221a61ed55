"""The warm ClientApp worker over real processes (`fedmeta client --isolation process`, on loopback).

Two factories serve three federations, one after the other, each from a `fedmeta server` of its own on
the same address: A (first-order MAML), B (federated XGBoost trees grown on the factories' summed gradient
histograms) and A again. A and B run through the same worker process in each factory, and A's repeat
computes exactly what A computed in its first round: B left nothing behind that changes a later run. B
exchanges bin sketches, then each level's histograms with both factories, chooses its adaptation recipes
in the last round and delivers its tree package, which each factory stores. In
the repeat's second round one factory's worker is killed while it holds a task: the server gets that
factory's failure at once, not after a timeout, the factory starts a new worker, and the third round has
both factories again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from fedmeta.common import ChildProcess, free_port, stop_all
from fedmeta.common.package.model_package import load_package
from fedmeta.common.trees.ensemble import load_ensemble
from tests.support.deployment import ENV, FEATURES, FEDMETA, wait_for, write_table

FACTORIES = ("plant-a", "plant-b")
ROUND_TIMEOUT_S = 60  # far above the time a factory's failure takes to reach the server
# Enough local steps that a round's training lasts a while (the worker is killed in it: `_kill_worker_training`
# looks every 10 ms, and a train message of 40 steps took 0.9-3.6 s on 2 cores), few enough for a short run
# (300 steps made each first-order MAML round last 24 s there, most of the module's time).
COMMON = (f"local-steps=40 meta-batch-size=2 shots=5 query-size=10 min-train-nodes=1 timeout={ROUND_TIMEOUT_S} "
          f"device='cpu' wait-for-factories={len(FACTORIES)}")
RUN_A = f"{COMMON} algorithm='fomaml' inner-steps=1 num-server-rounds=2"
TREES_A_ROUND = 2
# Shallow trees: each level of each tree is an exchange with both factories (six exchanges a round here).
RUN_B = (f"{COMMON} algorithm='xgb-histogram' num-server-rounds=2 eval-shots='5,10' local-trees={TREES_A_ROUND} "
         "tree-depth=3")
RUN_A_AGAIN = f"{COMMON} algorithm='fomaml' inner-steps=1 num-server-rounds=3"
VICTIM = "plant-b"


@dataclass
class WarmRuns:
    root: Path
    codes: list[int | None] = field(default_factory=list)
    rounds: list[list[dict]] = field(default_factory=list)  # per run, its metrics records
    workers: list[dict[str, int]] = field(default_factory=list)  # per run, each factory's worker pid
    killed: int | None = None
    leftovers: list[int] = field(default_factory=list)

    def server_output(self, run: int) -> str:
        """The server's console and its ServerApp's log."""
        return (self.root / f"server-{run}.log").read_text() + (self.root / "server" / "run.log").read_text()


def _workers(clients: dict[str, ChildProcess]) -> dict[str, int]:
    """Each factory's warm worker now (a child of its `fedmeta client`); missing while one restarts."""
    found = {}
    for name, client in clients.items():
        for child in psutil.Process(client.pid).children():
            if "fedmeta.client.node.warm_worker" in child.cmdline():
                found[name] = child.pid
    return found


def _records(run_dir: Path, algorithm: str) -> list[dict]:
    path = run_dir / algorithm / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _kill_worker_training(root: Path, clients: dict[str, ChildProcess], logs: list[Path]) -> int:
    """SIGKILL the victim's worker while its task record says it works on a train message."""
    record = root / f"state-{VICTIM}" / "warm-worker-task.json"

    def training() -> bool:
        try:
            fields = json.loads(record.read_text())
        except (OSError, ValueError):  # not there, or being replaced at this instant
            return False
        return fields["message_type"] == "train" and not fields["replying"]

    deadline = time.monotonic() + 120
    while not training():  # a round's training lasts a fraction of a second: look often
        if time.monotonic() > deadline:
            wait_for(training, 0, f"{VICTIM}'s worker to work on a train message", logs)  # fails, showing the logs
        time.sleep(0.01)
    pid = _workers(clients)[VICTIM]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture(scope="module")
def warm_runs(tmp_path_factory) -> Iterator[WarmRuns]:
    root = tmp_path_factory.mktemp("warm-worker")
    schema = root / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    port = free_port()
    result = WarmRuns(root)
    clients = {}
    for seed, name in enumerate(FACTORIES):
        write_table(root / f"{name}.csv", gain=1.0 + 0.2 * seed, seed=seed)
        command = [FEDMETA, "client", "--insecure", "--server", f"127.0.0.1:{port}", "--data",
                   str(root / f"{name}.csv"), "--schema", str(schema), "--device", "cpu", "--isolation", "process",
                   "--runtime-port", str(free_port()), "--state", str(root / f"state-{name}")]
        clients[name] = ChildProcess(f"factory {name}", command, log=root / f"{name}.log", env=ENV)
    logs = [root / f"{name}.log" for name in FACTORIES]
    started: list[ChildProcess] = []
    try:
        for client in clients.values():
            started.append(client.start())
        for run, config in enumerate((RUN_A, RUN_B, RUN_A_AGAIN)):
            # One server state for all three (its SuperLink remembers the nodes), a run folder each.
            run_dir = root / f"run-{run}"
            command = [FEDMETA, "server", "--insecure", "--state", str(root / "server"), "--port", str(port),
                       "--control-port", str(free_port()),
                       "--schema", str(schema), "--run-config", f"{config} run-dir='{run_dir}'"]
            server = ChildProcess("server", command, log=root / f"server-{run}.log", env=ENV)
            started.append(server.start())
            logs.append(server.log)
            algorithm = "xgb-histogram" if config is RUN_B else "fomaml"
            if config is RUN_A_AGAIN:
                wait_for(lambda: _records(root / "run-2", "fomaml"), 180, "the repeat's round 1", logs)
                result.killed = _kill_worker_training(root, clients, logs)
            else:
                wait_for(lambda: len(_workers(clients)) == len(FACTORIES), 60, "both workers", logs)
                result.workers.append(_workers(clients))
            result.codes.append(server.wait(240))
            result.rounds.append(_records(run_dir, algorithm))
        wait_for(lambda: len(_workers(clients)) == len(FACTORIES), 60, "the restarted worker", logs)
        result.workers.append(_workers(clients))
    finally:
        result.leftovers = stop_all(started)
    yield result


def test_two_runs_with_different_configs_go_through_one_worker(warm_runs):
    failed = [warm_runs.server_output(run)[-3000:] for run, code in enumerate(warm_runs.codes) if code != 0]
    assert warm_runs.codes == [0, 0, 0], failed
    first, second = warm_runs.workers[:2]
    assert first == second  # the same worker process in each factory served runs A and B
    for records, rounds in zip(warm_runs.rounds[:2], (2, 2), strict=True):
        assert [r["round"] for r in records] == list(range(1, rounds + 1))
        assert all(r["train/replies"] == 2.0 and r["train/rejected"] == 0.0 for r in records), records


def test_a_run_after_another_computes_what_it_computed_before(warm_runs):
    """Run B (another model family, XGBoost in the worker) passed through the worker between A and its repeat:
    the repeat's first round is A's, value for value."""
    before, after = warm_runs.rounds[0][0], warm_runs.rounds[2][0]
    assert after["train/query-loss"] == before["train/query-loss"]
    assert after["train/replies"] == before["train/replies"] == 2.0


def test_a_histogram_tree_run_grows_its_trees_over_real_processes_and_delivers_its_tree_package(warm_runs):
    records = warm_runs.rounds[1]
    assert {key for key in records[-1] if key.startswith("train/tree-recipe-")} == {"train/tree-recipe-k5",
                                                                                    "train/tree-recipe-k10"}
    package = load_package(warm_runs.root / "run-1" / "xgb-histogram" / "model")
    ensemble = load_ensemble(package.ensemble)
    assert ensemble.num_boosted_rounds() == 2 * TREES_A_ROUND
    # every tree split on the summed histograms: none is a bare leaf (each factory's rows alone are 60)
    assert all(tree.count("split") > 0 for tree in ensemble.get_dump(dump_format="json"))
    assert package.manifest.schema.features == tuple(FEATURES) and set(package.manifest.trees.recipes) == {5, 10}
    for name in FACTORIES:
        stored = load_package(warm_runs.root / f"state-{name}" / "models" / package.manifest.run / "round-000002")
        assert stored.ensemble == package.ensemble


def test_a_killed_worker_is_answered_as_failed_and_replaced(warm_runs):
    records = warm_runs.rounds[2]
    assert [r["round"] for r in records] == [1, 2, 3]
    killed_round = records[1]
    # The server learned of the failure from the factory's answer, well before the round's timeout.
    assert killed_round["train/replies"] == 1.0, killed_round
    assert killed_round["seconds"] < ROUND_TIMEOUT_S / 2, killed_round
    assert records[2]["train/replies"] == 2.0, records[2]  # the new worker answered round 3
    output = warm_runs.server_output(2)
    assert f"factory {VICTIM}" in output and "warm ClientApp worker stopped (exit code -9)" in output, output
    factory_log = (warm_runs.root / f"{VICTIM}.log").read_text()
    assert "the warm ClientApp worker stopped (exit code -9); the train message it was working on was answered " \
           "as failed; starting a new one" in factory_log, factory_log
    assert warm_runs.workers[-1][VICTIM] != warm_runs.killed
    assert warm_runs.workers[-1]["plant-a"] == warm_runs.workers[0]["plant-a"]  # the other kept its worker


def test_every_process_is_stopped(warm_runs):
    assert warm_runs.leftovers == []
    # stopping a factory (its process group signalled) is no worker crash: no restart is reported
    for name in FACTORIES:
        log = (warm_runs.root / f"{name}.log").read_text()
        assert "exit code -15" not in log and "exit code -2" not in log, log
