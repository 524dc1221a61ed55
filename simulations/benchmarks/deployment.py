"""``fedmeta bench deployment``: a federated round as real processes beside the simulation engine.

The same federation runs three ways in one command, one after the other:

- **simulation**: the real `ServerApp` and `ClientApp` on Flower's simulation engine
  (`simulations.harness.run_federated_simulation`), synthetic factories in memory;
- **deployment, subprocess isolation**: ``fedmeta server`` (a SuperLink with TLS and node
  authentication) and one ``fedmeta client`` per factory (a SuperNode whose own SuperExec
  starts a ``flwr-clientapp`` process per message), all on loopback;
- **deployment, process isolation**: the same, with a long-running process beside each SuperNode
  (``--isolation process``): Flower's ``flower-superexec``, which starts a ``flwr-clientapp`` per
  message, or the project's warm worker, which runs every message in itself (`client.node.warm_worker`).

Each deployment runs twice: with Flower's processes as shipped (``--stock-supernode``: a 3 s poll
for work when idle, a 0.5 s look for each reply, Flower's SuperExec) and with the project's
(`client.node.supernode_timings`, and the warm worker), so the overhead each removes is measured in the
same run.

The work is identical, to the bit: the synthetic factories are written to CSV tables
(float32 values printed exactly) and the deployed factories carry the synthetic names, so
model, data, task sampling and aggregation match; the first round's query loss is
compared to prove it. The client work is the scaling benchmark's (`scaling.WORK`:
first-order MAML, one local meta-step over 2 tasks, one inner step, the quality MLP).

A round's cost is the ``seconds`` the server's round loop records (sending the work,
the factories' replies, aggregation), the median over the rounds after the first
(which also discovers the factories); the ratio divides it by the simulation's.
"""

from __future__ import annotations

import json
import os
import statistics
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from fedmeta.common import ChildProcess, FactoryFamily, FamilyConfig, free_port, make_family
from fedmeta.server import create_certificate_authority, create_factory_keys, create_server_certificate, toml_value
from fedmeta.simulations.benchmarks.aims import verdict
from fedmeta.simulations.benchmarks.scaling import RAY_EXIT_TIMEOUT_S, WORK, wait_for_descendants

__all__ = [
    "ISOLATIONS",
    "OVERHEAD_AIM_S",
    "SUPERNODES",
    "DeploymentBenchResult",
    "ModeResult",
    "client_command",
    "deployment_rounds",
    "export_tables",
    "make_certificates",
    "render",
    "run_config",
    "run_deployment_benchmark",
    "server_command",
    "simulation_rounds",
]

ISOLATIONS = ("subprocess", "process")
SUPERNODES = ("stock", "tuned")  # Flower's SuperNode timings, the project's
RUN_TIMEOUT_S = 600.0
OVERHEAD_AIM_S = 1.0  # what the fastest deployment may add to a round over the simulation
LOSS_TOLERANCE = 1e-5

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModeResult:
    """One way of running the federation: its rounds' seconds and first-round query loss."""

    mode: str
    round_seconds: list[float]
    first_round_loss: float

    @property
    def median_s(self) -> float:
        """Median round time after the first round."""
        return statistics.median(self.round_seconds[1:])


@dataclass(frozen=True)
class DeploymentBenchResult:
    factories: int
    rounds: int
    modes: list[ModeResult]
    cpu_count: int
    load_average: float  # 1-minute load average at the start: timings on a busy machine are slower

    def ratio(self, mode: ModeResult) -> float:
        """``mode``'s median round time over the simulation's."""
        return mode.median_s / self.modes[0].median_s

    def overhead_s(self, mode: ModeResult) -> float:
        """What ``mode`` adds to a round over the simulation, in seconds."""
        return mode.median_s - self.modes[0].median_s

    @property
    def fastest_deployment(self) -> ModeResult | None:
        """The deployed mode with the shortest median round, the one the aim is about (None: none ran)."""
        return min(self.modes[1:], key=lambda mode: mode.median_s, default=None)

    def to_dict(self) -> dict[str, object]:
        return {
            "factories": self.factories,
            "overhead_aim_s": OVERHEAD_AIM_S,
            "rounds": self.rounds,
            "cpu_count": self.cpu_count,
            "load_average": self.load_average,
            "modes": [
                {**asdict(mode), "median_s": mode.median_s, "ratio_to_simulation": self.ratio(mode),
                 "overhead_s": self.overhead_s(mode)}
                for mode in self.modes
            ],
        }


def run_config(factories: int, rounds: int, run_dir: Path) -> dict[str, object]:
    """The bench's run settings: `scaling.WORK` for ``rounds`` rounds, every factory in each."""
    return {
        **WORK,
        "num-factories": factories,
        "num-server-rounds": rounds,
        "min-train-nodes": factories,
        "wait-for-factories": factories,
        "run-dir": str(run_dir),
    }


def export_tables(family: FactoryFamily, folder: Path) -> Path:
    """The family's training factories as ``<name>.csv`` tables plus ``schema.json``; returns the schema.

    Values are printed with 9 significant digits, which read back as the same float32.
    """
    features = [f"x{i}" for i in range(family.model_config.input_shape[0])]
    schema = folder / "schema.json"
    schema.write_text(json.dumps({"features": features, "target": "y", "task": family.task_kind}))
    for factory in family.train:
        rows = np.column_stack([factory.x.numpy(), factory.y.numpy()])
        header = ",".join([*features, "y"])
        np.savetxt(folder / f"{factory.name}.csv", rows, fmt="%.9g", delimiter=",", header=header, comments="")
    return schema


def _mode_result(mode: str, records: Sequence[Mapping[str, object]], factories: int) -> ModeResult:
    """Check every round had every factory's accepted delta: a ratio is only meaningful over the same work."""
    for record in records:
        if record.get("train/replies") != float(factories) or record.get("train/rejected") != 0.0:
            raise RuntimeError(
                f"{mode}, round {record['round']}: {record.get('train/replies')} of {factories} factories' "
                f"deltas, {record.get('train/rejected')} rejected"
            )
    return ModeResult(mode, [float(r["seconds"]) for r in records], float(records[0]["train/query-loss"]))


def simulation_rounds(factories: int, rounds: int, folder: Path) -> ModeResult:
    """The federation on Flower's simulation engine (in this process, with a Ray of its own: the deployments it is
    compared with run on this machine too, whatever RAY_ADDRESS says)."""
    from fedmeta.simulations.harness import OWN_RAY, run_federated_simulation  # starts Ray: only when needed

    records: list[Mapping[str, object]] = []
    run_federated_simulation(run_config(factories, rounds, folder / "run"), progress=records.append,
                             ray_address=OWN_RAY)
    return _mode_result("simulation", records, factories)


FEDMETA = Path(sysconfig.get_path("scripts")) / "fedmeta"


def server_command(certs: Path, state: Path, port: int, schema: Path, config: Mapping[str, object],
                   *flags: str) -> list[str]:
    """``fedmeta server`` with TLS and node authentication from ``certs``, on ``port``, running ``config``."""
    settings = " ".join(f"{key}={toml_value(value)}" for key, value in config.items())
    return [str(FEDMETA), "server", "--certs", str(certs), "--state", str(state), "--port", str(port),
            "--control-port", str(free_port()), "--schema", str(schema), "--run-config", settings, *flags]


def client_command(factory: str, server: str, folder: Path, isolation: str, *flags: str) -> list[str]:
    """``fedmeta client`` for ``factory``, its table, key and state in ``folder`` (as `export_tables` and
    `deployment_rounds` lay them out), dialling ``server`` (HOST:PORT)."""
    certs = folder / "certs"
    return [str(FEDMETA), "client", "--server", server, "--data", str(folder / f"{factory}.csv"),
            "--schema", str(folder / "schema.json"), "--key", str(certs / factory), "--ca", str(certs / "ca.crt"),
            "--factory", factory, "--device", "cpu", "--isolation", isolation,
            "--runtime-port", str(free_port()), "--state", str(folder / factory), *flags]


def make_certificates(folder: Path, factories: Sequence[str], hosts: Sequence[str] = ("127.0.0.1",)) -> Path:
    """A CA, the server's certificate for ``hosts`` and a key pair per factory, in ``folder``/certs."""
    certs = folder / "certs"
    create_server_certificate(certs, create_certificate_authority(certs), list(hosts))
    for factory in factories:
        create_factory_keys(certs, factory)
    return certs


def deployment_rounds(family: FactoryFamily, rounds: int, folder: Path, isolation: str, log: Log,
                      supernode: str = "tuned") -> ModeResult:
    """The federation as ``fedmeta server`` and one ``fedmeta client`` per factory, TLS and node auth on;
    ``supernode`` "stock" runs Flower's SuperNode with its own timings."""
    certs = make_certificates(folder, [factory.name for factory in family.train])
    schema = export_tables(family, folder)
    port = free_port()
    config = run_config(len(family.train), rounds, folder / "run")
    server = ChildProcess("server", server_command(certs, folder / "server", port, schema, config),
                          log=folder / "server.log")
    stock = ["--stock-supernode"] if supernode == "stock" else []
    clients = [
        ChildProcess(f"factory {factory.name}",
                     client_command(factory.name, f"127.0.0.1:{port}", folder, isolation, *stock),
                     log=folder / f"{factory.name}.log")
        for factory in family.train
    ]
    started = time.perf_counter()
    with server:
        for client in clients:
            client.start()
        try:
            code = server.wait(RUN_TIMEOUT_S)
        finally:
            for client in clients:
                client.stop()
    if code != 0:
        raise RuntimeError(f"deployment ({isolation}, {supernode}) failed with exit code {code}:\n"
                           f"{server.log_tail()}")
    mode = f"deployment, {isolation} isolation, {supernode} SuperNode"
    log(f"{mode} took {time.perf_counter() - started:.0f} s in all")
    lines = (folder / "run" / str(WORK["algorithm"]) / "metrics.jsonl").read_text().splitlines()
    return _mode_result(mode, [json.loads(line) for line in lines], len(family.train))


def run_deployment_benchmark(
    factories: int = 3,
    rounds: int = 4,
    *,
    isolations: Sequence[str] = ISOLATIONS,
    supernodes: Sequence[str] = SUPERNODES,
    log: Log = lambda message: None,
) -> DeploymentBenchResult:
    """Run the simulation, then each deployment, on the same work; raise if the work differed."""
    if factories < 2 or rounds < 2:
        raise ValueError(f"need at least 2 factories and 2 rounds (one timed), got {factories} and {rounds}")
    unknown = sorted(set(isolations) - set(ISOLATIONS))
    if unknown or not isolations:
        raise ValueError(f"isolations must be among {list(ISOLATIONS)}, got {list(isolations)}")
    if not supernodes or set(supernodes) - set(SUPERNODES):
        raise ValueError(f"supernodes must be among {list(SUPERNODES)}, got {list(supernodes)}")
    family = make_family(FamilyConfig(str(WORK["family"]), num_factories=factories, num_held_out=0))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fedmeta-bench-deployment-") as temp:
        root = Path(temp)
        log("simulation")
        modes = [simulation_rounds(factories, rounds, root / "simulation")]
        wait_for_descendants(RAY_EXIT_TIMEOUT_S)  # Ray ends its processes lazily: not during the deployments
        for isolation in isolations:
            for supernode in supernodes:
                log(f"deployment, {isolation} isolation, {supernode} SuperNode")
                folder = root / f"{isolation}-{supernode}"
                folder.mkdir()
                modes.append(deployment_rounds(family, rounds, folder, isolation, log, supernode))
    for mode in modes[1:]:
        if abs(mode.first_round_loss - modes[0].first_round_loss) > LOSS_TOLERANCE:
            raise RuntimeError(
                f"{mode.mode} computed query loss {mode.first_round_loss} in round 1, the simulation "
                f"{modes[0].first_round_loss}: not the same work"
            )
    return DeploymentBenchResult(factories, rounds, modes, os.cpu_count() or 1, load)


def render(result: DeploymentBenchResult, console: Console) -> None:
    """One row per way of running: median round time and its ratio to the simulation's."""
    title = (
        f"{result.factories} factories, median of rounds 2-{result.rounds}; {result.cpu_count} CPUs, "
        f"load average {result.load_average:.1f} at the start"
    )
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for column in ("mode", "round s", "over simulation s", "ratio", "first round s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in result.modes:
        table.add_row(mode.mode, f"{mode.median_s:.2f}", f"{result.overhead_s(mode):+.2f}",
                      f"{result.ratio(mode):.1f}x", f"{mode.round_seconds[0]:.2f}")
    console.print(table)
    console.print(
        "Same work in every mode (first-round query loss identical). round s: the server loop's time from "
        "sending the work to aggregating the replies. Deployment adds per message: the SuperNode's poll for "
        "work (stock: every 3 s when idle; tuned: 0.5 s), Flower's download of the message and upload of the "
        "reply, and, but for process isolation with the tuned SuperNode (its warm worker), a new "
        "flwr-clientapp process that imports torch and the app."
    )
    if (fastest := result.fastest_deployment) is not None:
        overhead = result.overhead_s(fastest)
        console.print(f"fastest deployment ({fastest.mode}) over the simulation under {OVERHEAD_AIM_S:g} s a round: "
                      f"{overhead:+.2f} s {verdict(overhead < OVERHEAD_AIM_S)}")
