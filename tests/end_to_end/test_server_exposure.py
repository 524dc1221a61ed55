"""What an outsider, a registered factory and a foreign app can do against a running `fedmeta server`.

One federation on loopback, over TLS with node authentication: plant-a runs Flower's default isolation
(a `flwr-clientapp` process per message), plant-b the warm worker (``--isolation process``). The run
waits for a third factory, and while it waits:

- an outsider holding only ``ca.crt`` tries what the README's threat model rules out: ``flwr ls``,
  ``flwr stop`` of the federation's run and ``flwr run`` of an app of its own on the public port;
- requests for the Control and runtime API routes reach the public port directly, without credentials
  and signed with a registered factory's key as its SuperNode signs them;
- the server's own Control API (on loopback: an operator's mistake, or someone on the server host) submits
  a run of an app that calls itself fedmeta-factory 0.1.0 but whose ClientApp code writes a marker file
  when it is imported: every factory refuses it by name and the marker never appears.

Then plant-c connects and the federation's run completes every round with all three factories.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from flwr.common.constant import TIMESTAMP_HEADER
from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
from flwr.supercore.date import now
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

from fedmeta.common import ChildProcess, flower_env, free_port, stop_all
from fedmeta.server import stage_app
from fedmeta.server.superlink import NOT_SERVED
from tests.support.deployment import ENV, FEATURES, FEDMETA, metrics, wait_for, write_table

ROUNDS = 2
WORK = (f"algorithm='fomaml' local-steps=1 inner-steps=1 meta-batch-size=2 shots=5 query-size=10 min-train-nodes=3 "
        f"wait-for-factories=3 timeout=120 device='cpu' num-server-rounds={ROUNDS}")
ISOLATION = {"plant-a": "subprocess", "plant-b": "process", "plant-c": "process"}
# Routes of the Control and runtime APIs (flwr 1.42), and the API's own pages.
NOT_FLEET = ("/v1/control/list-runs", "/v1/control/stop-run", "/v1/control/start-run", "/v1/control/register-node",
             "/v1/runtime/acquire-task", "/v1/runtime/get-nodes", "/v1/runtime/pull-messages",
             "/v1/runtime/push-messages", "/docs", "/openapi.json", "/v1/fleet/../control/list-runs")
_RUN_STARTED = re.compile(r"run (\d+) started")


@dataclass
class Exposure:
    root: Path
    run_id: str = ""
    outsider: dict[str, dict] = field(default_factory=dict)  # flwr command -> its JSON answer
    anonymous: dict[str, tuple[int, str]] = field(default_factory=dict)  # route -> status, body
    signed: dict[str, tuple[int, str]] = field(default_factory=dict)  # same, signed with plant-a's key
    foreign_submitted: dict = field(default_factory=dict)
    foreign_stopped: dict = field(default_factory=dict)
    factory_output: dict[str, str] = field(default_factory=dict)
    server_code: int | None = None
    server_output: str = ""
    leftovers: list[int] = field(default_factory=list)

    @property
    def marker(self) -> Path:
        return self.root / "foreign-code-ran"


def _flwr(home: Path, *args: str, cwd: Path | None = None) -> dict:
    """A `flwr` command's JSON answer (``--format json``)."""
    done = subprocess.run(["flwr", *args, "--format", "json"], env=flower_env(home), capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    return json.loads(done.stdout[done.stdout.index("{"):])


def _signed_headers(key: Path) -> dict[str, str]:
    """The headers a SuperNode signs its Fleet API requests with (`flwr/supernode/node_auth_http_interceptor.py`)."""
    private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
    timestamp = now().isoformat()
    return {FLEET_HTTP_PUBLIC_KEY_HEADER: b64encode(public_key_to_bytes(private.public_key())).decode(),
            TIMESTAMP_HEADER: timestamp,
            FLEET_HTTP_SIGNATURE_HEADER: b64encode(sign_message(private, timestamp.encode("ascii"))).decode()}


def _disguised_app(folder: Path, run_dir: Path, schema: Path, marker: Path) -> Path:
    """fedmeta-factory as the server stages it, but its ClientApp module touches ``marker`` when imported."""
    app = stage_app(folder, {"run-dir": str(run_dir), "schema": str(schema), "algorithm": "fomaml",
                             "num-server-rounds": 1, "min-train-nodes": 1, "timeout": 30.0, "device": "cpu"})
    module = app / "fedmeta" / "client" / "app.py"
    module.write_text(module.read_text() + f"\nfrom pathlib import Path as _Path\n_Path({str(marker)!r}).touch()\n")
    return app


@pytest.fixture(scope="module")
def exposure(tmp_path_factory) -> Iterator[Exposure]:
    root = tmp_path_factory.mktemp("exposure")
    result = Exposure(root)
    certs, schema, state = root / "certs", root / "schema.json", root / "server"
    subprocess.run([FEDMETA, "certs", "--out", str(certs), "--host", "127.0.0.1",
                    *(f"--factory={name}" for name in ISOLATION)], check=True, timeout=60)
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    port = free_port()
    outsider = root / "outsider"
    outsider.mkdir()
    (outsider / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "127.0.0.1:{port}"\n'
                                          f'root-certificates = "{certs / "ca.crt"}"\n')
    foreign = _disguised_app(root / "foreign-app", root / "foreign-run", schema, result.marker)

    def client(name: str) -> ChildProcess:
        write_table(root / f"{name}.csv", gain=1.0 + 0.2 * len(name), seed=len(name))
        command = [FEDMETA, "client", "--server", f"127.0.0.1:{port}", "--data", str(root / f"{name}.csv")]
        command += ["--schema", str(schema), "--key", str(certs / name), "--ca", str(certs / "ca.crt")]
        command += ["--device", "cpu", "--runtime-port", str(free_port()), "--state", str(root / f"state-{name}")]
        command += ["--isolation", ISOLATION[name]]
        return ChildProcess(f"factory {name}", command, log=root / f"{name}.log", env=ENV)

    server = ChildProcess("server", [FEDMETA, "server", "--certs", str(certs), "--state", str(state), "--port",
                                     str(port), "--control-port", str(free_port()), "--schema", str(schema),
                                     "--run-config", WORK], log=root / "server.log", env=ENV)
    clients = {name: client(name) for name in ISOLATION}
    logs = [root / "server.log", *(root / f"{name}.log" for name in ISOLATION)]
    started: list[ChildProcess] = []
    try:
        for process in (server, clients["plant-a"], clients["plant-b"]):
            started.append(process.start())
        found = wait_for(lambda: _RUN_STARTED.search(server.log.read_text()), 90, "the run to start", logs)
        result.run_id = found.group(1)
        for name in ("plant-a", "plant-b"):
            wait_for(lambda name=name: "connected to" in (root / f"{name}.log").read_text(), 90, f"{name}", logs)

        result.outsider["ls"] = _flwr(outsider, "ls")
        result.outsider["stop"] = _flwr(outsider, "stop", result.run_id)
        result.outsider["run"] = _flwr(outsider, "run", str(foreign), "x")
        with httpx.Client(verify=ssl.create_default_context(cafile=certs / "ca.crt"), timeout=30) as http:
            for route in NOT_FLEET:
                answer = http.post(f"https://127.0.0.1:{port}{route}", content=b"")
                result.anonymous[route] = (answer.status_code, answer.text)
                answer = http.post(f"https://127.0.0.1:{port}{route}", content=b"",
                                   headers=_signed_headers(certs / "plant-a"))
                result.signed[route] = (answer.status_code, answer.text)

        result.foreign_submitted = _flwr(state / "flwr", "run", str(foreign), "fedmeta")
        foreign_run = result.foreign_submitted["run-id"]
        for name in ("plant-a", "plant-b"):
            wait_for(lambda name=name: f"refused run {foreign_run}" in (root / f"{name}.log").read_text(), 60,
                     f"{name} to refuse the foreign run", logs)
        result.foreign_stopped = _flwr(state / "flwr", "stop", str(foreign_run), "fedmeta")

        started.append(clients["plant-c"].start())
        result.server_code = server.wait(240)
    finally:
        result.leftovers = stop_all(started)
        result.server_output = (root / "server.log").read_text()
        result.factory_output = {name: (root / f"{name}.log").read_text() for name in ISOLATION
                                 if (root / f"{name}.log").exists()}
    yield result


def test_an_outsider_with_the_ca_certificate_cannot_list_stop_or_submit_runs(exposure):
    for command in ("ls", "stop", "run"):
        answer = exposure.outsider[command]
        assert answer["success"] is False, (command, answer)
        assert "404 Not Found" in answer["error-message"], (command, answer)


def test_the_public_port_answers_no_route_but_the_fleet_apis_with_or_without_a_factory_key(exposure):
    for answers in (exposure.anonymous, exposure.signed):
        for route in NOT_FLEET:
            assert answers[route] == (404, NOT_SERVED), route


def test_factories_refuse_a_run_whose_app_is_not_the_one_they_installed_with_either_isolation(exposure):
    assert exposure.foreign_submitted["success"] is True  # the server's own Control API accepted it
    foreign_run = exposure.foreign_submitted["run-id"]
    for name in ("plant-a", "plant-b"):  # subprocess and process isolation
        output = " ".join(exposure.factory_output[name].split())  # the console wraps long lines
        assert (f"refused run {foreign_run}: its app is not the one installed here: its fedmeta/client/app.py "
                "differs from the installed fedmeta-factory") in output, output
    assert not exposure.marker.exists()  # no factory imported the foreign ClientApp
    assert exposure.foreign_stopped["success"] is True


def test_the_federations_run_completes_every_round_with_every_factory(exposure):
    assert exposure.server_code == 0, exposure.server_output
    assert f"run {exposure.run_id} completed" in exposure.server_output
    rounds = metrics(exposure.root / "server" / "run")
    assert [(record["round"], record["train/replies"]) for record in rounds] == [(1, 3.0), (2, 3.0)]


def test_every_process_is_stopped(exposure):
    assert exposure.leftovers == []
