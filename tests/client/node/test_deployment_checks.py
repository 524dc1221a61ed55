"""What `fedmeta client` checks before it starts its SuperNode: table, key, CA, address, node config.

Fast: no SuperNode is started here (tests/end_to_end/test_loopback_deployment.py runs one).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading

import pytest
import torch
from flwr.common.config import parse_config_args

from fedmeta.client import (
    FactoryError,
    FactoryPlan,
    LoadedFactory,
    check_model_fits,
    node_config,
    parse_server_address,
    probe_server,
)
from fedmeta.common import FactoryData, TableSource, source_from_config
from fedmeta.common.data.connector import DataSchema
from fedmeta.server import create_certificate_authority, create_server_certificate, initial_meta_parameters
from tests.support.cli import run_fedmeta as run


def test_client_checks_its_table_against_the_schema(pki, table, tmp_path):
    _, schema = table
    broken = tmp_path / "broken.csv"
    broken.write_text("temperature,pressure,quality\n1,2,3\n")
    args = ["client", "--server", "127.0.0.1:8000", "--schema", str(schema), "--key", str(pki / "plant-a")]
    code, output = run(*args, "--ca", str(pki / "ca.crt"), "--data", str(broken))
    assert code == 1 and "feature column 'speed' is missing" in output
    code, output = run(*args, "--ca", str(pki / "ca.crt"), "--data", str(tmp_path / "absent.csv"))
    assert code == 1 and "absent.csv" in output


def test_client_checks_its_policy_before_it_starts(pki, table, tmp_path):
    data, schema = table
    policy = tmp_path / "policy.json"
    policy.write_text('{"max_epsilon": 4, "require_sa": true}')
    code, output = run("client", "--server", "127.0.0.1:8000", "--data", str(data), "--schema", str(schema),
                       "--insecure", "--policy", str(policy))
    assert code == 1 and "unknown key 'require_sa'" in output, output


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
                      "factory": "plant a's line", "device": "auto", "model-dir": str(tmp_path / "models")}
    moved = _plan(tmp_path, data, tmp_path / "schema.json", model_dir=tmp_path / "plant's models")
    assert parse_config_args([node_config(moved)])["model-dir"] == str(tmp_path / "plant's models")
    governed = _plan(tmp_path, data, tmp_path / "schema.json", policy=tmp_path / "policy.json")
    assert parse_config_args([node_config(governed)])["policy"] == str(tmp_path / "policy.json")
    assert parse_config_args([node_config(governed)])["policy-ledger"] == str(tmp_path / "policy-ledger.json")


def test_client_with_a_damaged_ledger_of_its_rounds_stops_before_it_starts(table, tmp_path):
    data, schema = table
    state = tmp_path / "state"
    state.mkdir()
    (state / "policy-ledger.json").write_text('{"rounds": 3')
    code, output = run("client", "--server", "127.0.0.1:8000", "--data", str(data), "--schema", str(schema),
                       "--insecure", "--state", str(state))
    assert code == 1 and "policy ledger" in output and "is damaged" in " ".join(output.split()), output
    assert (state / "policy-ledger.json").read_text() == '{"rounds": 3'  # kept as it was, never reset


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
    check_model_fits(factory, initial_meta_parameters(source, "maml", 0.1, 0), "maml")
    two_features = TableSource(DataSchema(("a", "b"), "y", "regression"))
    with pytest.raises(ValueError, match="does not fit this factory's schema"):
        check_model_fits(factory, initial_meta_parameters(two_features, "maml", 0.1, 0), "maml")
