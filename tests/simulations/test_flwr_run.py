"""`flwr run .`, as docs/researcher.md shows it: Flower's own local SuperLink, in simulation mode, runs this
repository's apps (Flower's supported path, which `fedmeta simulate`'s harness shares its engine with), and the
run's records equal the harness's for the same run settings."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedmeta.server import RunDirectory
from fedmeta.simulations import harness
from tests.support.docs import ROOT, example

# The smallest run the records can be compared on: a round of 4 factories and one held-out factory's 5-shot
# figures, one simulated SuperNode each.
SHORT_RUN = {"num-server-rounds": 1, "num-factories": 4, "num-held-out": 1, "eval-shots": "5", "eval-tasks": 4}
TIMINGS = {"seconds", "train/seconds"}  # wall times differ between any two runs


def _documented_command() -> tuple[list[str], dict[str, str]]:
    """The `flwr run` line of the documented block, and the variables the block exports."""
    (block,) = example("docs/researcher.md", "bash", marker="run by tests/simulations/test_flwr_run.py")
    lines = block.replace("\\\n", " ").strip().splitlines()
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))
    (command,) = [shlex.split(line) for line in lines if line.startswith("flwr run")]
    return command, exports


def _with(command: list[str], flag: str, value: str) -> list[str]:
    """``command`` with ``flag``'s value replaced."""
    index = command.index(flag) + 1
    return [*command[:index], value, *command[index + 1:]]


def _flower_home_processes(home: Path) -> list[psutil.Process]:
    """The processes whose environment names ``home`` as FLWR_HOME: the local SuperLink (and its SuperExec) that
    `flwr run` starts in the background and leaves running."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("FLWR_HOME") == str(home):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture()
def flower_home(tmp_path) -> Iterator[Path]:
    """A FLWR_HOME of the test's own; the SuperLink that `flwr run` leaves running in it is stopped at the end."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    try:
        yield home
    finally:
        for process in _flower_home_processes(home):  # SuperLink, SuperExec and any app process they started
            try:
                process.kill()
            except psutil.NoSuchProcess:  # ended with its parent
                continue


def _records(run: Path) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMINGS}
            for record in RunDirectory(run / "maml").read_metrics()]


def test_the_documented_flwr_run_runs_the_apps_on_flowers_simulation_runtime(flower_home, tmp_path, monkeypatch):
    command, exports = _documented_command()
    assert command[:4] == ["flwr", "run", ".", "local"], command
    settings = " ".join(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
                        for key, value in {**SHORT_RUN, "run-dir": str(tmp_path / "flwr")}.items())
    command = _with(_with(command, "--federation-config", "num-supernodes=5"), "--run-config", settings)
    env = {**os.environ, **exports, "FLWR_HOME": str(flower_home)}
    env.pop("RAY_ADDRESS", None)  # as a user runs it: Flower's simulation starts a Ray of its own
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Successfully started run" in completed.stdout, completed.stdout[-3000:]
    run = RunDirectory(tmp_path / "flwr" / "maml")
    # --stream follows the run to its end; the package is written after the last round
    assert (tmp_path / "flwr" / "maml" / "model").is_dir(), completed.stdout[-3000:]
    assert run.latest_round() == 1

    harness.run_federated_simulation({**SHORT_RUN, "run-dir": str(tmp_path / "harness")})
    flower_records = _records(tmp_path / "flwr")
    assert "eval/loss-k5" in flower_records[-1], flower_records
    assert flower_records == _records(tmp_path / "harness")
