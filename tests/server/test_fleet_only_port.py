"""The public listener's gate (`server.superlink.FleetOnly`) in front of Flower's own SuperLink application:
only the Fleet API's routes reach it. (Over real processes: tests/end_to_end/test_server_exposure.py.)"""

from __future__ import annotations

import pytest
from flwr.superlink.main import create_app
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fedmeta.server.superlink import NOT_SERVED, FleetOnly


@pytest.fixture(scope="module")
def public() -> TestClient:
    return TestClient(FleetOnly(create_app()))


def test_the_fleet_routes_reach_flowers_application(public):
    answer = public.post("/v1/fleet/get-run", content=b"")
    assert answer.status_code != 404 and answer.text != NOT_SERVED  # Flower's own answer (a body it cannot parse)


@pytest.mark.parametrize("route", ["/v1/control/start-run", "/v1/control/list-runs", "/v1/runtime/acquire-task",
                                   "/v1/runtime/pull-messages", "/health", "/docs", "/v1/fleet/", "/v1/fleetx/get-run",
                                   "/v1/fleet/get-run/../../control/stop-run", "/v1/fleet/get-run/"])
def test_every_other_route_is_not_served(public, route):
    answer = public.post(route, content=b"")
    assert (answer.status_code, answer.text) == (404, NOT_SERVED)


def test_a_websocket_is_closed(public):
    with pytest.raises(WebSocketDisconnect), public.websocket_connect("/v1/fleet/pull-messages") as socket:
        socket.receive_text()
