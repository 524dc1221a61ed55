"""One factory as a real process: a Flower SuperNode that serves this factory's table.

`plan_factory` checks everything a factory can get wrong before it connects (the
server address, the schema, the table against it, the key and the CA certificate),
`run_factory` probes the server's TLS certificate, starts its SuperNode (`client.node.supernode`) in its
own process group and translates its log into plain events. The data and schema paths
go only into the SuperNode's node config: the client app reads them on this machine and
they never reach the server. The SuperNode retries while the server is down (forever,
or for ``max_wait_s`` seconds) and keeps serving runs until it is stopped.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fedmeta.client.node import supernode_timings
from fedmeta.client.node.supernode import REFUSED
from fedmeta.client.node.warm_worker import answer_dropped_task
from fedmeta.client.rounds.joined_rounds import LEDGER_FILE, LEDGER_KEY, read_ledger
from fedmeta.client.rounds.node_keys import MODEL_DIR_KEY
from fedmeta.client.rounds.policy import POLICY_KEY, load_policy
from fedmeta.common import (
    DEFAULT_RUNTIME_PORT,
    ROLES,
    ChildProcess,
    Report,
    check_choice,
    flower_env,
    load_certificate,
    load_factory_private_key,
    port_in_use,
)
from fedmeta.common.data.connector import DataSchema, validate_table

__all__ = [
    "FactoryError",
    "FactoryPlan",
    "WarmWorkerSupervisor",
    "node_config",
    "parse_server_address",
    "plan_factory",
    "probe_server",
    "run_factory",
    "superexec_command",
    "supernode_command",
    "warm_worker_command",
]

PROBE_TIMEOUT_S = 5.0



class FactoryError(RuntimeError):
    """The factory cannot start or was stopped by the server; the message says what to fix."""


def parse_server_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) -> ``(host, port)``."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", address.strip())
    if match is None:
        raise FactoryError(f"--server must be HOST:PORT, such as server.plant.example:8000, got {address!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise FactoryError(f"--server port must be between 1 and 65535, got {port}")
    return host, port


@dataclass(frozen=True)
class FactoryPlan:
    """A checked factory: where the server is, what it serves, with which credentials."""

    server: str
    data: Path
    schema: Path
    factory: str
    role: str
    state: Path
    key: Path | None  # None: no node authentication (only with --insecure)
    ca: Path | None  # None: no TLS
    runtime_port: int = DEFAULT_RUNTIME_PORT
    device: str = "auto"
    max_wait_s: float | None = None
    isolation: str = "subprocess"
    tuned_supernode: bool = True  # the project's SuperNode timings (`client.node.supernode_timings`); False: Flower's
    model_dir: Path | None = None  # None: <state>/models
    policy: Path | None = None  # the factory's own rules (`client.rounds.policy`); None: none
    table_warnings: tuple[str, ...] = ()  # what the table check found but reads anyway (columns not named)

    @property
    def models(self) -> Path:
        """Where the model packages the federation delivers are kept (per run and round)."""
        return self.model_dir or self.state / "models"

    @property
    def log(self) -> Path:
        return self.state / "supernode.log"

    @property
    def ledger(self) -> Path:
        """Where the factory counts the rounds it joined, which its policy limits (`client.rounds.joined_rounds`)."""
        return self.state / LEDGER_FILE

    @property
    def worker_record(self) -> Path:
        """Where the warm worker keeps the claim of the task it is running (`client.node.warm_worker`)."""
        return self.state / "warm-worker-task.json"


def plan_factory(
    *,
    server: str,
    data: Path,
    schema: Path,
    key: Path | None,
    ca: Path | None,
    role: str = "train",
    factory: str | None = None,
    state: Path | None = None,
    runtime_port: int = DEFAULT_RUNTIME_PORT,
    device: str = "auto",
    max_wait_s: float | None = None,
    isolation: str = "subprocess",
    tuned_supernode: bool = True,
    model_dir: Path | None = None,
    policy: Path | None = None,
) -> FactoryPlan:
    """Check the address, the schema, the table against it and (with TLS) the key and CA.

    Raises `FactoryError`, `common.data.connector.SchemaError` / `DataValidationError` (every
    problem of the table listed) or `common.security.credentials.CredentialError`.
    """
    parse_server_address(server)
    check_choice("role", role, ROLES)
    check_choice("isolation", isolation, ("subprocess", "process"))
    if max_wait_s is not None and max_wait_s <= 0:
        raise FactoryError(f"--max-wait-time must be positive, got {max_wait_s}")
    checked = validate_table(data, DataSchema.from_json(schema))
    checked.raise_for_problems()
    if policy is not None:
        load_policy(str(policy))  # a bad policy stops the factory here, not at its first round
    name = factory or data.stem
    state = (state or Path(".fedmeta") / f"factory-{name}").resolve()
    read_ledger(state / LEDGER_FILE)  # so does a damaged ledger of the rounds it joined
    if ca is not None:
        load_certificate(ca, "CA certificate")
    if key is not None:
        if ca is None:
            raise FactoryError("node authentication needs TLS: a factory key cannot be used with --insecure")
        load_factory_private_key(key)
    return FactoryPlan(
        server=server.strip(),
        data=data.resolve(),
        schema=schema.resolve(),
        factory=name,
        role=role,
        state=state,
        key=None if key is None else key.resolve(),
        ca=None if ca is None else ca.resolve(),
        runtime_port=runtime_port,
        device=device,
        max_wait_s=max_wait_s,
        isolation=isolation,
        tuned_supernode=tuned_supernode,
        model_dir=None if model_dir is None else model_dir.resolve(),
        policy=None if policy is None else policy.resolve(),
        table_warnings=tuple(checked.warnings),
    )


def _toml_string(value: str) -> str:
    """A string for ``--node-config`` (Flower splits on spaces outside quotes, then reads TOML)."""
    if "'" not in value:
        return f"'{value}'"  # a TOML literal string: no escapes
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    raise FactoryError(f"{value!r} holds both kinds of quotes; rename it to pass it to the SuperNode")


def node_config(plan: FactoryPlan) -> str:
    """What the client app reads on this machine: the table, its schema, the role, the factory's name,
    where to train, where to keep the delivered model packages and its policy file."""
    values = {
        "data-path": str(plan.data),
        "schema": str(plan.schema),
        "role": plan.role,
        "factory": plan.factory,
        "device": plan.device,
        MODEL_DIR_KEY: str(plan.models),
    }
    if plan.policy is not None:
        values[POLICY_KEY] = str(plan.policy)
        values[LEDGER_KEY] = str(plan.ledger)
    return " ".join(f"{key}={_toml_string(value)}" for key, value in values.items())


def supernode_command(plan: FactoryPlan) -> list[str]:
    """Flower's SuperNode for this factory (TLS with the CA, node authentication with the key), running only
    the federation's app (`client.node.supernode`), by default with the project's shorter polls and heartbeat."""
    command = [sys.executable, "-m", "fedmeta.client.node.supernode"]
    command += [] if plan.tuned_supernode else ["--flower-timings"]
    command += ["--superlink", plan.server, "--node-config", node_config(plan)]
    command += ["--port", str(plan.runtime_port), "--isolation", plan.isolation]
    if plan.ca is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(plan.ca)]
    if plan.key is not None:
        command += ["--auth-supernode-private-key", str(plan.key)]
    if plan.max_wait_s is not None:
        command += ["--max-wait-time", str(plan.max_wait_s)]
    return command


def superexec_command(plan: FactoryPlan) -> list[str]:
    """With ``isolation="process"`` and Flower's SuperNode: the long-running SuperExec that starts this node's
    app processes."""
    return ["flower-superexec", "--insecure", "--runtime-api-address", f"127.0.0.1:{plan.runtime_port}"]


def warm_worker_command(plan: FactoryPlan) -> list[str]:
    """With ``isolation="process"`` and the project's SuperNode: the worker that runs every app task in itself."""
    return [sys.executable, "-m", "fedmeta.client.node.warm_worker", "--runtime-api-address",
            f"127.0.0.1:{plan.runtime_port}", "--record", str(plan.worker_record)]


class WarmWorkerSupervisor:
    """Keeps the warm worker (`client.node.warm_worker`) running beside the SuperNode: when it dies, the task it
    dropped is answered as failed and a new one starts, after a pause that doubles (up to a minute) while
    workers die within `STEADY_S` of starting. Its own thread starts the workers and outlives them (a child
    is sent SIGTERM when the thread that started it ends)."""

    STEADY_S = 30.0
    FIRST_PAUSE_S = 0.5
    # A worker that ends with the whole factory (its process group signalled by Ctrl-C or a service stop) may end a
    # moment before `fedmeta client` begins to stop (`stop_restarting`): this long a wait tells the two apart, so
    # a stop is not reported as a crash with a new worker started.
    STOP_GRACE_S = 1.0

    def __init__(self, plan: FactoryPlan, env: dict[str, str], report: Report) -> None:
        self.plan, self.env, self.report = plan, env, report
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._worker: ChildProcess | None = None
        self._thread = threading.Thread(target=self._supervise, name="warm worker supervisor", daemon=True)

    def __enter__(self) -> WarmWorkerSupervisor:
        self._thread.start()
        return self

    def stop_restarting(self) -> None:
        """From now on a worker that ends is the factory stopping, not a crash: no new one starts."""
        self._stopping.set()

    def __exit__(self, *exc: object) -> None:
        self.stop_restarting()
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.stop()
        self._thread.join()

    def _start(self) -> ChildProcess | None:
        with self._lock:  # never a new worker once stopping: __exit__ would not know of it
            if self._stopping.is_set():
                return None
            self._worker = ChildProcess("warm ClientApp worker", warm_worker_command(self.plan),
                                        log=self.plan.state / "worker.log", env=self.env).start()
            return self._worker

    def _supervise(self) -> None:
        pause = self.FIRST_PAUSE_S
        while (worker := self._start()) is not None:
            started = time.monotonic()
            code = worker.wait()
            if self._stopping.wait(self.STOP_GRACE_S):
                return
            reason = f"the warm ClientApp worker stopped (exit code {code}) while working on this message"
            try:
                answered = answer_dropped_task(self.plan.worker_record, f"127.0.0.1:{self.plan.runtime_port}", reason)
            except Exception as error:  # reported; the node must keep a worker regardless
                self.report(f"could not answer the task the warm worker dropped: {error}")
                answered = None
            dropped = f"; the {answered.message_type} message it was working on was answered as failed" \
                if answered else ""
            self.report(f"the warm ClientApp worker stopped (exit code {code}){dropped}; starting a new one "
                        f"(its log: {worker.log})")
            pause = self.FIRST_PAUSE_S if time.monotonic() - started > self.STEADY_S else min(2 * pause, 60.0)
            self._stopping.wait(pause)


def probe_server(plan: FactoryPlan) -> bool:
    """TLS handshake with the server: False if it cannot be reached now; `FactoryError` if its
    certificate is not trusted by the CA (that never fixes itself, so retrying would hide it)."""
    host, port = parse_server_address(plan.server)
    try:
        raw = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    except OSError:
        return False
    with raw:
        if plan.ca is None:
            return True
        context = ssl.create_default_context(cafile=str(plan.ca))
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return True
        except ssl.SSLCertVerificationError as error:
            raise FactoryError(
                f"the server {plan.server} presented a certificate that --ca {plan.ca} does not trust "
                f"({error.verify_message}); use the CA certificate of this federation"
            ) from None
        except (ssl.SSLError, OSError) as error:
            raise FactoryError(f"TLS handshake with {plan.server} failed ({error}); is it a FedMeta server?") from None


# SuperNode log lines -> what they mean for this factory.
_CONNECTED = re.compile(r"SuperNode ID: (\d+)")
_WORK = re.compile(r"(Receiving|Sending): ([\w.]+) message")
_RETRY = re.compile(r"Connection attempt failed, retrying in ([\d.]+) seconds")
_REFUSED = "Failed to activate SuperNode"
_FOREIGN_APP = re.compile(rf"{REFUSED} (\d+): (.*)")
_TLS = "SSL/TLS handshake error"


@dataclass
class _Events:
    """What the SuperNode's log said, for the message when it stops."""

    refused: bool = False
    tls: bool = False
    retrying: bool = False


def _interpret(line: str, plan: FactoryPlan, events: _Events, report: Report) -> None:
    if match := _CONNECTED.search(line):
        events.retrying = False
        report(f"factory {plan.factory} connected to {plan.server} as node {match.group(1)} ({plan.role})")
    elif match := _WORK.search(line):
        verb = "working on" if match.group(1) == "Receiving" else "sent the reply to"
        report(f"{verb} a {match.group(2)} message")
    elif match := _RETRY.search(line):
        if not events.retrying:
            report(f"server {plan.server} unreachable; retrying (next try in {float(match.group(1)):.0f} s)")
        events.retrying = True
    elif match := _FOREIGN_APP.search(line):
        report(f"{REFUSED} {match.group(1)}: {match.group(2)}")
    elif _REFUSED in line:
        events.refused = True
    elif _TLS in line:
        events.tls = True


def _failure(code: int, plan: FactoryPlan, events: _Events) -> FactoryError:
    if events.refused:
        return FactoryError(
            f"the server {plan.server} refused factory {plan.factory}: its key {plan.key} is not registered "
            "there (the server registers the *.pub files in its --factory-keys folder), or another process with "
            "this key is connected to it"
        )
    if events.tls:
        return FactoryError(f"TLS handshake with {plan.server} failed: check --ca {plan.ca} and the server address")
    if events.retrying and plan.max_wait_s is not None:
        return FactoryError(f"the server {plan.server} stayed unreachable for {plan.max_wait_s:g} s (--max-wait-time)")
    return FactoryError(f"the SuperNode stopped with exit code {code}; its log: {plan.log}")


ACTIVATION_RETRY_S = 2.0


def activation_patience_s(plan: FactoryPlan) -> float:
    """How long a refused activation is tried again. The server refuses a key whose node it still counts as
    connected, and it counts a node connected until it misses its heartbeats: a factory restarted right after a
    crash is refused until then."""
    interval = (supernode_timings.HEARTBEAT_INTERVAL_S if plan.tuned_supernode
                else supernode_timings.FLOWER_HEARTBEAT_INTERVAL_S)
    return supernode_timings.HEARTBEAT_PATIENCE * interval + 2 * ACTIVATION_RETRY_S


def _serve(plan: FactoryPlan, env: dict[str, str], report: Report) -> tuple[int, _Events]:
    """Run the SuperNode (and the process beside it) until it ends; its exit code and what its log said."""
    events = _Events()
    with ExitStack() as processes, plan.log.open("a", encoding="utf-8") as log:
        supervisor = None
        if plan.isolation == "process" and plan.tuned_supernode:
            supervisor = processes.enter_context(WarmWorkerSupervisor(plan, env, report))
        elif plan.isolation == "process":
            superexec = ChildProcess("SuperExec", superexec_command(plan), log=plan.state / "superexec.log", env=env)
            processes.enter_context(superexec)
        node = processes.enter_context(ChildProcess("SuperNode", supernode_command(plan), env=env))
        if supervisor is not None:  # the first thing a stop does, before the SuperNode's own shutdown
            processes.callback(supervisor.stop_restarting)
        for line in node.lines():
            log.write(f"{datetime.now().isoformat(timespec='milliseconds')} {line}\n")  # Flower's lines have no time
            log.flush()
            _interpret(line, plan, events, report)
        return node.wait(), events


def run_factory(plan: FactoryPlan, report: Report) -> None:
    """Serve runs until stopped (Ctrl-C / SIGTERM stop the SuperNode and its app processes).

    A SuperNode never ends by itself while all is well, so it ending raises `FactoryError`
    saying why: key refused (after `activation_patience_s` of tries), TLS failure, server unreachable for
    longer than ``max_wait_s``.
    """
    if port_in_use("127.0.0.1", plan.runtime_port):
        raise FactoryError(
            f"port {plan.runtime_port} (this node's local app API) is in use, by another factory on this machine? "
            "choose --runtime-port"
        )
    if not probe_server(plan):
        report(f"server {plan.server} is not reachable yet; the factory keeps trying")
    env = flower_env(plan.state / "flwr") | (supernode_timings.environment() if plan.tuned_supernode else {})
    plan.state.mkdir(parents=True, exist_ok=True)
    patience, refused_since = activation_patience_s(plan), None
    while True:
        code, events = _serve(plan, env, report)
        if not events.refused:
            raise _failure(code, plan, events)
        if refused_since is None:
            refused_since = time.monotonic()
            report(f"the server {plan.server} refused to activate factory {plan.factory}: its key is not registered "
                   "there, or the server still counts an earlier process of this factory as connected (until it "
                   f"misses its heartbeats); trying again for {patience:.0f} s")
        elif time.monotonic() - refused_since >= patience:
            raise _failure(code, plan, events)
        time.sleep(ACTIVATION_RETRY_S)
