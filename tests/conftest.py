"""Fixtures shared by the deployment checks of the server and the client, and the session's Ray."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from fedmeta.server import create_certificate_authority, create_factory_keys, create_server_certificate
from tests.support.ray_nodes import answers, ray_port, start_node, stop_node, wait

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


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory) -> Iterator[str]:
    """One Ray head for the rest of the session, which every simulation joins through RAY_ADDRESS: a Ray started
    for each run costs it about 2.6 s more (a 5-factory round: 10.6 s against 8.0 s). Runs that must start a Ray
    of their own ask for one (the benches that measure this machine's processes; README's main job, whose
    command runs without RAY_ADDRESS; the Ray-cluster tests)."""
    port = ray_port()
    head = start_node(["--head", "--port", str(port), "--num-cpus", str(os.cpu_count() or 1),
                       "--include-dashboard=false", "--ray-client-server-port", str(ray_port())],
                      tmp_path_factory.mktemp("ray-session"))
    previous = os.environ.get("RAY_ADDRESS")
    try:
        wait(lambda: answers(port), "the session's Ray head")
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        yield os.environ["RAY_ADDRESS"]
    finally:
        stop_node(head)
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous
