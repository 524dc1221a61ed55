"""Fixtures shared by the deployment checks of the server and the client."""

from __future__ import annotations

import json

import pytest

from fedmeta.server import create_certificate_authority, create_factory_keys, create_server_certificate

FEATURES = ["temperature", "pressure", "speed"]


@pytest.fixture()
def pki(tmp_path):
    """A CA, a server certificate for loopback and plant-a's key pair."""
    certs = tmp_path / "certs"
    authority = create_certificate_authority(certs)
    create_server_certificate(certs, authority, ["127.0.0.1", "localhost"])
    create_factory_keys(certs, "plant-a")
    return certs


@pytest.fixture()
def table(tmp_path):
    """plant-a's valid 12-row regression table and its schema: (data, schema)."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": FEATURES, "target": "quality", "task": "regression"}))
    data = tmp_path / "plant-a.csv"
    data.write_text("temperature,pressure,speed,quality\n" + "".join(f"{i},1.5,2,{i / 3}\n" for i in range(12)))
    return data, schema
