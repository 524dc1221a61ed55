"""What `fedmeta server` checks before it starts anything, the staged app, and the round's exchange.

Fast: no SuperLink is started here (tests/end_to_end/test_loopback_deployment.py runs one).
"""

from __future__ import annotations

import socket
import time
import tomllib

import pytest
import torch
from flwr.app import Message, RecordDict
from flwr.cli.config_utils import load_and_validate

from fedmeta.common import CredentialError, certificate_names, check_server_certificate, load_certificate
from fedmeta.common.federation.app_identity import APP_PACKAGES
from fedmeta.server import (
    FedMetaStrategy,
    NodeInfo,
    RunDirectory,
    SamplingSettings,
    create_certificate_authority,
    create_server_certificate,
    exchange,
    plan_server,
    stage_app,
    superlink_command,
)
from tests.support.cli import run_fedmeta as run
from tests.support.flower_messages import delivered


def test_server_names_a_missing_certificate_file(tmp_path):
    code, output = run("server", "--certs", str(tmp_path / "nowhere"), "--state", str(tmp_path / "state"))
    assert code == 1
    assert "CA certificate" in output and "does not exist" in output


def test_server_refuses_a_certificate_not_valid_for_its_control_address(tmp_path):
    """The server's own processes (its `flwr` CLI, the SuperExec, the ServerApp) check the certificate at the
    control address: `fedmeta certs` always adds 127.0.0.1, the default, and another address is checked."""
    certs = tmp_path / "certs"
    create_server_certificate(certs, create_certificate_authority(certs), ["server.plant.example"])
    assert certificate_names(load_certificate(certs / "server.crt", "server certificate")) == [
        "server.plant.example", "127.0.0.1"]
    code, output = run("server", "--certs", str(certs), "--state", str(tmp_path / "s"), "--control-host", "127.0.0.2")
    assert code == 1
    assert "not for 127.0.0.2" in output and "fedmeta certs --host 127.0.0.2" in output


def test_server_refuses_a_control_api_other_machines_reach_unless_asked_by_name(pki, tmp_path):
    code, output = run("server", "--certs", str(pki), "--state", str(tmp_path / "s"), "--control-host", "0.0.0.0")
    assert code == 1
    assert "--control-host 0.0.0.0 lets other machines reach the Control API" in output
    assert "keep it on 127.0.0.1 and administer over SSH" in output and "--expose-control-api" in output
    exposed = plan_server(state=tmp_path / "s", certs=pki, factory_keys=pki, host="0.0.0.0", port=8000,
                          run_config={}, control_host="0.0.0.0", control_port=9093, expose_control_api=True)
    command = superlink_command(exposed)
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_server_keeps_the_fleet_and_control_apis_apart(pki, tmp_path):
    """The public address serves the Fleet API alone (`server.superlink`); the Control and runtime APIs listen
    on loopback, where the server's own `flwr` CLI connects."""
    plan = plan_server(state=tmp_path / "s", certs=pki, factory_keys=pki, host="0.0.0.0", port=8000, run_config={})
    command = superlink_command(plan)
    assert command[1:3] == ["-m", "fedmeta.server.superlink"]
    options = dict(zip(command[3::2], command[4::2], strict=False))
    assert (options["--fleet-host"], options["--fleet-port"]) == ("0.0.0.0", "8000")
    assert (options["--host"], options["--port"]) == ("127.0.0.1", "9093")
    assert plan.local_address == "127.0.0.1:9093"
    code, output = run("server", "--certs", str(pki), "--state", str(tmp_path / "s"), "--control-port", "8000")
    assert code == 1 and "--control-port must differ from --port (8000)" in output


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
    assert code == 1 and f"port {port} on 0.0.0.0 is in use (another server?); choose --port" in output
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = run("server", "--certs", str(pki), "--state", str(tmp_path / "s"), "--control-port", str(port))
    assert code == 1 and f"port {port} on 127.0.0.1 is in use (another server?); choose --control-port" in output


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
        staged = folder.joinpath(*package.split("."))
        assert (staged / "__init__.py").is_file()
        assert not list(staged.rglob("__pycache__"))




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


class _OneSilentNode:
    """Node 1 answers at once; node 2 never does."""

    def push_messages(self, messages):
        return [message.metadata.message_id for message in messages]

    def pull_messages(self, message_ids):
        if "to-1" not in message_ids:
            return []
        return [Message(RecordDict(), reply_to=delivered(RecordDict(), "train", 1, message_id="to-1"))]


def test_a_node_that_does_not_answer_by_the_timeout_is_named_in_a_warning(caplog):
    messages = [delivered(RecordDict(), "train", node, message_id=f"to-{node}") for node in (1, 2)]
    with caplog.at_level("WARNING"):
        replies = exchange(_OneSilentNode(), messages, timeout=0.3)
    assert [reply.metadata.src_node_id for reply in replies] == [1]
    assert "node 2 did not answer its train message within the 0.3 s timeout" in caplog.text
    assert "node 1" not in caplog.text


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
