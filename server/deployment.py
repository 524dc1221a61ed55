"""The aggregation server as real processes: a SuperLink, the factories' keys, one run.

The SuperLink (`server.superlink`) serves the Fleet API alone on the public address factories
dial, and its Control and runtime APIs on a control address that stays on loopback unless the
operator exposes it by name. `serve` first starts it on private loopback ports to register each
factory's public key (`server.key_registration`, all from one process) and to stop runs a killed earlier start
left unfinished, then on the real addresses (TLS and node authentication unless told
otherwise), submits the run with ``flwr run --stream`` over the control address and reports
every round from the run folder's ``metrics.jsonl`` as it is written. When the run ends, or on
Ctrl-C / SIGTERM, the SuperLink and everything it started are stopped (`common.runtime.processes`).

Everything Flower writes goes under the state folder: ``flwr/`` is the private
``FLWR_HOME`` (the CLI's connection file; ``~/.flwr`` is never touched), ``superlink.db``
the SuperLink's database (registered keys survive a restart), ``superlink.log`` its log,
``run.log`` the run's streamed log, ``app/`` the staged app (`server.bundle`) and, by
default, ``run/`` the run folder.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import click
from flwr.common.config import parse_config_args

from fedmeta.common import (
    DEFAULT_CONTROL_PORT,
    ChildProcess,
    ProcessError,
    Report,
    check_run_config,
    check_server_certificate,
    flower_env,
    free_port,
    load_factory_public_key,
    port_in_use,
    source_from_config,
    wait_until_listening,
)
from fedmeta.server.bundle import stage_app
from fedmeta.server.checkpoint import CheckpointError, RunDirectory, refuse_started_runs
from fedmeta.server.key_registration import ALREADY_REGISTERED
from fedmeta.server.settings import ServerSettings

__all__ = [
    "CONNECTION",
    "DeploymentError",
    "ServerPlan",
    "build_run_config",
    "is_loopback",
    "local_host",
    "plan_server",
    "register_factories",
    "run_status",
    "serve",
    "stop_stale_runs",
    "superlink_command",
]

CONNECTION = "fedmeta"  # the SuperLink connection's name in the private FLWR_HOME
START_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 120.0
REGISTRATION_S_PER_KEY = 1.0  # far above what one key takes over the one connection
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")



class DeploymentError(RuntimeError):
    """The server cannot start or its run failed; the message says what to fix."""


def local_host(host: str) -> str:
    """The address this machine's own processes reach a server bound to ``host`` at."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_run_config(text: str | None, *, state: Path, schema: Path | None, resume: bool) -> dict[str, object]:
    """The run's config: ``--run-config`` (parsed as `flwr run` parses it) plus the server's own keys.

    Paths become absolute (the ServerApp runs in another process). Bad values, an unreadable
    schema, or a run folder that already holds checkpoints without ``resume`` are errors now,
    before anything starts.
    """
    try:
        config: dict[str, object] = parse_config_args([text]) if text else {}
    except (click.ClickException, OSError, ValueError) as error:
        message = error.format_message() if isinstance(error, click.ClickException) else str(error)
        raise DeploymentError(f"--run-config: {message}") from None
    config["run-dir"] = str(Path(str(config.get("run-dir", state / "run"))).resolve())
    if schema is not None:
        config["schema"] = str(schema)
    if config.get("schema"):
        config["schema"] = str(Path(str(config["schema"])).resolve())
    if resume:
        config["resume"] = True
    try:
        check_run_config(config, app=True)
        settings = ServerSettings.from_run_config(config)
        source_from_config(config)
    except (TypeError, ValueError) as error:
        raise DeploymentError(f"run config: {error}") from None
    if not settings.resume:
        try:
            refuse_started_runs(Path(settings.run_dir), (settings.round.algorithm, *settings.compare_with))
        except CheckpointError as error:
            raise DeploymentError(f"run folder {error}") from None
    return config


@dataclass(frozen=True)
class ServerPlan:
    """What `serve` starts, checked: state folder, TLS files, factory keys, address, run config."""

    state: Path
    host: str
    port: int
    run_config: Mapping[str, object]
    certs: Path | None  # None: no TLS (--insecure)
    factory_keys: tuple[Path, ...] = ()  # public keys to register; empty without node authentication
    node_auth: bool = True
    control_host: str = "127.0.0.1"  # the Control and runtime APIs (`server.superlink`)
    control_port: int = DEFAULT_CONTROL_PORT

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr"

    @property
    def log(self) -> Path:
        return self.state / "superlink.log"

    @property
    def local_address(self) -> str:
        """Where this machine's processes reach the Control and runtime APIs."""
        return _address(local_host(self.control_host), self.control_port)

    @property
    def run_dir(self) -> Path:
        return Path(str(self.run_config["run-dir"]))


def plan_server(
    *,
    state: Path,
    certs: Path | None,
    factory_keys: Path | None,
    host: str,
    port: int,
    run_config: Mapping[str, object],
    node_auth: bool = True,
    control_host: str = "127.0.0.1",
    control_port: int = DEFAULT_CONTROL_PORT,
    expose_control_api: bool = False,
) -> ServerPlan:
    """Check the addresses, TLS files and factory keys; ``certs=None`` runs without TLS (and so without node
    auth). A control address other machines can reach is refused unless ``expose_control_api``."""
    for flag, number in (("--port", port), ("--control-port", control_port)):
        if not 0 < number < 65536:
            raise DeploymentError(f"{flag} must be between 1 and 65535, got {number}")
    if control_port == port:
        raise DeploymentError(f"--control-port must differ from --port ({port}): factories must not reach "
                              "the Control API")
    if not is_loopback(control_host) and not expose_control_api:
        raise DeploymentError(
            f"--control-host {control_host} lets other machines reach the Control API, which lists, stops and "
            "submits runs with no authentication of its own (open-source Flower has none): keep it on 127.0.0.1 "
            "and administer over SSH (ssh -L), or pass --expose-control-api to accept that"
        )
    if certs is None and node_auth:
        raise DeploymentError("node authentication needs TLS: drop --insecure, or add --no-node-auth")
    keys: tuple[Path, ...] = ()
    if certs is not None:
        certs = certs.resolve()
        check_server_certificate(certs / "ca.crt", certs / "server.crt", certs / "server.key",
                                 local_host(control_host))
    if node_auth:
        if factory_keys is None:
            raise DeploymentError("node authentication needs --factory-keys: a folder of the factories' *.pub files")
        if not factory_keys.is_dir():
            raise DeploymentError(f"--factory-keys {factory_keys} is not a folder")
        keys = tuple(sorted(factory_keys.resolve().glob("*.pub")))
        if not keys:
            raise DeploymentError(
                f"--factory-keys {factory_keys} holds no *.pub file; `fedmeta certs --factory NAME` writes them"
            )
        for key in keys:
            load_factory_public_key(key)
    return ServerPlan(state.resolve(), host, port, dict(run_config), certs, keys, node_auth, control_host, control_port)


def superlink_command(plan: ServerPlan) -> list[str]:
    """The SuperLink (`server.superlink`: the Fleet API alone on the public address) with TLS files, node
    authentication and a database in the state folder."""
    command = [sys.executable, "-m", "fedmeta.server.superlink", "--fleet-host", plan.host, "--fleet-port",
               str(plan.port), "--host", plan.control_host, "--port", str(plan.control_port)]
    command += ["--database", str(plan.state / "superlink.db"), "--disable-runtime-dependency-installation"]
    if plan.certs is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(plan.certs / "ca.crt")]
        command += ["--ssl-certfile", str(plan.certs / "server.crt"), "--ssl-keyfile", str(plan.certs / "server.key")]
    if plan.node_auth:
        command.append("--enable-supernode-auth")
    return command


def _write_connection(plan: ServerPlan) -> None:
    """The ``flwr`` CLI's connection to this SuperLink, in the private FLWR_HOME."""
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
    lines.append(f"address = {json.dumps(plan.local_address)}")
    if plan.certs is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(plan.certs / 'ca.crt'))}")
    plan.flwr_home.mkdir(parents=True, exist_ok=True)
    (plan.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _flwr_json(plan: ServerPlan, *args: str) -> dict[str, object]:
    """Run a ``flwr`` command with ``--format json`` and return its JSON answer."""
    command = ["flwr", *args, "--format", "json"]
    try:
        done = subprocess.run(
            command, env=flower_env(plan.flwr_home), capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"`{' '.join(command)}` did not answer within {CLI_TIMEOUT_S:.0f} s") from None
    try:
        answer = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        output = (done.stdout + done.stderr).strip()
        raise DeploymentError(f"`{' '.join(command)}` failed (exit code {done.returncode}): {output}") from None
    return answer


def register_factories(plan: ServerPlan, keys: Sequence[Path]) -> list[str]:
    """Register the factories' public keys from one process (`server.key_registration`); a key the SuperLink's
    database already holds is fine. What happened to each, for the console."""
    if not keys:
        return []
    command = [sys.executable, "-m", "fedmeta.server.key_registration", CONNECTION, *map(str, keys)]
    timeout = CLI_TIMEOUT_S + REGISTRATION_S_PER_KEY * len(keys)
    try:
        done = subprocess.run(command, env=flower_env(plan.flwr_home), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"registering {len(keys)} factory keys did not finish within {timeout:.0f} s") from None
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or len(outcomes) != len(keys):
        raise DeploymentError(f"cannot register the factory keys (exit code {done.returncode}): "
                              f"{(done.stdout + done.stderr).strip()[-2000:]}")
    said = []
    for outcome in outcomes:
        name = Path(str(outcome["key"])).stem
        if "node-id" in outcome:
            said.append(f"registered factory {name} (node {outcome['node-id']})")
        elif outcome["error"] == ALREADY_REGISTERED:
            said.append(f"factory {name} was registered before")
        else:
            raise DeploymentError(f"cannot register factory key {outcome['key']}: {outcome['error']}")
    return said


def run_status(plan: ServerPlan, run_id: str) -> tuple[str, str]:
    """The run's status (``finished:completed``, ``finished:failed``, ...) and its details."""
    answer = _flwr_json(plan, "ls", CONNECTION, "--run-id", run_id)
    runs = answer.get("runs") or []
    if not answer.get("success") or not runs:
        raise DeploymentError(f"cannot read the status of run {run_id}: {answer}")
    return str(runs[0]["status"]), str(runs[0].get("status-details", ""))


class _MetricsFollower:
    """Reports each new line of the run's ``metrics.jsonl`` files (one per algorithm) as it is written.

    Lines are told apart by content (each holds its round's timing), so a file that a resumed
    run first cuts back to its last checkpoint is followed correctly too.
    """

    def __init__(self, run_dir: Path, rounds: int, report: Report) -> None:
        self._run_dir, self._rounds, self._report = run_dir, rounds, report
        self._seen = {line for _, line in self._lines()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="metrics-follower", daemon=True)

    def _lines(self) -> list[tuple[Path, str]]:
        """Complete lines (a line still being written has no newline yet) of every metrics file."""
        return [
            (path, line)
            for path in sorted(self._run_dir.glob("*/metrics.jsonl"))
            for line in path.read_text(encoding="utf-8").split("\n")[:-1]
        ]

    def _poll(self) -> None:
        for path, line in self._lines():
            if line in self._seen:
                continue
            self._seen.add(line)
            record = json.loads(line)
            loss = record.get("train/query-loss", "-")
            replies = int(float(record.get("train/replies", 0)))
            self._report(
                f"{record.get('algorithm', path.parent.name)} round {record['round']}/{self._rounds}: "
                f"query loss {loss}, {replies} factories, {float(record.get('seconds', 0)):.1f} s"
            )

    def _follow(self) -> None:
        while not self._stop.wait(0.5):
            self._poll()

    def __enter__(self) -> _MetricsFollower:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def _submit(plan: ServerPlan, report: Report) -> str:
    """Submit the staged app and stream its logs until the run ends; the run id."""
    app = stage_app(plan.state / "app", plan.run_config)
    run_id = None
    command = ["flwr", "run", str(app), CONNECTION, "--stream"]
    # Line-buffered: a server killed outright (SIGKILL, power loss) keeps every line it had streamed.
    with ChildProcess("run submission", command, env=flower_env(plan.flwr_home)) as submission, (
        plan.state / "run.log"
    ).open("a", encoding="utf-8", buffering=1) as log:
        for line in submission.lines():
            log.write(line + "\n")
            if run_id is None and (match := _RUN_STARTED.search(line)):
                run_id = match.group(1)
                report(f"run {run_id} started; run folder {plan.run_dir}; its log {log.name}")
            elif line.strip() and run_id is None:
                report(line)
        code = submission.wait()
    if run_id is None:
        raise DeploymentError(f"the SuperLink did not start the run (flwr run exited with code {code})")
    return run_id


def _start_superlink(plan: ServerPlan, name: str) -> ChildProcess:
    _write_connection(plan)
    superlink = ChildProcess(name, superlink_command(plan), log=plan.log, env=flower_env(plan.flwr_home)).start()
    try:
        wait_until_listening(superlink, local_host(plan.control_host), plan.control_port, START_TIMEOUT_S)
        wait_until_listening(superlink, local_host(plan.host), plan.port, START_TIMEOUT_S)
    except BaseException:
        superlink.stop()
        raise
    return superlink


def stop_stale_runs(plan: ServerPlan, report: Report) -> None:
    """Stop runs an earlier start left unfinished in the database (it was stopped or killed
    mid-run): factories would otherwise pick up that run's pending messages first."""
    answer = _flwr_json(plan, "ls", CONNECTION)
    if not answer.get("success"):
        raise DeploymentError(f"cannot list the runs in {plan.state / 'superlink.db'}: {answer}")
    for run in answer.get("runs") or []:
        if not str(run["status"]).startswith("finished"):
            stopped = _flwr_json(plan, "stop", str(run["run-id"]), CONNECTION)
            if not stopped.get("success"):
                raise DeploymentError(f"cannot stop run {run['run-id']} left from an earlier start: {stopped}")
            report(f"stopped run {run['run-id']}, left {run['status']} by an earlier start")


def _prepare(plan: ServerPlan, report: Report) -> None:
    """Register the keys and stop stale runs on a SuperLink listening on a private port first
    (both persist in its database): a factory that connects the moment the real port opens
    never meets a SuperLink that does not know its key yet (it would refuse it for good) or
    that still hands out an old run's messages."""
    loopback = local_host(plan.control_host)
    real = (plan.port, plan.control_port)  # not bound yet: factories already dial the first
    private = replace(plan, host=loopback, port=free_port(loopback, exclude=real), control_host=loopback,
                      control_port=free_port(loopback, exclude=real))
    with _start_superlink(private, "SuperLink (preparing)"):
        for line in register_factories(private, plan.factory_keys):
            report(line)
        stop_stale_runs(private, report)


def serve(plan: ServerPlan, report: Report) -> None:
    """Start the SuperLink, register the factories, run the federation to its end, stop everything.

    Raises `DeploymentError` (or `ProcessError`) naming the problem; a failed run is one too.
    """
    addresses = ((plan.host, plan.port, "--port"), (plan.control_host, plan.control_port, "--control-port"))
    for host, port, flag in addresses:
        if port_in_use(host, port):
            raise DeploymentError(
                f"port {port} on {host or 'all interfaces'} is in use (another server?); choose {flag}"
            )
    plan.state.mkdir(parents=True, exist_ok=True)
    if plan.factory_keys or (plan.state / "superlink.db").exists():
        _prepare(plan, report)
    with _start_superlink(plan, "SuperLink") as superlink:
        secured = ("TLS, node authentication" if plan.node_auth else "TLS") if plan.certs is not None else "NO TLS"
        control = _address(plan.control_host, plan.control_port)
        reach = "this machine only" if is_loopback(plan.control_host) else "EXPOSED, no authentication"
        report(f"SuperLink: Fleet API for factories on {_address(plan.host, plan.port)} ({secured}); Control and "
               f"runtime APIs on {control} ({reach}); log {plan.log}")
        settings = ServerSettings.from_run_config(plan.run_config)
        for algorithm in (settings.round.algorithm, *settings.compare_with):
            latest = RunDirectory(plan.run_dir / algorithm).latest_round()
            if latest is not None:
                report(f"resuming {algorithm} after round {latest} (its last checkpoint)")
        with _MetricsFollower(plan.run_dir, settings.num_rounds, report):
            run_id = _submit(plan, report)
        if superlink.poll() is not None:
            raise ProcessError(f"the SuperLink stopped during the run; its log ends with:\n{superlink.log_tail()}")
        status, details = run_status(plan, run_id)
    if status != "finished:completed":
        raise DeploymentError(f"run {run_id} ended as {status}: {details}; SuperLink log: {plan.log}")
    report(f"run {run_id} completed; results in {plan.run_dir}")
