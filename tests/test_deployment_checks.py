"""What `fedmeta server` and `fedmeta client` check before they start anything, and their parts.

Fast: no SuperLink or SuperNode is started here (tests/test_deployment.py runs them).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch
from flower_messages import delivered
from flwr.app import Message, RecordDict
from flwr.cli.config_utils import load_and_validate
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from client.app import check_model_fits
from client.deployment import FactoryError, FactoryPlan, node_config, parse_server_address, probe_server
from client.factory import LoadedFactory
from common.connector import DataSchema
from common.credentials import CredentialError, check_server_certificate
from common.data_sources import TableSource, source_from_config
from common.processes import ChildProcess, descendants
from common.tasks import FactoryData
from server.bundle import APP_PACKAGES, stage_app
from server.certificates import create_certificate_authority, create_factory_keys, create_server_certificate
from server.checkpoint import RunDirectory
from server.run import initial_meta_parameters
from server.strategy import FedMetaStrategy, NodeInfo, SamplingSettings, exchange
from simulations.cli import app

FEATURES = ["temperature", "pressure", "speed"]
runner = CliRunner()


@pytest.fixture()
def pki(tmp_path):
    certs = tmp_path / "certs"
    authority = create_certificate_authority(certs)
    create_server_certificate(certs, authority, ["127.0.0.1", "localhost"])
    create_factory_keys(certs, "plant-a")
    return certs


@pytest.fixture()
def table(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    data = tmp_path / "plant-a.csv"
    data.write_text("temperature,pressure,speed,quality\n" + "".join(f"{i},1.5,2,{i / 3}\n" for i in range(12)))
    return data, schema


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "300"})
    return result.exit_code, result.output


# --------------------------------------------------------------------------- server


def test_server_names_a_missing_certificate_file(tmp_path):
    code, output = run("server", "--certs", str(tmp_path / "nowhere"), "--state", str(tmp_path / "state"))
    assert code == 1
    assert "CA certificate" in output and "does not exist" in output


def test_server_refuses_a_certificate_not_valid_for_its_address(tmp_path):
    certs = tmp_path / "certs"
    create_server_certificate(certs, create_certificate_authority(certs), ["server.plant.example"])
    code, output = run("server", "--certs", str(certs), "--state", str(tmp_path / "state"))
    assert code == 1
    assert "not for 127.0.0.1" in output and "fedmeta certs --host 127.0.0.1" in output


def test_server_certificate_must_match_its_key_and_ca(pki, tmp_path):
    other = tmp_path / "other"
    create_server_certificate(other, create_certificate_authority(other), ["127.0.0.1"])
    with pytest.raises(CredentialError, match="does not belong to the server certificate"):
        check_server_certificate(pki / "ca.crt", pki / "server.crt", other / "server.key", "127.0.0.1")
    with pytest.raises(CredentialError, match="was not issued by the CA"):
        check_server_certificate(pki / "ca.crt", other / "server.crt", other / "server.key", "127.0.0.1")


def test_server_needs_factory_keys_for_node_authentication(pki, tmp_path):
    empty = tmp_path / "no-keys"
    empty.mkdir()
    code, output = run("server", "--certs", str(pki), "--factory-keys", str(empty), "--state", str(tmp_path / "s"))
    assert code == 1 and "holds no *.pub file" in output
    (empty / "plant-x.pub").write_text("ssh-rsa AAAA not a key\n")
    code, output = run("server", "--certs", str(pki), "--factory-keys", str(empty), "--state", str(tmp_path / "s"))
    assert code == 1 and "plant-x.pub is not an OpenSSH public key" in output


def test_server_reports_a_port_in_use(pki, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = run("server", "--certs", str(pki), "--state", str(tmp_path / "s"), "--port", str(port))
    assert code == 1 and f"port {port} on 0.0.0.0 is in use (another server?)" in output


def test_server_refuses_bad_run_settings_and_an_existing_run_without_resume(pki, tmp_path):
    state = tmp_path / "state"
    code, output = run("server", "--certs", str(pki), "--state", str(state), "--run-config", "num-server-rounds=0")
    assert code == 1 and "num-server-rounds must be >= 1" in output
    RunDirectory(state / "run" / "maml").save_checkpoint(1, {"w": torch.zeros(2)}, {}, {})
    code, output = run("server", "--certs", str(pki), "--state", str(state))
    assert code == 1 and "already holds maml checkpoints up to round 1: pass --resume" in output


def test_insecure_server_warns(tmp_path):
    code, output = run("server", "--insecure", "--state", str(tmp_path / "s"), "--run-config", "eval-every=-1")
    assert code == 1
    assert "WARNING: --insecure: no TLS and no node authentication" in output


def test_staged_app_is_a_flower_app_whose_config_is_the_run_config(tmp_path):
    config = {"num-server-rounds": 3, "schema": "/srv/schema.json", "timeout": 20.5, "resume": True, "note": 'a "b"'}
    folder = stage_app(tmp_path / "app", config)
    pyproject, warnings = load_and_validate(folder / "pyproject.toml")
    assert pyproject is not None, warnings
    assert tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"] == config
    for package in APP_PACKAGES:
        assert (folder / package / "__init__.py").is_file()
        assert not list((folder / package).rglob("__pycache__"))


# --------------------------------------------------------------------------- client


def test_client_checks_its_table_against_the_schema(pki, table, tmp_path):
    _, schema = table
    broken = tmp_path / "broken.csv"
    broken.write_text("temperature,pressure,quality\n1,2,3\n")
    args = ["client", "--server", "127.0.0.1:8000", "--schema", str(schema), "--key", str(pki / "plant-a")]
    code, output = run(*args, "--ca", str(pki / "ca.crt"), "--data", str(broken))
    assert code == 1 and "feature column 'speed' is missing" in output
    code, output = run(*args, "--ca", str(pki / "ca.crt"), "--data", str(tmp_path / "absent.csv"))
    assert code == 1 and "absent.csv" in output


def test_client_checks_its_key_and_ca(pki, table):
    data, schema = table
    args = ["client", "--server", "127.0.0.1:8000", "--data", str(data), "--schema", str(schema)]
    code, output = run(*args, "--ca", str(pki / "ca.crt"))
    assert code == 1 and "needs --key" in output
    code, output = run(*args, "--ca", str(pki / "ca.crt"), "--key", str(pki / "ca.crt"))
    assert code == 1 and "is not an unencrypted OpenSSH private key" in output
    code, output = run(*args, "--ca", str(pki / "plant-a.pub"), "--key", str(pki / "plant-a"))
    assert code == 1 and "is not a PEM certificate" in output
    code, output = run(*args, "--ca", str(pki / "ca.crt"), "--key", str(pki / "missing"))
    assert code == 1 and "does not exist" in output


@pytest.mark.parametrize(("address", "expected"), [("plant.example:8000", ("plant.example", 8000)),
                                                   ("[::1]:9092", ("::1", 9092))])
def test_server_address_is_host_and_port(address, expected):
    assert parse_server_address(address) == expected


@pytest.mark.parametrize("address", ["plant.example", "http://plant.example:8000", "host:0", "host:99999"])
def test_bad_server_address_is_refused(address):
    with pytest.raises(FactoryError, match="--server"):
        parse_server_address(address)


def _plan(tmp_path, data, schema, **overrides) -> FactoryPlan:
    values = {"server": "127.0.0.1:8000", "data": data, "schema": schema, "factory": "plant a's line",
              "role": "evaluate", "state": tmp_path, "key": None, "ca": None}
    return FactoryPlan(**{**values, **overrides})


def test_node_config_reaches_the_client_app_intact_through_flowers_parser(tmp_path):
    data = tmp_path / "my plant" / "line 1.csv"
    plan = _plan(tmp_path, data, tmp_path / "schema.json")
    parsed = parse_config_args([node_config(plan)])
    assert parsed == {"data-path": str(data), "schema": str(tmp_path / "schema.json"), "role": "evaluate",
                      "factory": "plant a's line", "device": "auto"}


def test_probe_refuses_a_server_certificate_from_another_ca(pki, tmp_path, table):
    other = tmp_path / "other"
    create_server_certificate(other, create_certificate_authority(other), ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(other / "server.crt", other / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_once() -> None:
        connection, _ = listener.accept()
        try:
            context.wrap_socket(connection, server_side=True).close()
        except ssl.SSLError:
            connection.close()  # the client hung up on the untrusted certificate

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    plan = _plan(tmp_path, *table, server=f"127.0.0.1:{listener.getsockname()[1]}", ca=pki / "ca.crt")
    with pytest.raises(FactoryError, match="does not trust"):
        probe_server(plan)
    thread.join(timeout=5)
    port = listener.getsockname()[1]
    listener.close()
    assert probe_server(_plan(tmp_path, *table, server=f"127.0.0.1:{port}")) is False  # nothing listens now


def test_factory_schema_comes_from_its_node_config(table, tmp_path):
    _, schema = table
    other = tmp_path / "server-schema.json"
    other.write_text(json.dumps({"features": ["a", "b"], "target": "y", "task": "regression"}))
    assert source_from_config({"schema": str(other)}).model_config.input_shape == (2,)
    assert source_from_config({"schema": str(other)}, {"schema": str(schema)}).model_config.input_shape == (3,)


def test_a_model_that_does_not_fit_the_factorys_schema_is_named(table):
    _, schema = table
    source = TableSource(DataSchema.from_json(schema))
    factory = LoadedFactory(FactoryData("plant-a", torch.zeros(8, 3), torch.zeros(8)), "train", source)
    check_model_fits(factory, initial_meta_parameters(source, "maml", 0.1, 0))
    two_features = TableSource(DataSchema(("a", "b"), "y", "regression"))
    with pytest.raises(ValueError, match="does not fit this factory's schema"):
        check_model_fits(factory, initial_meta_parameters(two_features, "maml", 0.1, 0))


# --------------------------------------------------------------------------- parts


class _UploadingGrid:
    """The reply shows up on the second pull; the first pull waits like Flower's 1 s upload backoff."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        return ["0"]

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.pulls == 1:
            time.sleep(0.3)
            return []
        return [Message(RecordDict(), reply_to=delivered(RecordDict(), "train", 1, message_id="0"))]


def test_a_slow_pull_does_not_delay_the_next_one_for_long():
    started = time.monotonic()
    assert len(exchange(_UploadingGrid(), [None], timeout=30)) == 1
    assert time.monotonic() - started < 1.2  # 0.3 s pull + at most 0.5 s wait (not 10 x 0.3 s)


class _Nodes:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def test_only_connected_factories_get_work():
    strategy = FedMetaStrategy(None, SamplingSettings(min_train_nodes=1))
    strategy.nodes = {1: NodeInfo("train", "plant-a"), 2: NodeInfo("train", "plant-b")}
    strategy.discover_nodes(_Nodes([1, 2]), timeout=1)
    assert [seat.info.factory for seat in strategy.seats_with_role("train")] == ["plant-a", "plant-b"]
    strategy.discover_nodes(_Nodes([2]), timeout=1)  # plant-a's node left
    assert [seat.info.factory for seat in strategy.seats_with_role("train")] == ["plant-b"]


def test_child_process_stops_helpers_in_other_sessions():
    child = ChildProcess("shell", ["sh", "-c", "setsid sleep 60 & sleep 60"]).start()
    deadline = time.monotonic() + 10
    while len(descendants(child.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = descendants(child.pid)
    child.stop(timeout=5)
    assert not [pid for pid in helpers if _running(pid)]


def test_helpers_end_when_the_child_exits_by_itself():
    child = ChildProcess("shell", ["sh", "-c", "setsid sleep 60 & sleep 1"]).start()
    deadline = time.monotonic() + 10
    while not descendants(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = descendants(child.pid)
    assert child.wait(10) == 0
    deadline = time.monotonic() + 10
    running = helpers
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = {pid for pid in helpers if _running(pid)}
    assert not running
    child.stop(timeout=5)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie exited and only awaits reaping)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
