"""``fedmeta bench soak``: a federation of real processes that must keep going through a seeded series of faults.

The server and the factories run as in the deployment bench (``fedmeta server``, one ``fedmeta client
--isolation process`` per factory, TLS and node authentication, the same work), two of the factories
behind network namespaces of their own (`network_faults`), for a set number of rounds. At rounds the
seed picks, and on factories it picks, the soak injects one of each fault:

- **kill-training**: a factory's processes SIGKILLed once it has its round's work; restarted a round later.
- **kill-uploading**: a factory's processes SIGKILLed while it uploads its reply (its link slowed to
  `UPLOAD_RATE_KBIT` from the round before, killed `UPLOAD_KILL_DELAY_S` after it starts sending);
  restarted a round later.
- **server-kill**: the server's processes (SuperLink, SuperExec, ServerApp) SIGKILLed mid-round and the
  server started again with ``--resume``.
- **freeze**: a factory's processes SIGSTOPped once it has its round's work, for the round timeout and
  `FREEZE_EXTRA_S` more, then SIGCONTed.
- **network**: a factory's link slowed to `NETWORK_RATE_KBIT` and dropping `NETWORK_LOSS` of its packets
  for `NETWORK_FAULT_S`.

It then checks that the run finished every round once; that no round took longer than the SuperLink's
failure detection (`DETECTION_S`, two missed heartbeats) plus the round's own work; that every checkpoint
verifies; that the resumed server went on from its last complete round, earlier rounds untouched; that
every factory up at the end holds the final model package, byte for byte; that each faulted factory took
work again after its fault; and that no process is left. Time lost to a fault: what the rounds it struck
took beyond the median round.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from fedmeta.client.node.supernode_timings import HEARTBEAT_INTERVAL_S
from fedmeta.common import ChildProcess, FamilyConfig, free_port, make_family, port_in_use, stop_all
from fedmeta.server.checkpoint import CheckpointError, RunDirectory
from fedmeta.server.reply_pull import SENDER_LOST
from fedmeta.simulations.benchmarks.deployment import (
    client_command,
    export_tables,
    make_certificates,
    run_config,
    server_command,
)
from fedmeta.simulations.benchmarks.network_faults import FactoryNetwork
from fedmeta.simulations.benchmarks.scaling import WORK

__all__ = ["FAULT_KINDS", "Fault", "SoakResult", "fault_schedule", "render", "run_soak"]

FAULT_KINDS = ("kill-training", "kill-uploading", "server-kill", "freeze", "network")
NETWORKED = ("kill-uploading", "network")  # faults on a factory behind a namespace of its own
MIN_FACTORIES = 6
RECOVERY_ROUNDS = 6  # rounds after the last fault's, for the faulted factories to take work again
DETECTION_S = 2 * HEARTBEAT_INTERVAL_S  # a node missing two heartbeats is gone
WORK_ALLOWANCE = 3.0  # a round's own work: this many median rounds, plus WORK_SLACK_S
WORK_SLACK_S = 5.0
UPLOAD_RATE_KBIT = 16  # a reply of the quality MLP (about 18 KB) then takes about 9 s to upload
UPLOAD_KILL_DELAY_S = 1.0
FREEZE_EXTRA_S = 5.0
NETWORK_RATE_KBIT = 256
NETWORK_LOSS = 0.2
NETWORK_FAULT_S = 20.0
TICK_S = 0.2
START_TIMEOUT_S = 180.0  # the first round: every process starts and imports torch
ROUND_BUDGET_S = 90.0  # the whole soak may take this per round (plus the start) before it is called stuck

WORKING, SENDING = "working on a train message", "sent the reply to a train message"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Fault:
    kind: str
    round: int
    factory: str | None  # None: the server


def fault_schedule(factories: Sequence[str], rounds: int, seed: int) -> list[Fault]:
    """One fault of each kind in an order ``seed`` draws, at rounds spread over 2..rounds - `RECOVERY_ROUNDS`,
    on distinct factories it draws."""
    if len(factories) < MIN_FACTORIES:
        raise ValueError(f"the soak needs at least {MIN_FACTORIES} factories, got {len(factories)}")
    last = rounds - RECOVERY_ROUNDS
    if last < 2 + len(FAULT_KINDS) - 1:
        raise ValueError(f"the soak needs at least {len(FAULT_KINDS) + 1 + RECOVERY_ROUNDS} rounds, got {rounds}")
    rng = random.Random(seed)
    kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
    victims = iter(rng.sample(list(factories), len(FAULT_KINDS) - 1))
    slots = [round(2 + i * (last - 2) / (len(kinds) - 1)) for i in range(len(kinds))]
    return [Fault(kind, slot, None if kind == "server-kill" else next(victims)) for kind, slot in zip(kinds, slots,
                                                                                                      strict=True)]


@dataclass
class FaultRecord:
    """When a fault struck and when what it hit was back (seconds since the soak started)."""

    fault: Fault
    struck_round: int | None = None  # the round under way when it struck (its round, or a later one)
    injected_s: float | None = None
    recovered_s: float | None = None
    ended_s: float | None = None  # the impairment's end: the kill, the thaw, the link restored
    lost_s: float = 0.0
    note: str = ""


@dataclass
class SoakResult:
    factories: int
    rounds: int
    seed: int
    round_timeout_s: float
    faults: list[FaultRecord]
    round_seconds: list[float]  # the server's own measure of each round
    bound_s: float
    wall_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed,
                "longest_round_s": max(self.round_seconds, default=0.0)}


def _digest(package: Path) -> str:
    """sha256 over a model package's files, names and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _until(condition: Callable[[], object]) -> Iterator[None]:
    while not condition():
        yield


class Soak:
    """The federation's processes, the faults' progress, and what the checks need."""

    def __init__(self, folder: Path, factories: int, rounds: int, seed: int, round_timeout: float, log: Log) -> None:
        self.folder, self.rounds, self.round_timeout, self.log = folder, rounds, round_timeout, log
        family = make_family(FamilyConfig(str(WORK["family"]), num_factories=factories, num_held_out=0,
                                          seed=seed))
        self.names = [factory.name for factory in family.train]
        self.schedule = fault_schedule(self.names, rounds, seed)
        self.records = [FaultRecord(fault) for fault in self.schedule]
        export_tables(family, folder)
        self.run = RunDirectory(folder / "run" / str(WORK["algorithm"]))
        self.port = free_port()
        self.started = time.monotonic()
        self.done = 0  # the last round in the metrics at this tick
        self.done_at: dict[int, float] = {0: 0.0}  # round -> seconds since the start when the soak saw it done
        self.processes: list[ChildProcess] = []  # every one started, for the leftover check
        self.clients: dict[str, ChildProcess] = {}
        self.networks: dict[str, FactoryNetwork] = {}
        self.frozen: set[str] = set()
        self.server: ChildProcess | None = None
        self.server_down = False
        self.resume_expected: int | None = None
        self.metrics_at_kill: list[str] = []
        self.server_logs: list[Path] = []  # the first server's, then the resumed one's
        self.warnings: set[str] = set()  # every warning the run's status showed (`fedmeta status`)

    # --- processes --------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.started

    def start_server(self, *flags: str) -> None:
        config = {**run_config(len(self.names), self.rounds, self.folder / "run"), "min-train-nodes": 2,
                  "timeout": self.round_timeout}
        if flags:  # resumed: the factories still up reconnect on their own; rounds need two of them
            config["wait-for-factories"] = 2
        log = self.folder / f"server-{len(self.server_logs)}.log"
        self.server_logs.append(log)
        certs = self.folder / "certs"
        self.server = ChildProcess("server", server_command(certs, self.folder / "server", self.port,
                                                            self.folder / "schema.json", config, *flags), log=log)
        self.processes.append(self.server.start())

    def start_client(self, name: str) -> None:
        network = self.networks.get(name)
        host = network.host_address if network else "127.0.0.1"
        command = client_command(name, f"{host}:{self.port}", self.folder, "process")
        client = ChildProcess(f"factory {name}", network.command(command) if network else command,
                              log=self.folder / f"{name}.log")
        self.clients[name] = client
        self.processes.append(client.start())

    def said(self, name: str, text: str, since: int) -> bool:
        """Whether factory ``name``'s log says ``text`` after its first ``since`` bytes."""
        log = self.folder / f"{name}.log"
        return log.exists() and text in log.read_bytes()[since:].decode(errors="replace")

    def log_size(self, name: str) -> int:
        log = self.folder / f"{name}.log"
        return log.stat().st_size if log.exists() else 0

    def completed(self) -> int:
        """The last round in the metrics (0 before the first)."""
        lines = self.run.metrics_path.read_text().splitlines() if self.run.metrics_path.exists() else []
        return int(json.loads(lines[-1])["round"]) if lines else 0

    # --- the faults -------------------------------------------------------------
    def inject(self, record: FaultRecord) -> Iterator[None]:
        fault = record.fault
        yield from _until(lambda: self.done >= fault.round - 1)
        if fault.kind == "server-kill":
            yield from self.kill_server(record)
            return
        name = str(fault.factory)
        network = self.networks.get(name)
        if fault.kind == "kill-uploading":
            assert network is not None
            network.impair(rate_kbit=UPLOAD_RATE_KBIT, upload_only=True)
        if fault.kind == "network":
            assert network is not None
            network.impair(rate_kbit=NETWORK_RATE_KBIT, loss=NETWORK_LOSS)
            record.injected_s, record.struck_round = self.now(), self.done + 1
            self.log(f"round {record.struck_round}: {name}'s link slowed to {NETWORK_RATE_KBIT} kbit/s, "
                     f"dropping {NETWORK_LOSS:.0%} of its packets")
            yield from _until(lambda: self.now() - record.injected_s >= NETWORK_FAULT_S)
            network.restore()
            record.ended_s = self.now()
        else:
            mark = self.log_size(name)
            yield from _until(lambda: self.said(name, SENDING if fault.kind == "kill-uploading" else WORKING, mark))
            if fault.kind == "kill-uploading":
                sending = self.now()
                yield from _until(lambda: self.now() - sending >= UPLOAD_KILL_DELAY_S)
            record.injected_s = record.ended_s = self.now()
            record.struck_round = self.done + 1
            self.clients[name].signal_tree(signal.SIGSTOP if fault.kind == "freeze" else signal.SIGKILL)
            self.log(f"round {record.struck_round}: {name} {'frozen' if fault.kind == 'freeze' else 'killed'} "
                     f"({fault.kind})")
            if network is not None:
                network.restore()
            if fault.kind == "freeze":
                self.frozen.add(name)
                yield from _until(lambda: self.now() - record.injected_s >= self.round_timeout + FREEZE_EXTRA_S)
                self.clients[name].signal_tree(signal.SIGCONT)
                self.frozen.discard(name)
                record.ended_s = self.now()
                self.log(f"{name} thawed")
            else:
                yield from _until(lambda: self.done >= record.struck_round)
                self.start_client(name)
                self.log(f"{name} restarted")
        mark = self.log_size(name)
        yield from _until(lambda: self.said(name, WORKING, mark))
        record.recovered_s = self.now()

    def kill_server(self, record: FaultRecord) -> Iterator[None]:
        marks = {name: self.log_size(name) for name in self.names}
        yield from _until(lambda: any(self.said(name, WORKING, marks[name]) for name in self.names))
        self.metrics_at_kill = self.run.metrics_path.read_text().splitlines()
        self.resume_expected = self.run.latest_round()
        server = self.server
        assert server is not None
        self.server_down = True
        record.injected_s = record.ended_s = self.now()
        record.struck_round = self.done + 1
        server.signal_tree(signal.SIGKILL)
        server.wait(30)
        self.log(f"round {record.struck_round}: server killed after round {self.resume_expected}'s checkpoint")
        yield from _until(lambda: not port_in_use("0.0.0.0", self.port))
        self.start_server("--resume")
        self.server_down = False
        yield from _until(lambda: self.done >= record.struck_round)
        record.recovered_s = self.now()

    # --- the run ----------------------------------------------------------------
    def run_to_end(self) -> int:
        """Start everything, inject the faults until the server finishes; the last server's exit code."""
        self.started = time.monotonic()
        self.start_server()
        for name in self.names:
            self.start_client(name)
        pending = [self.inject(record) for record in self.records]
        deadline = START_TIMEOUT_S + ROUND_BUDGET_S * self.rounds
        while True:
            if self.now() > deadline:
                raise RuntimeError(f"the soak did not finish within {deadline:.0f} s; the server log ends with:\n"
                                   f"{self.server.log_tail() if self.server else ''}")
            self.done = self.completed()  # read once a tick; the faults' steps go by it
            for round_ in range(max(self.done_at) + 1, self.done + 1):
                self.done_at[round_] = self.now()
                self.log(f"round {round_} done")
            self.note_warnings()
            for step in list(pending):
                try:
                    next(step)
                except StopIteration:
                    pending.remove(step)
            if not self.server_down and self.server is not None and (code := self.server.poll()) is not None:
                return code
            time.sleep(TICK_S)

    def note_warnings(self) -> None:
        """Keep the warnings the run's status shows now (each round's replace the last's)."""
        with suppress(OSError, ValueError):  # not written yet, or being replaced this instant
            status = json.loads(self.run.status_path.read_text())
            self.warnings.update(str(warning.get("message", "")) for warning in status.get("warnings", []))

    def stop(self) -> list[int]:
        """Thaw and stop every process; those of the started trees still running after."""
        for name in self.frozen:
            self.clients[name].signal_tree(signal.SIGCONT)
        return stop_all(self.processes)

    # --- the checks -------------------------------------------------------------
    def check(self, code: int, leftovers: list[int], round_seconds: list[float], bound: float) -> list[str]:
        problems = []
        if code != 0:
            problems.append(f"the server exited with code {code}")
        recorded = [int(json.loads(line)["round"]) for line in self.run.metrics_path.read_text().splitlines()]
        if recorded != list(range(1, self.rounds + 1)):
            problems.append(f"rounds recorded {recorded}, not 1..{self.rounds} once each")
        slow = [(r, s) for r, s in enumerate(round_seconds, start=1) if s > bound]
        if slow:
            problems.append(f"rounds over the {bound:.1f} s bound: {', '.join(f'{r} ({s:.1f} s)' for r, s in slow)}")
        for path in sorted(self.run.checkpoints_dir.glob("round-*.safetensors")):
            try:
                self.run.load_checkpoint(int(path.stem.removeprefix("round-")))
            except CheckpointError as error:
                problems.append(f"checkpoint does not verify: {error}")
        problems += self.check_resume()
        problems += self.check_packages()
        for record in self.records:
            if record.injected_s is None:
                problems.append(f"{record.fault.kind} was never injected")
            elif record.recovered_s is None:
                problems.append(f"{record.fault.kind}: {record.fault.factory or 'the server'} did not come back")
        if leftovers:
            problems.append(f"processes left running: {leftovers}")
        return problems

    def check_resume(self) -> list[str]:
        resumed = self.server_logs[1:]
        if not resumed:
            return ["the server was never resumed"]
        said = resumed[0].read_text(errors="replace")
        expected = f"resuming {WORK['algorithm']} after round {self.resume_expected}"
        problems = [] if expected in said else [f"the resumed server did not say {expected!r}"]
        now = self.run.metrics_path.read_text().splitlines()
        if now[:len(self.metrics_at_kill)] != self.metrics_at_kill:
            problems.append("the resumed run changed the metrics of rounds recorded before the kill")
        return problems

    def upload_note(self) -> str:
        """Whether the server saw the kill-uploading factory's reply cut off (`server.reply_pull`)."""
        name = next(record.fault.factory for record in self.records if record.fault.kind == "kill-uploading")
        cut = any(SENDER_LOST in warning and str(name) in warning for warning in self.warnings)
        return "killed mid-upload: its reply given up" if cut else "killed outside its upload"

    def check_packages(self) -> list[str]:
        final = self.run.path / "model"
        if not final.is_dir():
            return [f"no final model package at {final}"]
        expected, problems = _digest(final), []
        run_name = json.loads((final / "model.json").read_text())["run"]
        for name in self.names:
            if self.clients[name].poll() is not None or name in self.frozen:
                continue
            package = self.folder / name / "models" / run_name / f"round-{self.rounds:06d}"
            if not package.is_dir():
                problems.append(f"{name} (up at the end) holds no final package at {package}")
            elif _digest(package) != expected:
                problems.append(f"{name}'s final package differs from the server's")
        return problems


def _time_lost(records: list[FaultRecord], done_at: dict[int, float]) -> float:
    """Fill each record's ``lost_s``; the median round's wall time (round 1, the start, left out)."""
    walls = {r: done_at[r] - done_at[r - 1] for r in done_at if r >= 1 and r - 1 in done_at}
    struck: dict[int, list[FaultRecord]] = {}
    for record in records:
        if record.injected_s is None:
            continue
        end = record.ended_s if record.ended_s is not None else record.injected_s
        for r, wall in walls.items():
            if done_at[r] - wall <= end and done_at[r] >= record.injected_s:
                struck.setdefault(r, []).append(record)
    median = statistics.median(w for r, w in walls.items() if r > 1 and r not in struck) if walls else 0.0
    for r, hit in struck.items():
        for record in hit:
            record.lost_s += max(0.0, walls[r] - median)
    return median


def run_soak(factories: int = MIN_FACTORIES, rounds: int = 30, *, seed: int = 0, round_timeout: float = 30.0,
             folder: Path | None = None, log: Log = lambda message: None) -> SoakResult:
    """Run the soak (in ``folder``, default a temporary one) and check what it did."""
    if round_timeout <= DETECTION_S:
        raise ValueError(f"the round timeout must exceed the {DETECTION_S} s failure detection, got {round_timeout}")
    with ExitStack() as stack:
        root = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedmeta-soak-")))
        soak = Soak(root, factories, rounds, seed, round_timeout, log)
        networked = [fault.factory for fault in soak.schedule if fault.kind in NETWORKED]
        for index, name in enumerate(networked):
            soak.networks[str(name)] = stack.enter_context(FactoryNetwork(f"fedmeta-soak-{os.getpid()}-{index}", index))
        make_certificates(root, soak.names, ["127.0.0.1", *(n.host_address for n in soak.networks.values())])
        log(f"{factories} factories, {rounds} rounds, faults: " + ", ".join(
            f"{f.kind} r{f.round}{'' if f.factory is None else ' ' + f.factory}" for f in soak.schedule))
        try:
            code = soak.run_to_end()
        finally:
            leftovers = soak.stop()
        round_seconds = [float(json.loads(line)["seconds"]) for line in soak.run.metrics_path.read_text().splitlines()]
        median = _time_lost(soak.records, soak.done_at)
        bound = DETECTION_S + WORK_ALLOWANCE * statistics.median(round_seconds) + WORK_SLACK_S
        problems = soak.check(code, leftovers, round_seconds, bound)
        for record in soak.records:
            if record.fault.kind == "kill-uploading":
                record.note = soak.upload_note()
        log(f"median round {median:.1f} s (wall)")
        return SoakResult(factories, rounds, seed, round_timeout, soak.records, round_seconds, bound,
                          soak.now(), problems)


def render(result: SoakResult, console: Console) -> None:
    """The faults and what each cost, then the verdict."""
    title = (f"{result.factories} factories, {result.rounds} rounds, seed {result.seed}, round timeout "
             f"{result.round_timeout_s:.0f} s; {result.wall_s:.0f} s in all")
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for column in ("fault", "on", "round", "at s", "back after s", "time lost s", "note"):
        table.add_column(column, justify="left" if column in ("fault", "on", "note") else "right",
                         no_wrap=column != "note")
    for record in result.faults:
        back = "-" if record.recovered_s is None or record.injected_s is None else \
            f"{record.recovered_s - record.injected_s:.1f}"
        at = "-" if record.injected_s is None else f"{record.injected_s:.1f}"
        table.add_row(record.fault.kind, record.fault.factory or "server", str(record.struck_round or "-"), at, back,
                      f"{record.lost_s:.1f}", record.note)
    console.print(table)
    longest = max(result.round_seconds, default=0.0)
    console.print(f"faults injected: {sum(r.injected_s is not None for r in result.faults)} of {len(result.faults)}; "
                  f"rounds completed: {len(result.round_seconds)} of {result.rounds}; longest round {longest:.1f} s "
                  f"(bound {result.bound_s:.1f} s: {DETECTION_S} s failure detection + the round's own work)")
    for problem in result.problems:
        console.print(f"[red]FAIL[/red] {problem}")
    if result.passed:
        console.print("PASS: every check held")
